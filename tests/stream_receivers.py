"""Real HTTPS receivers on loopback for the log-stream tests (no mocks).

``Receiver`` is a threaded ``http.server`` behind TLS with a self-signed
certificate made for 127.0.0.1; it checks webhook signatures (and freshness)
with :func:`audit_events.streams.verify_signature`, records every batch, and
can be told to fail or to be slow.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from audit_events.streams import SIGNATURE_HEADER, verify_signature


def self_signed(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files for 127.0.0.1 / localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "receiver.pem", directory / "receiver.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Receiver:
    cert: Path
    key: Path
    secrets: list[str] = field(default_factory=list)
    port: int = 0
    status: int = 200
    delay: float = 0.0
    batches: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    bad_signatures: int = 0
    in_flight: int = 0  # requests being handled right now
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.in_flight += 1
                if receiver.delay:
                    time.sleep(receiver.delay)
                receiver.in_flight -= 1
                status = receiver.status
                with receiver.lock:
                    receiver.requests.append((headers, body))
                    if receiver.secrets and not verify_signature(
                        headers.get(SIGNATURE_HEADER.lower(), ""),
                        body,
                        receiver.secrets,
                        now=time.time(),
                    ):
                        receiver.bad_signatures += 1
                        status = 401
                    elif status < 300:
                        receiver.batches.append({"headers": headers, "body": body})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a sender killed mid-request (the SIGKILL test) is expected

        self.server = Server(("127.0.0.1", self.port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hook"

    def events(self) -> list[dict[str, Any]]:
        """Every event of every accepted webhook batch, in arrival order."""
        with self.lock:
            bodies = [b["body"] for b in self.batches]
        out: list[dict[str, Any]] = []
        for body in bodies:
            out.extend(orjson.loads(body)["events"])
        return out
