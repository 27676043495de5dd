"""``auditstream up`` supervises what it starts (issue 13 item 7).

Real ``auditstream up`` in a subprocess on a temporary data directory: several
clients post events through the API while the processor worker is SIGKILLed at
random moments (and the API once; clients retry what did not get 202); then
``up`` gets SIGTERM right away, so whatever is still in Kafka (Tansu, in
memory) must be drained into the store before the broker stops. Afterwards
the store is opened again on its own: every id that got 202 is stored exactly
once.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from audit_events.codec import document_to_api
from audit_events.settings import AuditSettings
from audit_events.storage import EVENTS_COLLECTION
from auditstream.embedded import free_port, mongo_server
from tests.helpers import eventually_sync, exited
from tests.integration.auditstream.test_up import _alive, _children

pytestmark = pytest.mark.integration

TENANT = "demo"  # the tenant of the token `up` prints
BATCH = 5
CLIENTS = 6


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _child_pid(up_pid: int, command: str = "auditstream processor") -> int | None:
    for pid in _children(up_pid):
        if command in _cmdline(pid) and _alive(pid):
            return pid
    return None


class Stack:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.data_dir = tmp_path / "state"
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")}
        env |= {
            "AUDITSTREAM_DATA_DIR": str(self.data_dir),
            "AUDITSTREAM_API_PORT": str(self.port),
            "AUDITSTREAM_PROCESSOR_METRICS_PORT": "0",
            "AUDITSTREAM_EMBEDDED_KAFKA_PORT": "0",  # free ports: runs side by side
            "AUDITSTREAM_ARCHIVER_METRICS_PORT": "0",
            "AUDITSTREAM_STREAMER_METRICS_PORT": "0",
            "AUDITSTREAM_EMBEDDED_MONGO_PORT": "0",
            "AUDITSTREAM_EMBEDDED_REDIS_PORT": "0",
        }
        self.out_path = tmp_path / "up.out"
        self.log = open(self.out_path, "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "auditstream", "up"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 150) -> str:
        eventually_sync(
            lambda: "auditstream is ready" in self.output(),
            timeout,
            0.3,
            what="auditstream up ready",
            abort=exited(self.proc),
            detail=self.output,
        )
        return self.output().split("export TOKEN=")[1].split()[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.log.close()


def _event(event_id: str, i: int) -> dict[str, Any]:
    return {
        "id": event_id,
        "tenant": TENANT,
        "action": "invoice.update",
        "occurred_at": "2026-11-30T08:00:00Z",  # a retry is the same event, not a new one
        "actor": {"id": f"user{i % 7}"},
        "targets": [{"type": "invoice", "id": str(i % 50)}],
        "metadata": {"n": i},
    }


def post_all(port: int, token: str, ids: list[str], spread: float, deadline: float) -> set[str]:
    """Post ``ids`` in batches from :data:`CLIENTS` threads, evenly over ``spread``
    seconds (so the kills land while clients post); the ids that got 202."""
    accepted: set[str] = set()
    lock = threading.Lock()
    batches = [ids[i : i + BATCH] for i in range(0, len(ids), BATCH)]
    start = time.monotonic()
    slot = spread / len(batches)

    def send(numbered: tuple[int, list[str]]) -> None:
        n, batch = numbered
        time.sleep(max(0.0, start + n * slot - time.monotonic()))
        body = json.dumps({"events": [_event(e, int(e.rsplit("-", 1)[1])) for e in batch]}).encode()
        while time.monotonic() < deadline:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/events",
                data=body,
                method="POST",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    if resp.status == 202:
                        with lock:
                            accepted.update(json.loads(resp.read())["ids"])
                        return
            except (urllib.error.URLError, OSError):
                pass  # 503 while Kafka is busy, or the API is gone: try again
            time.sleep(0.2)

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(send, enumerate(batches)))
    return accepted


def kill_at_random(
    up_pid: int,
    kills: int,
    window: float,
    rng: random.Random,
    done: threading.Event,
    command: str = "auditstream processor",
) -> list[float]:
    """SIGKILL ``up``'s child running ``command`` ``kills`` times at random moments."""
    started = time.monotonic()
    moments = sorted(rng.uniform(1.0, window) for _ in range(kills))
    killed: list[float] = []
    for moment in moments:
        while time.monotonic() - started < moment and not done.is_set():
            time.sleep(0.05)
        deadline = time.monotonic() + 60
        while (pid := _child_pid(up_pid, command)) is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the previous kill's restart is still under way
        if pid is None:
            break
        os.kill(pid, signal.SIGKILL)
        killed.append(round(time.monotonic() - started, 1))
    return killed


def stored_ids(data_dir: Path) -> Counter[str]:
    """Open the stopped stack's store with a SecantusDB of our own; client ids -> count."""
    server = mongo_server(data_dir / "check", storage=str(data_dir / "mongodb"))
    server.start()
    try:
        client: MongoClient[dict[str, Any]] = MongoClient(server.url, tz_aware=True)
        coll = client[AuditSettings.model_fields["mongo_db"].default][EVENTS_COLLECTION]
        docs = coll.find({"tenant": TENANT}, {"search": 0})
        counts = Counter(str(document_to_api(d)["id"]) for d in docs)
        client.close()
        return counts
    finally:
        server.stop()


