"""What keeps ``auditstream up`` from leaving processes behind or starting half a stack.

* :class:`Tracker` records every process ``up`` starts in ``<data_dir>/up.pids``
  (pid and kernel start time, so a reused pid is never taken for ours).
* The watchdog (``python -m auditstream.up_guard``) is started first, in its own
  session, reading a pipe whose only writer is ``up``. When ``up`` ends in any way
  (exit, crash, SIGKILL, OOM) the kernel closes the pipe. With the embedded Kafka
  (its log is in memory) the watchdog then does what Ctrl-C does: it stops the API
  (no new 202s) and waits until the worker stored everything Kafka holds (the
  consumer group's lag is 0), giving up only when the worker is gone or the lag
  has not shrunk for ``DRAIN_STALL`` s; the outcome goes to ``logs/up.log`` and
  the next ``up`` prints it. Then it sends SIGTERM to the process group of every
  recorded service still alive, SIGKILL to what is left of them after 2 s (0.5 s
  once drained; the archiver last, 15 s: its stop drains the topics into the
  archive), then SIGKILL to the embedded Kafka and the same as the services for
  MongoDB and Redis (3 s), and marks ``stack.json`` stopped.
  Chosen over ``prctl(PR_SET_PDEATHSIG)``: that reaches only the direct child (not
  a server's own helpers), fires when the *thread* that forked dies, needs a
  ``preexec_fn`` (unsafe once threads exist) and is Linux-only; the pipe works
  wherever pipes do and stops whole process groups, TERM before KILL.
* :func:`stale_stack` finds processes of an earlier ``up`` on this data dir that
  are still alive (recorded ones, or a SecantusDB holding ``<data_dir>/mongodb``).
* :func:`port_clash` checks every port before anything starts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PIDS_FILE = "up.pids"
GRACE = 5.0  # at most, from the end of the drain to the last SIGKILL
SERVICES_GRACE = 2.0  # the services' share of it
DRAINED_GRACE = 0.5  # the worker's, once its lag is drained
ARCHIVER_GRACE = 15.0  # the archiver's own: its stop drains the topics for up to 10 s
DRAIN_STALL = 30.0  # the drain gives up when the lag has not shrunk for this long
SERVERS = ("kafka", "mongodb", "redis")


def proc_start(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (Linux), None when unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _same_process(entry: dict[str, Any]) -> bool:
    pid, start = entry.get("pid"), entry.get("start")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if start is not None:
        return bool(proc_start(pid) == start)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _entry(role: str, pid: int) -> dict[str, Any]:
    return {"role": role, "pid": pid, "start": proc_start(pid)}


def read_pids(data_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((data_dir / PIDS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_pids(data_dir: Path, state: dict[str, Any]) -> None:
    path = data_dir / PIDS_FILE
    tmp = path.with_name(f".{PIDS_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


class Tracker:
    """Records ``up``'s processes for the watchdog and the next ``up``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.children: dict[str, int] = {}
        self.watchdog: subprocess.Popen[bytes] | None = None
        self._pipe_w: int | None = None
        self.drain: dict[str, str] | None = None

    def start_watchdog(self) -> None:
        self._save()
        read_end, self._pipe_w = os.pipe()
        self.watchdog = subprocess.Popen(
            [sys.executable, "-m", "auditstream.up_guard", str(self.data_dir), str(os.getpid())],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # neither Ctrl-C nor a closed terminal reaches it
        )
        os.close(read_end)
        self._save()

    def spawned(self, role: str, pid: int) -> None:
        self.children[role] = pid
        self._save()

    def drain_before_stop(self, bootstrap: str, group: str, topic: str) -> None:
        """Kafka at ``bootstrap`` loses its log when stopped: the watchdog drains
        ``group``'s lag on ``topic`` first."""
        self.drain = {"bootstrap": bootstrap, "group": group, "topic": topic}
        self._save()

    def _save(self) -> None:
        state: dict[str, Any] = {
            "up": _entry("up", os.getpid()),
            "children": [_entry(role, pid) for role, pid in self.children.items()],
        }
        if self.watchdog is not None:
            state["watchdog"] = _entry("watchdog", self.watchdog.pid)
        if self.drain is not None:
            state["drain"] = self.drain
        _write_pids(self.data_dir, state)

    def finish(self) -> None:
        """Close the pipe: the watchdog stops whatever is still alive, then exits."""
        if self._pipe_w is not None:
            os.close(self._pipe_w)
            self._pipe_w = None
        if self.watchdog is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.watchdog.wait(GRACE + 10)  # a drain it still runs goes on alone


