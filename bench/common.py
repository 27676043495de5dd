"""Helpers shared by the benchmark scripts (run as ``python bench/<script>.py``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from audit_events.settings import AuditSettings, settings_env
from auditstream.embedded import Server, free_port


async def wait_ready(url: str, timeout: float = 120.0) -> None:
    """Wait until ``{url}/readyz`` answers 200."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


RESULTS = Path(__file__).parent / "results"


async def progress(
    count: Callable[[], int],
    expected: int,
    timeout: float,
    samples: list[tuple[float, int]],
    what: str,
) -> tuple[float, float]:
    """(seconds from the first counted item to ``expected``, seconds to the first).

    ``count()`` is sampled every 0.5 s into ``samples`` as (seconds, count).
    """
    t0 = time.perf_counter()
    first = None
    while time.perf_counter() - t0 < timeout:
        n = count()
        samples.append((time.perf_counter() - t0, n))
        if n and first is None:
            first = time.perf_counter()
        if n >= expected:
            assert first is not None
            return time.perf_counter() - first, first - t0
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{what} {count()} of {expected}")


def write_results(name: str, results: dict[str, Any]) -> None:
    """Write ``bench/results/<name>`` (JSON) and print it."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def stack_settings(workdir: Path, servers: list[Server], secret: str) -> AuditSettings:
    """Settings for the API on a free port over embedded (Kafka, MongoDB, Redis) ``servers``."""
    return AuditSettings(
        kafka_bootstrap=servers[0].url,
        mongo_uri=servers[1].url,
        redis_url=servers[2].url,
        mongo_db="bench",
        jwt_secret=SecretStr(secret),
        api_port=free_port(),
        data_dir=str(workdir / "data"),
    )


def child_env(settings: AuditSettings, secret: str, **extra: str) -> dict[str, str]:
    """This environment without AUDITSTREAM_* variables, plus ``settings`` and ``extra``."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")},
        **settings_env(settings),
        "AUDITSTREAM_JWT_SECRET": secret,
        **extra,
    }


def spawn(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``python -m auditstream <args>``, output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "auditstream", *args], env=env, stdout=out, stderr=out
        )


def backlog_parser(doc: str | None) -> argparse.ArgumentParser:
    """--events, --tenants, --timeout of a backlog benchmark; described by ``doc``'s first line."""
    assert doc
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--tenants", type=int, default=20)
    p.add_argument("--timeout", type=float, default=900.0)
    return p
