"""``auditstream up`` says "ready" only once the worker stores events: the banner's
first command (``POST /v1/events?wait=true``) answers 201 "stored" at once, not 202
after ``?wait=true`` gave up waiting for a worker still joining its group.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
import pytest

from auditstream.embedded import free_port
from tests.integration.auditstream.test_up_lifecycle import _env, _up, _wait_ready

pytestmark = pytest.mark.integration


def test_ready_means_the_worker_stores_the_banner_command_answers_201(tmp_path: Path) -> None:
    port, metrics = free_port(), free_port()
    env = _env(tmp_path / "state", port) | {"AUDITSTREAM_PROCESSOR_METRICS_PORT": str(metrics)}
    out = tmp_path / "up.out"
    up = _up(env, tmp_path, out)
    try:
        _wait_ready(up, out)
        worker = httpx.get(f"http://127.0.0.1:{metrics}/readyz", timeout=10)
        assert worker.status_code == 200, worker.text
        found = re.search(r"export TOKEN=(\S+)", out.read_text())
        assert found, out.read_text()
        answer = httpx.post(  # the banner's "Try it" command
            f"http://127.0.0.1:{port}/v1/events?wait=true",
            json={
                "tenant": "demo",
                "action": "invoice.update",
                "actor": {"id": "alice"},
                "targets": [{"type": "invoice", "id": "42"}],
            },
            headers={"Authorization": f"Bearer {found.group(1)}"},
            timeout=30,
        )
        assert answer.status_code == 201, answer.text
        # "stored", not 202 "accepted": ?wait=true (5 s) did not give up on a worker still
        # joining its group; no tighter timing, which a loaded CI machine cannot promise
        assert answer.json()["status"] == "stored", answer.text
        up.send_signal(signal.SIGINT)
        assert up.wait(90) == 0, out.read_text()
    finally:
        if up.poll() is None:
            up.kill()  # its watchdog stops the rest
            up.wait(10)
