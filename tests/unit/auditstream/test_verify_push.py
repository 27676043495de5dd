"""``auditstream verify --pushgateway``: a scheduled verify's result for the alerts."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from auditstream.trust_cli import push_verify_result

pytestmark = pytest.mark.unit


def test_a_verify_run_pushes_its_counts_to_the_pushgateway() -> None:
    received: list[tuple[str, str, str]] = []

    class Gateway(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            received.append((self.command, self.path, body))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        push_verify_result(f"http://127.0.0.1:{server.server_port}", chains=7, failed=2)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    ((method, path, body),) = received
    assert (method, path) == ("PUT", "/metrics/job/auditstream-verify")
    assert "auditstream_verify_chains 7.0" in body
    assert "auditstream_verify_failed_chains 2.0" in body
    assert "auditstream_verify_last_run_timestamp_seconds " in body
