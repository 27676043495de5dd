"""``auditstream api`` with AUDITSTREAM_API_METRICS_PORT: /metrics on its own port.

The public port answers 404 for /metrics; the metrics port answers /metrics only
(issue 21 item 7). The unit tests cover the pieces; this runs the real command.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from audit_events.settings import AuditSettings, settings_env
from auditstream.embedded import free_port
from tests.helpers import eventually

pytestmark = pytest.mark.integration


def _spawn(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "auditstream", "api"], env=env, stdout=log, stderr=log
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


async def test_the_api_command_serves_metrics_on_the_metrics_port_only(
    settings: AuditSettings, tmp_path: Path
) -> None:
    api_port, metrics_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")},
        **settings_env(settings),
        "AUDITSTREAM_JWT_SECRET": "s" * 48,
        "AUDITSTREAM_API_PORT": str(api_port),
        "AUDITSTREAM_API_METRICS_PORT": str(metrics_port),
    }
    proc = _spawn(env, tmp_path / "api.log")
    api, metrics = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{metrics_port}"
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def ready() -> bool:
                assert proc.poll() is None, (tmp_path / "api.log").read_text()
                try:
                    answers = await asyncio.gather(
                        http.get(f"{api}/readyz"), http.get(f"{metrics}/metrics")
                    )
                except httpx.TransportError:
                    return False
                return all(a.status_code == 200 for a in answers)

            await eventually(ready, timeout=60)
            public = await http.get(f"{api}/metrics")
            assert public.status_code == 404
            assert public.headers["content-type"] == "application/problem+json"
            scraped = await http.get(f"{metrics}/metrics")
            assert 'auditstream_api_requests_total{method="GET",route="/readyz"' in scraped.text
            assert (await http.get(f"{metrics}/readyz")).status_code == 404
            assert (await http.get(f"{metrics}/v1/events")).status_code == 404
    finally:
        await asyncio.to_thread(_stop, proc)
    assert proc.returncode == 0, (tmp_path / "api.log").read_text()
