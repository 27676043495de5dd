"""auditstream.django.query: the admin History view's client of the query API
(settings, client-credentials tokens kept and renewed once on 401, errors as messages),
against a small HTTP server in a thread."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from auditstream.django import query
from auditstream.django.query import APIConfig, QueryAPIError

pytestmark = pytest.mark.unit


class FakeAPI(BaseHTTPRequestHandler):
    tokens_issued: list[str] = []
    valid: set[str] = set()
    reads: list[tuple[str, str]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Authorization") != "Basic YWRtaW46czNjcmV0":  # admin:s3cret
            self._answer(401, {"error": "invalid_client"})
            return
        token = f"t{len(self.tokens_issued)}"
        self.tokens_issued.append(token)
        self.valid.add(token)
        self._answer(200, {"access_token": token, "expires_in": 3600})

    def do_GET(self) -> None:
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        if token not in self.valid:
            self._answer(401, {"detail": "token revoked"})
            return
        self.reads.append((token, self.path))
        self._answer(200, {"target": {}, "data": [], "next_cursor": None})


@pytest.fixture
def api() -> Iterator[str]:
    FakeAPI.tokens_issued, FakeAPI.valid, FakeAPI.reads = [], set(), []
    query._tokens.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_settings_say_what_is_missing() -> None:
    with pytest.raises(QueryAPIError, match="URL"):
        APIConfig.from_options({})
    with pytest.raises(QueryAPIError, match="CLIENT_SECRET"):
        APIConfig.from_options({"API": {"URL": "http://a", "CLIENT_ID": "x"}})
    with pytest.raises(QueryAPIError, match="TIMEOUT"):
        APIConfig.from_options({"API": {"URL": "http://a", "TOKEN": "t", "TIMEOUT": "soon"}})
    config = APIConfig.from_options({"API": {"URL": "http://a:8080/", "TOKEN": "t"}})
    assert config.viewer == "http://a:8080/ui/"
    assert query.viewer_history(config, "shop.invoice", "a/b") == (
        "http://a:8080/ui/#/history/shop.invoice/a%2Fb"
    )
    assert query.viewer_event(config, "acme", "e1") == "http://a:8080/ui/#/event/e1?tenant=acme"


def test_a_token_is_kept_and_renewed_once_when_refused(api: str) -> None:
    config = APIConfig(url=api, client_id="admin", client_secret="s3cret")
    query.history(config, "acme", "shop.invoice", "7")
    query.state_as_of(config, "acme", "shop.invoice", "7", "2026-03-01T12:00:00Z")
    assert FakeAPI.tokens_issued == ["t0"]  # one token for both reads
    assert FakeAPI.reads[0][1] == (
        "/v1/targets/shop.invoice/7/history?tenant=acme&order=desc&limit=50"
    )
    assert FakeAPI.reads[1][1].endswith("as_of=2026-03-01T12%3A00%3A00Z")
    FakeAPI.valid.clear()  # revoked: the next read gets a new token and succeeds
    query.history(config, "acme", "shop.invoice", "7", cursor="c1")
    assert FakeAPI.tokens_issued == ["t0", "t1"]
    assert FakeAPI.reads[-1] == ("t1", FakeAPI.reads[-1][1])


def test_refusals_and_an_unreachable_api_are_messages(api: str) -> None:
    wrong = APIConfig(url=api, client_id="admin", client_secret="nope")
    with pytest.raises(QueryAPIError, match="refused the service account: 401 invalid_client"):
        query.history(wrong, "acme", "t", "1")
    static = APIConfig(url=api, token="stale")
    with pytest.raises(QueryAPIError, match="answered 401 token revoked"):
        query.history(static, "acme", "t", "1")
    gone = APIConfig(url="http://127.0.0.1:9", token="t", timeout=2)
    with pytest.raises(QueryAPIError, match="cannot be reached"):
        query.history(gone, "acme", "t", "1")
