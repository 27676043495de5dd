"""Kafka/MongoDB/Redis security options built from the settings (issue 21 item 1).

The embedded broker (Tansu) supports neither SASL nor TLS, so these check the exact
keyword arguments every client is given; the TLS context is built from real files.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path

import faust
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from audit_events.connections import (
    KAFKA_SECURITY_KEYS,
    faust_broker_options,
    kafka_client_options,
    mongo_tls_options,
    redis_tls_options,
)
from audit_events.settings import AuditSettings, mongo_client_options, settings_env
from producers.config import ProducerConfig

pytestmark = pytest.mark.unit


def _settings(**values: object) -> AuditSettings:
    return AuditSettings(_env_file=None, kafka_bootstrap="k:9093", **values)  # type: ignore[call-arg]


def _pem_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA file and a client certificate + key it signed."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "auditstream-api")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "k.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    return ca_file, cert_file, key_file


def test_plaintext_by_default() -> None:
    s = _settings()
    assert kafka_client_options(s) == {"security_protocol": "PLAINTEXT"}
    assert faust_broker_options(s) == {}
    assert mongo_tls_options(s) == {}
    assert redis_tls_options(s) == {}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_exact_kwargs(mechanism: str) -> None:
    s = _settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="api",
        kafka_sasl_password="s3cret",
    )
    assert kafka_client_options(s) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "api",
        "sasl_plain_password": "s3cret",
    }
    creds = faust_broker_options(s)["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value) == ("api", "s3cret", mechanism)
    assert creds.protocol.value == "SASL_PLAINTEXT" and creds.ssl_context is None


def test_sasl_ssl_with_ca_and_client_certificate(tmp_path: Path) -> None:
    ca, cert, key = _pem_pair(tmp_path)
    s = _settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="processor",
        kafka_sasl_password="pw",
        kafka_ssl_cafile=str(ca),
        kafka_ssl_certfile=str(cert),
        kafka_ssl_keyfile=str(key),
        kafka_ssl_key_password="pw",
    )
    options = kafka_client_options(s)
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "processor",
        "sasl_plain_password": "pw",
    }
    assert set(options) | {"ssl_context"} <= KAFKA_SECURITY_KEYS
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test ca"),),)]
    creds = faust_broker_options(s)["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.ssl_context is not None and creds.ssl_context.check_hostname


def test_tls_only_without_hostname_check(tmp_path: Path) -> None:
    ca, _, _ = _pem_pair(tmp_path)
    s = _settings(
        kafka_security_protocol="SSL", kafka_ssl_cafile=str(ca), kafka_ssl_check_hostname=False
    )
    options = kafka_client_options(s)
    assert set(options) == {"security_protocol", "ssl_context"}
    assert options["security_protocol"] == "SSL"
    assert not options["ssl_context"].check_hostname
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    creds = faust_broker_options(s)["broker_credentials"]
    assert isinstance(creds, faust.SSLCredentials)
    assert creds.protocol.value == "SSL" and creds.context is not None


def test_a_wrong_key_password_fails_at_start(tmp_path: Path) -> None:
    ca, cert, key = _pem_pair(tmp_path)
    s = _settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=str(ca),
        kafka_ssl_certfile=str(cert),
        kafka_ssl_keyfile=str(key),
        kafka_ssl_key_password="wrong",
    )
    with pytest.raises(ssl.SSLError):
        kafka_client_options(s)


def test_oauthbearer_reads_the_token_file_each_time(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t1\n")
    s = _settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="OAUTHBEARER",
        kafka_sasl_oauth_token_file=str(token),
    )
    options = kafka_client_options(s)
    provider = options.pop("sasl_oauth_token_provider")
    options.pop("ssl_context")
    assert options == {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}
    from aiokafka.abc import AbstractTokenProvider

    assert isinstance(provider, AbstractTokenProvider)
    assert asyncio.run(provider.token()) == "t1"
    token.write_text("t2")  # rotated by whoever issues it: no restart
    assert asyncio.run(provider.token()) == "t2"
    creds = faust_broker_options(s)["broker_credentials"]
    assert isinstance(creds, faust.OAuthCredentials)
    assert creds.protocol.value == "SASL_SSL"


@pytest.mark.parametrize(
    "values",
    [
        {"kafka_security_protocol": "SASL_SSL"},  # SCRAM without user/password
        {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u"},
        {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "OAUTHBEARER"},
        {"kafka_security_protocol": "SASL", "kafka_sasl_username": "u"},
        {"kafka_sasl_mechanism": "GSSAPI"},
    ],
)
def test_incomplete_security_settings_are_refused(values: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        _settings(**values)


def test_the_sdk_and_its_admin_client_get_the_same_options() -> None:
    s = _settings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password="p"
    )
    config = ProducerConfig.from_settings(s)
    assert config.kafka_options == kafka_client_options(s)


def test_children_of_up_get_the_sasl_password_not_a_mask() -> None:
    s = _settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_username="u", kafka_sasl_password="p"
    )
    env = settings_env(s)
    assert env["AUDITSTREAM_KAFKA_SASL_PASSWORD"] == "p"
    assert env["AUDITSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"


def test_mongo_and_redis_tls_files() -> None:
    s = _settings(
        mongo_tls_ca_file="/tls/mongo/ca.pem",
        mongo_tls_certificate_key_file="/tls/mongo/client.pem",
        redis_tls_ca_file="/tls/redis/ca.pem",
        redis_tls_certfile="/tls/redis/c.pem",
        redis_tls_keyfile="/tls/redis/k.pem",
    )
    assert mongo_tls_options(s) == {
        "tls": True,
        "tlsCAFile": "/tls/mongo/ca.pem",
        "tlsCertificateKeyFile": "/tls/mongo/client.pem",
    }
    options = mongo_client_options(s)
    assert options["tlsCAFile"] == "/tls/mongo/ca.pem" and options["timeoutMS"] == 15_000
    assert redis_tls_options(s) == {
        "ssl_ca_certs": "/tls/redis/ca.pem",
        "ssl_certfile": "/tls/redis/c.pem",
        "ssl_keyfile": "/tls/redis/k.pem",
    }


def test_faust_hands_its_consumer_and_producer_the_same_kwargs(tmp_path: Path) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    ca, _, _ = _pem_pair(tmp_path)
    for values in (
        {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": str(ca)},
        {
            "kafka_security_protocol": "SASL_SSL",
            "kafka_ssl_cafile": str(ca),
            "kafka_sasl_mechanism": "SCRAM-SHA-256",
            "kafka_sasl_username": "processor",
            "kafka_sasl_password": "pw",
        },
    ):
        s = _settings(**values)
        faust_kwargs = dict(
            credentials_to_aiokafka_auth(faust_broker_options(s)["broker_credentials"])
        )
        ours = kafka_client_options(s)
        assert isinstance(faust_kwargs.pop("ssl_context"), ssl.SSLContext)
        ours.pop("ssl_context")
        assert faust_kwargs == ours
