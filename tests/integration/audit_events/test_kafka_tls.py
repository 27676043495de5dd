"""Kafka over TLS, end to end (issue 21 item 1), with real clients and a real broker.

The embedded broker (Tansu) speaks neither TLS nor SASL, so a TLS-terminating
proxy (Python's ``ssl``, requiring a client certificate) sits in front of it and
the broker advertises the proxy's address: every connection the clients make —
bootstrap and per-broker — is TLS with a verified server name and mutual
authentication. Through it: the topic admin creates the topics, the API's
publisher publishes, a real processor worker (Faust, its ``broker_credentials``)
consumes and stores in MongoDB. SASL cannot be exercised this way (it is inside
the Kafka protocol); its client options are checked in tests/unit/audit_events/test_connections.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pymongo import AsyncMongoClient

from audit_events.connections import kafka_client_options
from audit_events.settings import AuditSettings
from audit_events.storage import EVENTS_COLLECTION
from audit_events.topic_admin import ensure_topics
from auditstream.embedded import Server, free_port, kafka_server
from query_api.publisher import Publisher
from tests.conftest import ProcessorProcess
from tests.helpers import eventually

pytestmark = pytest.mark.integration


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    name: str, key: Any, issuer: x509.Name, signer: Any, *, ca: bool = False, san: bool = False
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: Any | None = None) -> Path:
    data = cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    path.write_bytes(data)
    return path


class Pki:
    def __init__(self, root: Path) -> None:
        ca_key, other_key = _key(), _key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "auditstream test CA")])
        ca = _cert("auditstream test CA", ca_key, ca_name, ca_key, ca=True)
        other_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another CA")])
        other = _cert("another CA", other_key, other_name, other_key, ca=True)
        server_key, client_key = _key(), _key()
        self.ca = _write(root / "ca.pem", ca)
        self.other_ca = _write(root / "other-ca.pem", other)
        self.server = _write(
            root / "server.pem", _cert("kafka", server_key, ca_name, ca_key, san=True), server_key
        )
        client = _cert("auditstream-processor", client_key, ca_name, ca_key)
        self.client_cert = _write(root / "client.pem", client)
        self.client_key = root / "client-key.pem"
        self.client_key.write_bytes(
            client_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


@contextlib.asynccontextmanager
async def tls_proxy(pki: Pki, port: int, upstream: int) -> AsyncIterator[list[str]]:
    """TLS on 127.0.0.1:port (client certificate required) → plain 127.0.0.1:upstream."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(str(pki.server))
    context.verify_mode = ssl.CERT_REQUIRED
    peers: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cert = writer.get_extra_info("peercert") or {}
        peers.append(dict(x[0] for x in cert.get("subject", ())).get("commonName", ""))
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=context)
    try:
        yield peers
    finally:
        server.close()


async def test_every_kafka_client_works_over_mutual_tls(
    settings: AuditSettings, tmp_path: Path
) -> None:
    pki = Pki(tmp_path)
    proxy_port, broker_port = free_port(), free_port()
    broker: Server = kafka_server(tmp_path / "kafka", broker_port)
    advertised = f"tcp://localhost:{proxy_port}"  # clients come back through the proxy
    broker.argv[broker.argv.index("--advertised-listener-url") + 1] = advertised
    broker.start()
    tls = settings.model_copy(
        update={
            "kafka_bootstrap": f"localhost:{proxy_port}",
            "kafka_security_protocol": "SSL",
            "kafka_ssl_cafile": str(pki.ca),
            "kafka_ssl_certfile": str(pki.client_cert),
            "kafka_ssl_keyfile": str(pki.client_key),
        }
    )
    worker: ProcessorProcess | None = None
    try:
        async with tls_proxy(pki, proxy_port, broker_port) as peers:
            assert await ensure_topics(tls)  # the topic admin, over TLS
            worker = ProcessorProcess(tls, tmp_path / "processor.log").start()
            publisher = Publisher(tls)  # the API's producer
            await publisher.start()
            event = {
                "id": "tls-1",
                "tenant": "acme",
                "action": "invoice.update",
                "occurred_at": "2026-01-01T00:00:00Z",
                "actor": {"id": "u1"},
            }
            await publisher.publish([(b"acme", orjson.dumps(event))])
            await publisher.stop()
            mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(tls.mongo_uri)
            events = mongo[tls.mongo_db][EVENTS_COLLECTION]
            stored = await eventually(
                lambda: events.find_one({"tenant": "acme", "id": "tls-1"}),
                60,
                0.3,
                what="tls-1 stored",
                detail=lambda: (tmp_path / "processor.log").read_text()[-2000:],
            )
            await mongo.close()
            assert stored["seq"] == 1
            assert peers and set(peers) == {"auditstream-processor"}  # every connection: mTLS

            # A client that does not trust the broker's CA cannot connect.
            wrong = tls.model_copy(update={"kafka_ssl_cafile": str(pki.other_ca)})
            consumer = AIOKafkaConsumer(
                bootstrap_servers=wrong.kafka_bootstrap,
                request_timeout_ms=3000,
                **kafka_client_options(wrong),
            )
            with pytest.raises(KafkaConnectionError):
                await consumer.start()
            await consumer.stop()
            # Nor one without a client certificate (the broker requires mTLS).
            anonymous = tls.model_copy(
                update={"kafka_ssl_certfile": None, "kafka_ssl_keyfile": None}
            )
            consumer = AIOKafkaConsumer(
                bootstrap_servers=anonymous.kafka_bootstrap,
                request_timeout_ms=3000,
                **kafka_client_options(anonymous),
            )
            with pytest.raises(KafkaConnectionError):
                await consumer.start()
            await consumer.stop()
    finally:
        if worker is not None:
            worker.kill()
        broker.kill()
