"""Ctrl-C while ``auditstream up`` is still starting loses nothing Kafka accepted.

The API (and any SDK) can have events acknowledged by the embedded, in-memory
Kafka before the worker joined its group and the banner is printed; a Ctrl-C then
drains them like a Ctrl-C after the banner does, instead of stopping Kafka at once.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
import pytest

from audit_events.settings import AuditSettings
from auditstream.embedded import free_port
from query_api.auth import mint_token
from tests.helpers import event_body, eventually_sync, exited
from tests.integration.auditstream.test_up_lifecycle import _env, _up, _wait_ready

pytestmark = pytest.mark.integration


def test_ctrl_c_before_the_banner_stores_what_kafka_accepted(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    port, metrics = free_port(), free_port()
    # The banner waits for the worker's /readyz: the API answers seconds before it.
    env = _env(data_dir, port) | {"AUDITSTREAM_PROCESSOR_METRICS_PORT": str(metrics)}
    api = f"http://127.0.0.1:{port}"
    out = tmp_path / "up.out"
    up = _up(env, tmp_path, out)
    try:

        def api_ready() -> bool:
            try:
                return httpx.get(f"{api}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        eventually_sync(api_ready, 150, 0.05, what="API ready", abort=exited(up))
        secret = (data_dir / "jwt_secret").read_text().strip()
        settings = AuditSettings(jwt_secret=secret)
        token = mint_token(settings, subject="t", tenant="demo", scopes=["events:write"])
        ids = [f"c-{i}" for i in range(300)]
        events = [event_body(i, tenant="demo", id=ids[i], action="ctrlc.test") for i in range(300)]
        answer = httpx.post(
            f"{api}/v1/events",
            json={"events": events},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert answer.status_code == 202, answer.text
        up.send_signal(signal.SIGINT)
        assert up.wait(120) == 0, out.read_text()
        first = out.read_text()
        assert "auditstream is ready" not in first, "the worker joined first: not this case"
        assert "drained" in first, first

        out2 = tmp_path / "up2.out"
        up = _up(env, tmp_path, out2)
        _wait_ready(up, out2)
        found = re.search(r"export TOKEN=(\S+)", out2.read_text())
        assert found, out2.read_text()
        page = httpx.get(
            f"{api}/v1/events",
            params={"action": "ctrlc.test", "limit": 1000},
            headers={"Authorization": f"Bearer {found.group(1)}"},
            timeout=30,
        )
        assert page.status_code == 200, page.text
        stored = [e["id"] for e in page.json()["data"]]
        assert sorted(stored) == sorted(ids), f"{len(set(ids) - set(stored))} lost"
        up.send_signal(signal.SIGINT)
        assert up.wait(90) == 0, out2.read_text()
    finally:
        if up.poll() is None:
            up.kill()  # its watchdog stops the rest
            up.wait(10)