def run_kill_test(tmp_path: Path, events: int, kills: int, window: float) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    print(f"seed {seed}")
    stack = Stack(tmp_path)
    t0 = time.monotonic()
    try:
        token = stack.wait_ready()
        ids = [f"sup-{i:06d}" for i in range(events)]
        done = threading.Event()
        killed: list[float] = []
        killer = threading.Thread(
            target=lambda: killed.extend(kill_at_random(stack.proc.pid, kills, window, rng, done))
        )
        killer.start()
        api_killed: list[float] = []
        api_killer = threading.Thread(
            target=lambda: api_killed.extend(
                kill_at_random(stack.proc.pid, 1, window, rng, done, "auditstream api")
            )
        )
        api_killer.start()
        posting = time.monotonic()
        accepted = post_all(stack.port, token, ids, window + 2, deadline=time.monotonic() + 180)
        post_time = time.monotonic() - posting
        done.set()
        killer.join()
        api_killer.join()
        up_alive = stack.proc.poll() is None
        children = _children(stack.proc.pid)
        # stop at once: the events still in Kafka must be drained, not dropped
        stack.proc.send_signal(signal.SIGTERM)
        code = stack.proc.wait(240)
        left = [pid for pid in children if _alive(pid)]
        try:
            counts = stored_ids(stack.data_dir)
        except Exception as exc:
            raise AssertionError(f"up exited {code}: {exc}\n{stack.output()[-3000:]}") from exc
        stored = {i for i in accepted if counts[i] >= 1}
        twice = {i for i, n in counts.items() if n > 1}
        lost = accepted - stored
        output = stack.output()
        print(
            f"{events} posted, {len(accepted)} got 202, {len(stored)} stored, {len(lost)} lost, "
            f"{len(twice)} stored twice; worker kills at {killed}s, API kill at {api_killed}s; "
            f"posting {post_time:.1f}s, whole run {time.monotonic() - t0:.1f}s"
        )
        print(output[-3000:])
        assert len(accepted) == events, f"only {len(accepted)} of {events} got 202"
        assert len(killed) == kills, killed
        assert len(api_killed) == 1, api_killed
        assert not lost, f"{len(lost)} accepted events lost, e.g. {sorted(lost)[:5]}"
        assert not twice, sorted(twice)[:5]
        assert up_alive, "up stopped the stack when the worker died"
        assert len(re.findall(r"processor worker exited .* restarting in", output)) == kills
        assert len(re.findall(r"query API exited .* restarting in", output)) == 1
        assert "drained: every accepted event is stored" in output
        assert code == 0, output
        assert left == []
    finally:
        stack.close()


def test_up_restarts_a_killed_worker_and_drains_before_stopping(tmp_path: Path) -> None:
    run_kill_test(tmp_path, events=1500, kills=3, window=12.0)


@pytest.mark.slow
def test_up_5000_events_through_the_api_with_random_worker_kills(tmp_path: Path) -> None:
    run_kill_test(tmp_path, events=5000, kills=3, window=30.0)


def _post_until_stored(port: int, token: str, event_id: str, timeout: float) -> float:
    """POST ``event_id`` with ``?wait=true`` until it answers 201; the seconds it took."""
    started = time.monotonic()
    body = json.dumps(_event(event_id, 1)).encode()
    last = ""
    while time.monotonic() - started < timeout:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/events?wait=true",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                if resp.status == 201:
                    return time.monotonic() - started
                last = str(resp.status)
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise AssertionError(f"{event_id} not stored within {timeout}s (last answer: {last})")


def test_up_restarts_its_servers_and_says_loudly_when_kafka_dies(tmp_path: Path) -> None:
    """SIGKILL SecantusDB, then Tansu: ``up`` restarts each on its port and keeps going."""
    stack = Stack(tmp_path)
    try:
        token = stack.wait_ready()
        _post_until_stored(stack.port, token, "srv-000001", 30)
        for command, name, n in (
            ("secantusd-py", "MongoDB", 2),
            (" broker --listener-url", "Kafka", 3),
        ):
            pid = _child_pid(stack.proc.pid, command)
            assert pid is not None, command
            os.kill(pid, signal.SIGKILL)
            took = _post_until_stored(stack.port, token, f"srv-00000{n}", 120)
            print(f"{name} killed: the next event was stored {took:.1f}s later")
            assert stack.proc.poll() is None, stack.output()
            assert _child_pid(stack.proc.pid, command) not in (None, pid)
        output = stack.output()
        print(output[output.index("Press Ctrl-C") :])
        assert re.search(r"MongoDB .* exited with status -9 .* restarting in", output)
        assert "Kafka (Tansu) died. Its log was in memory" in output
        stack.proc.send_signal(signal.SIGTERM)
        assert stack.proc.wait(120) == 0, stack.output()
    finally:
        stack.close()


def test_a_second_sigterm_stops_the_drain_and_says_what_is_lost(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    try:
        token = stack.wait_ready()
        pid = _child_pid(stack.proc.pid)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # the restarted worker needs a while to rejoin
        accepted = post_all(
            stack.port, token, [f"f-{i:06d}" for i in range(200)], 0.5, time.monotonic() + 60
        )
        assert len(accepted) == 200
        stack.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while "draining:" not in stack.output():
            assert time.monotonic() < deadline, stack.output()
            time.sleep(0.1)
        stack.proc.send_signal(signal.SIGTERM)
        code = stack.proc.wait(60)
        output = stack.output()
        print(output[output.index("stopping …") :])
        assert code == 1
        assert re.search(r"stopped before draining: \d+ accepted events were not stored", output)
        assert "drained" not in output
    finally:
        stack.close()
