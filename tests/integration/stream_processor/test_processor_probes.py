"""A real worker's probe endpoints (issue 21 item 2): live while its loop steps,
ready once it joined the group and its store answers; other paths are 404."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from auditstream.embedded import free_port
from tests.conftest import ProcessorProcess
from tests.helpers import eventually_sync

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if url.endswith("z") else {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError:
        return 0, {}


def test_a_real_worker_is_live_ready_and_answers_404_elsewhere(
    processors: Callable[..., ProcessorProcess],
) -> None:
    port = free_port()
    worker = processors(
        AUDITSTREAM_PROCESSOR_METRICS_PORT=str(port), AUDITSTREAM_PROCESSOR_LIVENESS_SECONDS="3"
    )
    base = f"http://127.0.0.1:{port}"

    def ready_200() -> tuple[int, dict[str, Any]] | None:
        got = _get(base + "/readyz")
        return got if got[0] == 200 else None

    ready = eventually_sync(ready_200, 60, 0.3, what="/readyz answers 200")
    assert ready == (
        200,
        {"status": "ready", "checks": {"consumer_group": True, "store": True}, "down": []},
    )
    time.sleep(4)  # idle for longer than the liveness window: the loop still steps
    live = _get(base + "/healthz")
    assert live[0] == 200 and live[1]["state"] == "polling", live
    assert live[1]["seconds_since_tick"] < 3
    assert _get(base + "/metrics")[0] == 200
    assert _get(base + "/nothing-here")[0] == 404
    assert worker.proc is not None and worker.proc.poll() is None
