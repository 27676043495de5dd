"""The embedded stack as one object, and ``python -m auditstream …`` children.

Shared by the integration tests (``tests/conftest.py``) and the benchmarks
(``bench/stack.py``), neither of which imports the other: Tansu (Kafka),
SecantusDB (MongoDB) and redis-server on free ports under one work directory
(:mod:`auditstream.embedded` starts each), plus services run as child processes
in their own process group with the given settings in their environment.
``auditstream up`` has its own supervisor (fixed ports, a watchdog); this is the
throw-away variant for test and bench runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from audit_events.settings import AuditSettings, settings_env
from auditstream.embedded import (
    EmbeddedError,
    Server,
    kafka_server,
    mongo_server,
    port_answers,
    redis_server,
    stop_all,
)

#: Each role's server on a fresh port (``DevStack.start`` takes another one).
_SERVERS: dict[str, Callable[[Path], Server]] = {
    "kafka": kafka_server,
    "mongodb": mongo_server,
    "redis": redis_server,
}


class DevStack:
    """Kafka, MongoDB and Redis dev servers on free ports under ``workdir``.

    ``start()`` then ``stop()`` (also after a failed start), or ``with DevStack(dir):``.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[Server] = [
            kafka_server(workdir),
            mongo_server(workdir),
            redis_server(workdir),
        ]

    @property
    def kafka(self) -> str:
        return self.servers[0].url

    @property
    def mongo(self) -> str:
        return self.servers[1].url

    @property
    def redis(self) -> str:
        return self.servers[2].url

    def by_role(self) -> dict[str, Server]:
        return {s.role: s for s in self.servers}

    def start(self) -> None:
        """Start every server. One whose fresh port another process took before its
        bind (another test worker's stack starting at the same moment: something
        answers there, not it) is started again on another port, twice at most."""
        for i, server in enumerate(self.servers):
            for attempt in range(3):
                try:
                    server.start()
                    break
                except EmbeddedError:
                    if attempt == 2 or not port_answers(server.port):
                        raise
                    server = self.servers[i] = _SERVERS[server.role](self.workdir)

    def stop(self) -> None:
        """Stop every server (in reverse start order); safe after a partial start."""
        stop_all(self.servers)

    def __enter__(self) -> DevStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def service_env(settings: AuditSettings, **extra: str) -> dict[str, str]:
    """This environment without ``AUDITSTREAM_*`` variables, plus ``settings`` and ``extra``."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")},
        **settings_env(settings),
        **extra,
    }


def spawn_service(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """``python -m auditstream <args>`` in its own session, output appended to ``log_path``."""
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "auditstream", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_service(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGKILL ``proc``'s process group (if it still runs) and reap it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def stop_services(procs: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    """SIGTERM every running group in ``procs``, then wait ``timeout`` each; SIGKILL the rest."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_service(proc)
