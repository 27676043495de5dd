"""The bench's stack: the shared embedded dev stack plus per-scenario settings and children.

Servers come from :class:`auditstream.devstack.DevStack`, the same helper the
integration tests use (``tests/conftest.py``); services run as ``python -m
auditstream …`` children that sign checkpoints, as in production.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from audit_events.chain import generate_keypair
from audit_events.settings import AuditSettings
from auditstream.devstack import DevStack, service_env, spawn_service, stop_services

SECRET = "bench-secret-0123456789abcdef0123456789"
CHECKPOINT_KEY, _ = generate_keypair()  # processors sign checkpoints, as in production


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Stack:
    """Servers for the whole run, plus per-scenario settings and child processes."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.dev = DevStack(workdir)
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.dev.start()

    def settings(self, name: str, **extra: Any) -> AuditSettings:
        extra.setdefault("processor_metrics_port", 0)
        return AuditSettings(
            kafka_bootstrap=self.dev.kafka,
            mongo_uri=self.dev.mongo,
            redis_url=self.dev.redis,
            topic_events=f"bench.{name}",
            topic_dlq=f"bench.{name}.dlq",
            topic_checkpoints=f"bench.{name}.ckpt",
            mongo_db=f"bench_{name}",
            processor_group=f"bench-{name}",
            jwt_secret=SecretStr(SECRET),
            kafka_partitions=8,
            data_dir=str(self.workdir / name),
            **extra,
        )

    def spawn(self, settings: AuditSettings, *args: str) -> subprocess.Popen[bytes]:
        env = service_env(
            settings,
            AUDITSTREAM_JWT_SECRET=SECRET,
            AUDITSTREAM_CHECKPOINT_SIGNING_KEY=CHECKPOINT_KEY,  # as in production
        )
        log = self.workdir / f"{args[0]}-{len(self.children)}.log"
        proc = spawn_service(env, log, *args)
        self.children.append(proc)
        return proc

    def stop_children(self) -> None:
        stop_services(self.children)
        self.children.clear()

    def stop(self) -> None:
        self.stop_children()
        self.dev.stop()