def _alive_groups(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if _same_process(e)]


def _group_alive(pgid: int) -> bool:
    """A process of group ``pgid`` still runs (zombies, which ``up``'s death left to
    be reaped by someone else, do not count)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_recorded(data_dir: Path, up_pid: int) -> None:
    """The watchdog's work once ``up`` (``up_pid``) is gone."""
    state = read_pids(data_dir)
    if (state.get("up") or {}).get("pid") != up_pid:
        return  # another up owns the file now
    alive = _alive_groups(list(state.get("children") or []))
    # The services first, while Kafka, MongoDB and Redis still answer (nothing is
    # left to drain without up; a SIGKILLed worker is safe: its batch is redelivered),
    # then the servers (MongoDB flushes its store on SIGTERM).
    services = [e for e in alive if e.get("role") not in SERVERS]
    servers = [e for e in alive if e.get("role") in SERVERS]
    drain = state.get("drain")
    if isinstance(drain, dict) and any(e.get("role") == "kafka" for e in servers):
        # The embedded Kafka's log is in memory: what it holds and the worker has
        # not stored yet would be lost with it. As at Ctrl-C: the API first (no
        # new 202s), then the worker drains the lag, then the rest.
        first = [e for e in services if e.get("role") in ("api", "streamer")]
        _stop_groups(first, SERVICES_GRACE)  # the stream worker plays no part in it
        services = [e for e in services if e not in first]
        workers = [e for e in services if e.get("role") == "processor"]
        note = drain_lag(
            str(drain.get("bootstrap")),
            str(drain.get("group")),
            str(drain.get("topic")),
            lambda: any(_same_process(e) for e in workers),
        )
        state["note"] = f"the previous up was killed; its watchdog {note}"
        _log(data_dir, state["note"])
    # The archiver last of the services (it drains the topics for up to 10 s at its
    # stop, then publishes): the archive then covers what the worker stored.
    # Once drained, the worker has nothing left to store: no need to wait for its
    # own slow shutdown (~2.5 s).
    grace = DRAINED_GRACE if "note" in state else SERVICES_GRACE
    _stop_groups([e for e in services if e.get("role") != "archiver"], grace)
    _stop_groups([e for e in services if e.get("role") == "archiver"], ARCHIVER_GRACE)
    # Kafka at once when it is the embedded one (in memory: nothing to flush, and it
    # takes 5 s to stop on SIGTERM, acknowledging producers meanwhile).
    kafka = [e for e in servers if e.get("role") == "kafka" and isinstance(drain, dict)]
    _stop_groups(kafka, 0.0)
    _stop_groups([e for e in servers if e not in kafka], GRACE - SERVICES_GRACE)
    state["children"] = []
    state.pop("watchdog", None)
    with contextlib.suppress(OSError):
        _write_pids(data_dir, state)
    if alive:
        from audit_events.settings import stack_state_path
        from auditstream.stack_state import mark_stopped

        mark_stopped(stack_state_path(data_dir), up_pid)


def _stop_groups(entries: list[dict[str, Any]], grace: float) -> None:
    """SIGTERM to each entry's process group, SIGKILL to what is left after ``grace``."""
    for entry in reversed(entries):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(entry["pid"], signal.SIGTERM)
    until = time.monotonic() + grace
    while time.monotonic() < until and any(_group_alive(e["pid"]) for e in entries):
        time.sleep(0.1)
    for entry in entries:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(entry["pid"], signal.SIGKILL)


def drain_lag(
    bootstrap: str,
    group: str,
    topic: str,
    worker_alive: Callable[[], bool],
    stall: float = DRAIN_STALL,
) -> str:
    """Wait until ``group``'s lag on ``topic`` is 0; what happened, as a phrase.

    Gives up when the worker is gone or the lag has not shrunk for ``stall`` s
    (a worker still joining its group or retrying a write shrinks it later).
    """
    import asyncio

    from auditstream.drain import lag_readings

    async def run() -> str:
        started = time.monotonic()
        best: int | None = None
        progress = started
        async with contextlib.aclosing(lag_readings(bootstrap, group, topic)) as readings:
            async for lag, _ in readings:
                now = time.monotonic()
                if lag == 0:
                    return (
                        "drained the worker's lag: every accepted event is stored "
                        f"({now - started:.1f}s)"
                    )
                if lag is not None and (best is None or lag < best):
                    best, progress = lag, now
                lost = f"{lag:,}" if lag is not None else "an unknown number of"
                if not worker_alive():
                    return (
                        f"found no processor worker to drain Kafka: {lost} accepted "
                        "events were not stored and are lost with the in-memory Kafka"
                    )
                if now - progress >= stall:
                    return (
                        f"gave up draining after {stall:.0f}s without progress: {lost} "
                        "accepted events were not stored and are lost with the in-memory Kafka"
                    )
        raise AssertionError("unreachable: the readings end at lag 0")

    return asyncio.run(run())


