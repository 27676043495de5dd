"""The worker's liveness and readiness probes (issue 21 item 2).

Liveness follows the batch loop: a real :class:`BatchLoop` beats a heartbeat,
and a real HTTP probe server answers from it. A loop whose flush hangs past its
deadline, or whose event loop is blocked, answers 503 within the probe window.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stream_processor.batching import BatchLoop
from stream_processor.flush import FlushPolicy
from stream_processor.health import Heartbeat, ProbeServer, WorkerProbes
from stream_processor.records import Batch, Record

pytestmark = pytest.mark.unit


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class Hangs:
    """A processor whose write never returns (a store call that hangs forever)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def process(self, records: list[Record]) -> Batch:
        self.entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class Committer:
    async def commit(self, offsets: Any) -> bool:
        return True


def _record(offset: int) -> Record:
    return Record(topic="t", partition=0, offset=offset, key=b"k", value=b"{}", timestamp_ms=0)


def test_heartbeat_states_with_a_fake_clock() -> None:
    now = [100.0]
    hb = Heartbeat(liveness_seconds=5, flush_deadline_seconds=60, clock=lambda: now[0])
    assert hb.alive()[0] and hb.alive()[1]["state"] == "starting"
    now[0] += 66  # never stepped, longer than store opening may take
    assert not hb.alive()[0]
    hb.tick()
    now[0] += 5
    assert hb.alive() == (True, {"state": "polling", "seconds_since_tick": 5.0})
    now[0] += 0.5
    assert not hb.alive()[0]
    hb.flush_started()
    now[0] += 64  # a batch being retried: alive until its deadline + the window
    assert hb.alive()[0]
    now[0] += 2
    assert hb.alive() == (False, {"state": "flushing", "flush_seconds": 66.0})
    hb.flush_done()
    assert hb.alive()[0]


async def _serve(probes: WorkerProbes) -> ProbeServer:
    return ProbeServer(
        "127.0.0.1",
        0,
        CollectorRegistry(),
        probes.heartbeat,
        ready=probes.ready,
        loop=asyncio.get_running_loop(),
        ready_timeout=0.5,
    ).start()


def test_an_idle_loop_stays_live_and_a_hung_flush_goes_unhealthy_within_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    window, deadline = 1.0, 0.5
    monkeypatch.setattr(BatchLoop, "TICK_SECONDS", 0.2)  # production: 1 s tick, 30 s window

    async def main() -> tuple[list[int], float]:
        probes = WorkerProbes(Heartbeat(window, deadline))
        server = await _serve(probes)
        url = f"http://127.0.0.1:{server.port}/healthz"
        queue: asyncio.Queue[Record] = asyncio.Queue()
        processor = Hangs()
        loop = BatchLoop(
            queue, FlushPolicy(10, 50), processor, Committer(), heartbeat=probes.heartbeat
        )
        task = asyncio.create_task(loop.run())
        try:
            idle = []
            for _ in range(3):  # idle for 3 windows: the loop still steps
                await asyncio.sleep(window)
                idle.append((await asyncio.to_thread(_get, url))[0])
            await queue.put(_record(0))
            await processor.entered.wait()
            hung_at = time.monotonic()
            while (await asyncio.to_thread(_get, url))[0] == 200:  # noqa: ASYNC110 - polling a probe
                await asyncio.sleep(0.1)
            return idle, time.monotonic() - hung_at
        finally:
            task.cancel()
            server.stop()

    idle, seconds = asyncio.run(main())
    assert idle == [200, 200, 200]
    # 503 once the flush outlived its deadline + the window (1.5 s), well within a
    # probe window (k8s: periodSeconds 10 x failureThreshold 3).
    assert 1.4 <= seconds <= 4.0, seconds


def test_a_blocked_event_loop_is_neither_live_nor_ready() -> None:
    async def main() -> tuple[int, dict[str, Any], int, dict[str, Any]]:
        probes = WorkerProbes(Heartbeat(0.5, 0.5))
        probes.joined = True

        async def ping() -> bool:
            return True

        probes.ping_store = ping
        server = await _serve(probes)
        base = f"http://127.0.0.1:{server.port}"
        loop = BatchLoop(
            asyncio.Queue(), FlushPolicy(10, 50), Hangs(), Committer(), heartbeat=probes.heartbeat
        )
        task = asyncio.create_task(loop.run())
        try:
            await asyncio.sleep(0.2)
            assert (await asyncio.to_thread(_get, base + "/readyz"))[0] == 200
            pool_result = asyncio.get_running_loop().run_in_executor(
                None, lambda: (time.sleep(1.0), _get(base + "/healthz"), _get(base + "/readyz"))
            )
            time.sleep(2.5)  # noqa: ASYNC251 - a handler that blocks the event loop (hung worker)
            _, (live, live_body), (ready, ready_body) = await pool_result
            return live, live_body, ready, ready_body
        finally:
            task.cancel()
            server.stop()

    live, live_body, ready, ready_body = asyncio.run(main())
    assert live == 503 and live_body["status"] == "stuck"
    assert ready == 503 and ready_body["down"] == ["event_loop"]


def test_readiness_needs_the_group_and_the_store_and_other_paths_are_404() -> None:
    async def main() -> list[tuple[int, dict[str, Any]]]:
        probes = WorkerProbes(Heartbeat(5, 5))
        store_up = [True]

        async def ping() -> bool:
            if not store_up[0]:
                raise ConnectionError("MongoDB is away")
            return True

        server = await _serve(probes)
        base = f"http://127.0.0.1:{server.port}"
        seen = [await asyncio.to_thread(_get, base + "/readyz")]  # nothing open yet
        probes.ping_store = ping
        seen.append(await asyncio.to_thread(_get, base + "/readyz"))  # no assignment yet
        probes.joined = True
        seen.append(await asyncio.to_thread(_get, base + "/readyz"))
        store_up[0] = False
        seen.append(await asyncio.to_thread(_get, base + "/readyz"))
        probes.rebalancing = lambda: True
        store_up[0] = True
        seen.append(await asyncio.to_thread(_get, base + "/readyz"))
        seen.append(await asyncio.to_thread(_get, base + "/anything"))
        server.stop()
        return seen

    seen = asyncio.run(main())
    assert [s for s, _ in seen] == [503, 503, 200, 503, 503, 404]
    assert seen[1][1]["down"] == ["consumer_group"]
    assert seen[3][1]["down"] == ["store"]
    assert seen[4][1]["down"] == ["consumer_group"]


def test_the_watchdog_reports_a_dead_loop_once() -> None:
    from stream_processor.health import start_watchdog

    now = [0.0]
    hb = Heartbeat(liveness_seconds=5, flush_deadline_seconds=5, clock=lambda: now[0])
    hb.tick()
    calls: list[dict[str, Any]] = []
    import threading

    dead = threading.Event()

    def on_dead(details: dict[str, Any]) -> None:
        calls.append(details)
        dead.set()

    stop = start_watchdog(hb, on_dead, interval=0.05)
    time.sleep(0.3)
    assert not calls  # alive: nothing happens
    now[0] = 6.0  # the loop stopped stepping
    assert dead.wait(2)
    time.sleep(0.2)
    stop.set()
    assert calls == [{"state": "polling", "seconds_since_tick": 6.0}]
