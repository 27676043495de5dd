"""Several API processes on one Redis (issue 18): cross-process single-flight and
``AUDITSTREAM_API_WORKERS``.

Real ``auditstream api`` commands on the test stack's Redis and MongoDB; the
MongoDB reads behind the cache are counted by ``auditstream_api_cache_loads_total``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from audit_events.settings import AuditSettings
from auditstream.devstack import service_env, spawn_service, stop_services
from auditstream.embedded import free_port
from tests.helpers import Store, bearer, eventually, make_event

pytestmark = pytest.mark.integration

BURST = 64  # readers per key, spread over the processes
KEYS = 3  # cold keys, one burst each


def _spawn(settings: AuditSettings, log: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    return spawn_service(
        service_env(
            settings,
            AUDITSTREAM_JWT_SECRET=(
                settings.jwt_secret.get_secret_value() if settings.jwt_secret else ""
            ),
            AUDITSTREAM_API_PORT=str(port),
            **env,
        ),
        log,
        "api",
    )


def _sample(text: str, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


async def _ready(
    http: httpx.AsyncClient, urls: list[str], procs: list[subprocess.Popen[bytes]], log: Path
) -> None:
    async def ready() -> bool:
        assert all(p.poll() is None for p in procs), _tail(log)
        try:
            answers = await asyncio.gather(*(http.get(f"{u}/readyz") for u in urls))
        except httpx.TransportError:
            return False
        return all(a.status_code == 200 for a in answers)

    await eventually(ready, timeout=90)


async def _bursts(http: httpx.AsyncClient, urls: list[str], settings: AuditSettings) -> None:
    """``KEYS`` cold keys, each read by ``BURST`` concurrent readers over ``urls``."""
    auth = bearer(settings)
    for url in urls:  # warm each process (token check, connections) on another key, in turn
        assert (await http.get(f"{url}/v1/events?limit=1", headers=auth)).status_code == 200
    for k in range(KEYS):
        answers = await asyncio.gather(
            *(
                http.get(f"{urls[i % len(urls)]}/v1/events?limit={10 + k}", headers=auth)
                for i in range(BURST)
            )
        )
        assert {a.status_code for a in answers} == {200}
        assert len({a.content for a in answers}) == 1  # every reader the same page


async def test_a_cold_burst_over_two_api_processes_reads_mongodb_once_per_key(
    settings: AuditSettings, tmp_path: Path
) -> None:
    store = Store(settings)
    await store.put([make_event(n) for n in range(300)])
    await store.close()
    log = tmp_path / "api.log"
    ports = [free_port(), free_port()]
    procs = [_spawn(settings, log, port) for port in ports]  # two pods on one Redis
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as http:
            await _ready(http, urls, procs, log)
            await _bursts(http, urls, settings)
            texts = [(await http.get(f"{u}/metrics")).text for u in urls]
    finally:
        await asyncio.to_thread(stop_services, procs)
    loads = [_sample(t, "auditstream_api_cache_loads_total") for t in texts]
    # The warm-up key once (read in turn: the second process hits), then one load
    # per cold key across both processes, not one per process.
    assert sum(loads) == 1 + KEYS, (loads, _tail(log))
    assert all(_sample(t, "auditstream_api_cache_total", result="miss") > 0 for t in texts)


async def test_api_workers_serve_one_port_share_the_cache_and_sum_their_metrics(
    settings: AuditSettings, tmp_path: Path
) -> None:
    store = Store(settings)
    await store.put([make_event(n) for n in range(300)])
    await store.close()
    log = tmp_path / "api.log"
    port, metrics_port = free_port(), free_port()
    proc = _spawn(
        settings,
        log,
        port,
        AUDITSTREAM_API_WORKERS="2",
        AUDITSTREAM_API_METRICS_PORT=str(metrics_port),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as http:
            await _ready(http, [url], [proc], log)
            workers = _children(proc.pid)
            assert len(workers) == 2, workers
            await _bursts(http, [url], settings)
            text = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    finally:
        await asyncio.to_thread(stop_services, [proc])
    assert proc.returncode == 0, _tail(log)
    assert not set(workers) & set(_children(proc.pid))  # the workers stopped too
    # Both workers' requests in one scrape (multiprocess metrics): the bursts + warm-up.
    requests = _sample(text, "auditstream_api_requests_total", route="/v1/events")
    assert requests == KEYS * BURST + 1, text
    assert _sample(text, "auditstream_api_cache_loads_total") == KEYS + 1, _tail(log)


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


def _children(pid: int) -> list[int]:
    """The live API workers of ``pid`` (Linux /proc; not multiprocessing's resource tracker)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                spawned = b"spawn_main" in Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and spawned:
                found.append(int(entry))
    return found


async def test_workers_stop_when_their_parent_is_killed(
    settings: AuditSettings, tmp_path: Path
) -> None:
    log = tmp_path / "api.log"
    port = free_port()
    proc = _spawn(settings, log, port, AUDITSTREAM_API_WORKERS="2")
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            await _ready(http, [f"http://127.0.0.1:{port}"], [proc], log)
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(proc.pid, signal.SIGKILL)  # the parent only, no graceful stop
        await asyncio.to_thread(proc.wait, 10)

        async def gone() -> bool:
            return not any(_alive(w) for w in workers)

        await eventually(gone, timeout=30)
    finally:
        await asyncio.to_thread(stop_services, [proc])


async def test_workers_stop_when_their_parent_is_killed_while_they_start(
    settings: AuditSettings, tmp_path: Path
) -> None:
    """The parent killed before its workers finished starting: a worker that read its
    parent pid only then took init for its parent and served on, orphaned, forever."""
    log = tmp_path / "api.log"
    proc = _spawn(settings, log, free_port(), AUDITSTREAM_API_WORKERS="2")
    workers: list[int] = []
    try:
        workers = await eventually(
            lambda: w if len(w := _children(proc.pid)) == 2 else None, 60, what="2 workers"
        )
        os.kill(proc.pid, signal.SIGKILL)  # before they serve
        await asyncio.to_thread(proc.wait, 10)

        async def gone() -> bool:
            return not any(_alive(w) for w in workers)

        await eventually(gone, timeout=40, what="the orphaned workers gone")
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)  # never leave one behind, whatever the result
        await asyncio.to_thread(stop_services, [proc])


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie reaped by init counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
