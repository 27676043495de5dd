"""A SIGKILLed ``auditstream up`` loses nothing it accepted (the embedded Kafka keeps
its log in memory): its watchdog stops the API, waits until the worker stored
everything Kafka holds, then stops the rest; the next ``up`` says how it ended.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from auditstream.embedded import free_port
from tests.helpers import event_body
from tests.integration.auditstream.test_up import _children
from tests.integration.auditstream.test_up_lifecycle import _env, _up, _wait_gone, _wait_ready

pytestmark = pytest.mark.integration


def _token(out: Path) -> str:
    found = re.search(r"export TOKEN=(\S+)", out.read_text())
    assert found, out.read_text()
    return found.group(1)


def test_events_accepted_before_up_is_sigkilled_are_stored(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    port = free_port()
    env = _env(data_dir, port)
    api = f"http://127.0.0.1:{port}"
    out = tmp_path / "up.out"
    up = _up(env, tmp_path, out)
    try:
        _wait_ready(up, out)
        children = _children(up.pid)
        ids = [f"k-{i}" for i in range(300)]
        events = [event_body(i, tenant="demo", id=ids[i], action="kill.test") for i in range(300)]
        auth = {"Authorization": f"Bearer {_token(out)}"}
        answer = httpx.post(f"{api}/v1/events", json={"events": events}, headers=auth, timeout=30)
        assert answer.status_code == 202, answer.text  # in Kafka: accepted
        up.send_signal(signal.SIGKILL)  # at once: the worker has not stored them yet
        up.wait(10)
        started = time.monotonic()
        assert _wait_gone(children, 60) == [], "orphans of a SIGKILLed up"
        print(f"children gone {time.monotonic() - started:.1f}s after SIGKILL of up")

        out2 = tmp_path / "up2.out"
        up = _up(env, tmp_path, out2)
        _wait_ready(up, out2)
        auth = {"Authorization": f"Bearer {_token(out2)}"}
        page = httpx.get(
            f"{api}/v1/events",
            params={"action": "kill.test", "limit": 1000},
            headers=auth,
            timeout=30,
        )
        assert page.status_code == 200, page.text
        stored = [e["id"] for e in page.json()["data"]]
        assert sorted(stored) == sorted(ids), f"{len(set(ids) - set(stored))} lost"
        assert "every accepted event is stored" in out2.read_text(), out2.read_text()
        up.send_signal(signal.SIGTERM)
        assert up.wait(90) == 0, out2.read_text()
    finally:
        if up.poll() is None:
            up.kill()  # its watchdog stops the rest
            up.wait(10)
