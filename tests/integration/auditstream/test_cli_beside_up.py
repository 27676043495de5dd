"""The CLI in a shell beside `make run` (issue 13, items 1 and 8): no variables set.

A real ``auditstream up`` runs in a project folder; ``status``, ``token``,
``verify`` and ``replay`` run in the same folder with no AUDITSTREAM_* variable
and find the stack through ``.auditstream/stack.json``. Then ``up`` restarts: the
embedded Kafka (Tansu) keeps its log in memory, so the topic is empty while
MongoDB keeps every event; ``replay --no-archive`` (the topic alone) must refuse
with one line and leave the store as it was, and ``replay`` (issue 16: the
archive ``up``'s archiver wrote, then the topic's tail) rebuilds every event.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from auditstream.embedded import free_port
from tests.helpers import eventually_sync, exited

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")}


def _cli(folder: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auditstream", *args],
        env=_clean_env(),
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Up:
    def __init__(self, folder: Path, api_port: int, metrics_port: int) -> None:
        self.folder = folder
        self.out = folder / f"up-{time.monotonic_ns()}.out"
        env = _clean_env() | {
            "AUDITSTREAM_API_PORT": str(api_port),
            "AUDITSTREAM_PROCESSOR_METRICS_PORT": str(metrics_port),
            "AUDITSTREAM_CHECKPOINT_EVERY_EVENTS": "1",  # a signed checkpoint per batch
            "AUDITSTREAM_EMBEDDED_KAFKA_PORT": "0",  # free ports: runs side by side
            "AUDITSTREAM_ARCHIVER_METRICS_PORT": "0",
            "AUDITSTREAM_STREAMER_METRICS_PORT": "0",
            "AUDITSTREAM_EMBEDDED_MONGO_PORT": "0",
            "AUDITSTREAM_EMBEDDED_REDIS_PORT": "0",
        }
        with open(self.out, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "auditstream", "up"],
                env=env,
                cwd=folder,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        eventually_sync(
            lambda: b"auditstream is ready" in self.out.read_bytes(),
            150,
            0.5,
            what="auditstream up ready",
            abort=exited(self.proc),
            detail=self.out.read_text,
        )
        self.token = self.out.read_text().split("export TOKEN=")[1].split()[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _post(port: int, token: str, n: int) -> None:
    events = [
        {
            "tenant": "demo",
            "action": "invoice.update",
            "targets": [{"type": "invoice", "id": str(i)}],
        }
        for i in range(n)
    ]
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events?wait=true",
        data=json.dumps({"events": events}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status in (201, 202), resp.read()  # 202: stored a little later


def _verified(folder: Path, events: int) -> subprocess.CompletedProcess[str]:
    """``auditstream verify`` once ``events`` events of tenant demo are stored and signed."""
    deadline = time.monotonic() + 90
    while True:
        run = _cli(folder, "verify", "--quiet")
        done = (
            f"ok  demo: {events} events checked" in run.stdout and "unsigned tail 0" in run.stdout
        )
        if done or time.monotonic() > deadline:
            return run
        time.sleep(1)


def test_cli_beside_up_needs_no_setup_and_replay_never_empties_the_store(
    tmp_path: Path,
) -> None:
    api_port, metrics_port = free_port(), free_port()
    up = Up(tmp_path, api_port, metrics_port)
    try:
        state_path = tmp_path / ".auditstream" / "stack.json"
        assert oct(state_path.stat().st_mode & 0o777) == "0o600"
        _post(api_port, up.token, 5)

        status = _cli(tmp_path, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"http://127.0.0.1:{api_port}" in status.stdout
        assert status.stdout.count("answers") == 5, status.stdout  # kafka mongo redis api proc

        token = _cli(tmp_path, "token", "--tenant", "acme")
        assert token.returncode == 0 and token.stdout.count(".") == 2, token.stderr

        # verify uses the checkpoint key `up` generated (was bad_checkpoint for every tenant)
        verify = _verified(tmp_path, 5)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "ok  demo: 5 events checked" in verify.stdout, verify.stdout
        assert "unsigned tail 0" in verify.stdout  # the signed checkpoints were checked

        # the restarted stack: Tansu's topic is empty, MongoDB keeps the 5 events
        up.stop()
        assert json.loads(state_path.read_text())["status"] == "stopped"
        assert _cli(tmp_path, "status").returncode == 1
        up = Up(tmp_path, api_port, metrics_port)
        before = _cli(tmp_path, "verify", "--quiet")
        assert "ok  demo: 5 events checked" in before.stdout, before.stdout + before.stderr

        replay = _cli(tmp_path, "replay", "--no-archive")
        print(replay.stdout, replay.stderr)
        assert replay.returncode == 1, replay.stdout + replay.stderr
        lines = replay.stderr.strip().splitlines()
        assert len(lines) == 1, replay.stderr
        assert lines[0].startswith("replay refused: tenant demo has 5 stored events, the topic")
        assert lines[0].endswith("live store untouched, rebuilt copy kept in events_replay")
        after = _cli(tmp_path, "verify", "--quiet")
        assert after.returncode == 0 and "ok  demo: 5 events checked" in after.stdout, (
            after.stdout + after.stderr
        )

        # archive + tail: the first run's archiver kept the 5 events the broker forgot
        replay = _cli(tmp_path, "replay")
        print(replay.stdout, replay.stderr)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "5 from the archive" in replay.stdout and "swapped in" in replay.stdout
        after = _cli(tmp_path, "verify", "--quiet")
        assert after.returncode == 0 and "ok  demo: 5 events checked" in after.stdout, (
            after.stdout + after.stderr
        )
    finally:
        up.stop()
