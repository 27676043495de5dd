"""``auditstream up`` (the README's run command) on a fresh data directory."""

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

pytestmark = pytest.mark.integration


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_starts_everything_refuses_a_second_and_stops_clean(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")}
    env |= {
        "AUDITSTREAM_DATA_DIR": str(tmp_path / "state"),
        "AUDITSTREAM_API_PORT": str(port),
        "AUDITSTREAM_PROCESSOR_METRICS_PORT": "0",
        "AUDITSTREAM_ARCHIVER_METRICS_PORT": "0",
        "AUDITSTREAM_STREAMER_METRICS_PORT": "0",
        "AUDITSTREAM_EMBEDDED_KAFKA_PORT": "0",  # free ports: runs side by side
        "AUDITSTREAM_EMBEDDED_MONGO_PORT": "0",
        "AUDITSTREAM_EMBEDDED_REDIS_PORT": "0",
    }
    log = open(tmp_path / "up.out", "w+b")  # noqa: SIM115
    up = subprocess.Popen(
        [sys.executable, "-m", "auditstream", "up"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        eventually_sync(
            lambda: b"auditstream is ready" in (tmp_path / "up.out").read_bytes(),
            150,
            0.5,
            what="auditstream up ready",
            abort=exited(up),
            detail=(tmp_path / "up.out").read_text,
        )
        output = (tmp_path / "up.out").read_text()
        token = output.split("export TOKEN=")[1].split()[0]
        children = _children(up.pid)
        # kafka, mongodb, redis, processor, archiver, streamer, api, up's watchdog
        assert len(children) == 8, children

        body = json.dumps(
            {
                "tenant": "demo",
                "action": "invoice.update",
                "targets": [{"type": "invoice", "id": "42"}],
            }
        ).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/events?wait=true",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status in (201, 202)
            event_id = json.loads(resp.read())["ids"][0]
        get = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/events/{event_id}",
            headers={"Authorization": f"Bearer {token}"},
        )
        for _ in range(100):
            try:
                with urllib.request.urlopen(get, timeout=10) as resp:
                    assert json.loads(resp.read())["id"] == event_id
                    break
            except urllib.error.HTTPError as exc:
                assert exc.code == 404
                time.sleep(0.2)
        else:
            pytest.fail("event never became readable")

        second = subprocess.run(
            [sys.executable, "-m", "auditstream", "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert second.returncode == 1
        assert "already running" in second.stderr

        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        assert [pid for pid in children if _alive(pid)] == []
        # the archiver published what it held at SIGTERM: the event is in the archive
        from stream_processor.archive.reader import ArchiveReader
        from stream_processor.archive.verify import verify_archive

        archive = tmp_path / "state" / "archive"
        assert verify_archive(archive).ok
        reader = ArchiveReader(archive)
        values = [r.value or b"" for r in reader.records(reader.manifest.entries)]
        assert any(event_id.encode() in v for v in values), values
    finally:
        if up.poll() is None:
            up.kill()
        log.close()