def _log(data_dir: Path, line: str) -> None:
    """Append ``line`` to ``logs/up.log`` (the watchdog has no terminal)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with contextlib.suppress(OSError):
        (data_dir / "logs").mkdir(parents=True, exist_ok=True)
        with open(data_dir / "logs" / "up.log", "a") as out:
            out.write(f"{stamp} {line}\n")


def watchdog_main(data_dir: str, up_pid: str) -> None:
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # only up's end of the pipe ends the watch
    while True:
        try:
            if not os.read(0, 4096):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    stop_recorded(Path(data_dir), int(up_pid))


# --- before anything starts ----------------------------------------------------


def wait_for_previous_watchdog(data_dir: Path, timeout: float = 120.0) -> bool:
    """True when the watchdog of an earlier up was still stopping its stack (waited:
    its drain lasts while the lag shrinks, then ``DRAIN_STALL`` + ``GRACE`` at most)."""
    entry = read_pids(data_dir).get("watchdog")
    if not isinstance(entry, dict) or not _same_process(entry):
        return False
    deadline = time.monotonic() + timeout
    while _same_process(entry) and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def previous_note(data_dir: Path) -> str | None:
    """What the watchdog of an earlier, killed up did about Kafka's lag, if anything."""
    note = read_pids(data_dir).get("note")
    return note if isinstance(note, str) else None


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def stale_stack(data_dir: Path) -> list[tuple[str, int]]:
    """(role, pid) of processes of an earlier ``up`` on ``data_dir`` still alive."""
    found = {
        e["pid"]: str(e.get("role"))
        for e in _alive_groups(list(read_pids(data_dir).get("children") or []))
    }
    storage = str(data_dir / "mongodb")
    proc = Path("/proc")
    if proc.is_dir():  # a SecantusDB holding the store (also one an older up left)
        for entry in proc.iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                argv = _cmdline(int(entry.name))
                if "--storage-path" in argv and storage in argv:
                    found.setdefault(int(entry.name), "mongodb")
    return sorted(((role, pid) for pid, role in found.items()), key=lambda item: item[1])


def kill_hint(pids: list[int]) -> str:
    """A kill command for ``pids``: their process groups when they lead one."""
    targets = []
    for pid in pids:
        try:
            leader = os.getpgid(pid) == pid
        except OSError:
            leader = False
        targets.append(f"-{pid}" if leader else str(pid))
    return "kill -- " + " ".join(targets)


@dataclass
class PortUse:
    host: str
    port: int
    what: str
    setting: str


def _bind_error(host: str, port: int) -> OSError | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc
    return None


def _listener(port: int) -> str:
    """' by pid N (command)' for the local process listening on ``port``, if found."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return ""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        cmd = " ".join(_cmdline(int(entry.name))).strip()[:60]
                        return f" by pid {entry.name} ({cmd})"
    return ""


def port_clash(uses: list[PortUse]) -> str | None:
    """One line naming the first port ``up`` cannot have and the setting that moves it."""
    seen: dict[int, PortUse] = {}
    for use in uses:
        if use.port in seen:
            other = seen[use.port]
            return (
                f"port {use.port} is set for both {other.what} ({other.setting}) and "
                f"{use.what} ({use.setting}); move one of them"
            )
        seen[use.port] = use
    for use in uses:
        exc = _bind_error(use.host, use.port)
        if exc is None:
            continue
        why = "is taken" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
        return (
            f"port {use.port} ({use.what}, {use.host}) {why}{_listener(use.port)}: "
            f"move it with {use.setting}, or every port with AUDITSTREAM_PORT_OFFSET (e.g. 100)"
        )
    return None


if __name__ == "__main__":
    watchdog_main(sys.argv[1], sys.argv[2])
