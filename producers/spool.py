"""A bounded, durable FIFO of encoded events on disk (stdlib ``sqlite3``).

Events go here while Kafka is unreachable (or, in durable mode, always first) and
are drained in insertion order. Appends are committed transactions in WAL mode: once
:meth:`append` returned, the events survive the death of the process (SIGKILL, OOM,
a crash). With ``synchronous="FULL"`` every commit is also flushed to the disk
(fsync), so they survive a power loss or kernel crash too, at the cost of one disk
flush per commit (0.3 ms to several ms on the shared development machine, depending
on its disk load); ``"NORMAL"`` leaves that flush to WAL checkpoints. A full spool
raises :class:`~producers.errors.SpoolFull`; it never drops or overwrites.

Thread-safe: one connection guarded by a lock, so the producer's event loop, its
worker threads and other threads (``emit_nowait`` from Django) may all use it.

:class:`SpoolDirectory` makes several processes safe (gunicorn workers, management
commands): each process writes its own file, ``<host>-<pid>-<random>.db``, and holds
an exclusive ``flock`` on its ``.lock`` companion for as long as it lives. The kernel
releases that lock when the process dies, however it dies (SIGKILL, OOM), so any live
process can *claim* a file whose lock is free, drain it and delete it. Two drainers
never hold the same file: the claim is the lock. Local file systems only (``flock``
over NFS is not reliable).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import socket
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from producers.errors import SpoolFull

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key BLOB NOT NULL,
    value BLOB NOT NULL
)
"""

#: One spooled message: (sequence number, key, value).
Row = tuple[int, bytes, bytes]
#: SQLite's ``synchronous`` level for commits (see the module docstring).
Synchronous = Literal["FULL", "NORMAL"]


class Spool:
    def __init__(
        self,
        path: Path | str,
        max_events: int,
        max_bytes: int,
        *,
        lock: _FileLock | None = None,
        synchronous: Synchronous = "FULL",
        background_checkpoints: bool = False,
    ) -> None:
        self.path = Path(path)
        #: Held while this spool is open (files of a :class:`SpoolDirectory`).
        self.lock = lock
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
        self._db.execute(_SCHEMA)
        #: With ``background_checkpoints`` the committing threads never copy the WAL
        #: into the database (SQLite's auto-checkpoint would, every 1000 pages): the
        #: owner calls :meth:`checkpoint` from its own thread instead.
        self._background_checkpoints = background_checkpoints
        self._checkpointer: sqlite3.Connection | None = None
        self._commits = 0
        if background_checkpoints:
            self._db.execute("PRAGMA wal_autocheckpoint=0")
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0) FROM spool")
        count, size = row.fetchone()
        self._events: int = int(count)
        self._bytes: int = int(size)

    @property
    def events(self) -> int:
        """Events currently spooled."""
        return self._events

    @property
    def size_bytes(self) -> int:
        """Bytes of event payloads currently spooled."""
        return self._bytes

    def __len__(self) -> int:
        return self.events

    def free(self) -> int:
        """How many more events fit by count (the byte bound is checked on append)."""
        return max(0, self.max_events - self._events)

    def append(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        """Store ``(key, value)`` messages at the tail, all or none.

        Raises :class:`SpoolFull` (storing none of them) if they do not fit.
        """
        if not messages:
            return
        size = sum(len(v) for _, v in messages)
        with self._lock:
            self._check_room(len(messages), size)
            with self._transaction():
                self._db.executemany("INSERT INTO spool (key, value) VALUES (?, ?)", messages)
            self._events += len(messages)
            self._bytes += size
            self._commits += 1

    def prepend(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        """Store messages at the head (before everything spooled), all or none.

        Used for a chunk Kafka did not acknowledge: it is older than what was spooled
        while it was in flight. Raises :class:`SpoolFull` like :meth:`append`.
        """
        if not messages:
            return
        size = sum(len(v) for _, v in messages)
        with self._lock:
            self._check_room(len(messages), size)
            with self._transaction():
                head = self._db.execute("SELECT MIN(seq) FROM spool").fetchone()[0]
                if head is None:  # empty: the head is the tail
                    self._db.executemany("INSERT INTO spool (key, value) VALUES (?, ?)", messages)
                else:
                    first = int(head) - len(messages)
                    self._db.executemany(
                        "INSERT INTO spool (seq, key, value) VALUES (?, ?, ?)",
                        [(first + n, k, v) for n, (k, v) in enumerate(messages)],
                    )
            self._events += len(messages)
            self._bytes += size

    def _check_room(self, events: int, size: int) -> None:
        if self._events + events > self.max_events or self._bytes + size > self.max_bytes:
            raise SpoolFull(
                f"spool {self.path} is full ({self._events} events, {self._bytes} bytes; "
                f"limits {self.max_events} events, {self.max_bytes} bytes)"
            )

    def peek(self, limit: int) -> list[Row]:
        """The oldest ``limit`` messages, oldest first (they stay spooled)."""
        with self._lock:
            cur = self._db.execute(
                "SELECT seq, key, value FROM spool ORDER BY seq LIMIT ?", (limit,)
            )
            return [(int(s), bytes(k), bytes(v)) for s, k, v in cur.fetchall()]

    def remove_through(self, seq: int) -> None:
        """Delete every message up to and including ``seq`` (after Kafka acknowledged)."""
        with self._lock, self._transaction():
            cur = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0) FROM spool WHERE seq <= ?",
                (seq,),
            )
            count, size = cur.fetchone()
            self._db.execute("DELETE FROM spool WHERE seq <= ?", (seq,))
            self._events -= int(count)
            self._bytes -= int(size)
            self._commits += 1

    def needs_checkpoint(self, every: int = 200) -> bool:
        """Background checkpoints: whether ``every`` commits happened since the last."""
        return self._background_checkpoints and self._commits >= every

    def checkpoint(self) -> None:
        """Copy the WAL into the database (PASSIVE: writers are not blocked). Meant for
        the owner's background thread; uses its own connection, not the writers' lock."""
        self._commits = 0
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None
            )
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self, *, delete_if_empty: bool = False) -> bool:
        """Close; with ``delete_if_empty`` remove the files of an empty spool.

        Returns whether the files were deleted. The lock (if any) is released last,
        after the files are gone, so nobody else claims a half-deleted spool.
        """
        with self._lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
            self._db.close()
            deleted = False
            if delete_if_empty and self._events == 0:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{self.path}{suffix}")
                deleted = True
            if self.lock is not None:
                self.lock.release(unlink=deleted)
            return deleted

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


class _FileLock:
    """An exclusive, non-blocking ``flock`` on a lock file (released by the kernel when
    the process dies)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def create(cls, directory: Path, stem: str) -> _FileLock:
        """A new lock file, locked before anyone can see it (created under a temporary
        name, locked, then renamed into place)."""
        fd, tmp = tempfile.mkstemp(prefix=".new-", suffix=".tmp", dir=directory)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            final = directory / f"{stem}.lock"
            os.rename(tmp, final)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return cls(final, fd)

    @classmethod
    def try_claim(cls, path: Path) -> _FileLock | None:
        """Lock an existing lock file if nobody holds it (and it is still in place)."""
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The holder may have deleted the file just before releasing it.
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                raise FileNotFoundError(path)
        except OSError:
            os.close(fd)
            return None
        return cls(path, fd)

    def release(self, *, unlink: bool = False) -> None:
        if self.fd < 0:
            return
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1

    def forget(self) -> None:
        """In a forked child: close the inherited descriptor (the parent keeps the lock)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class SpoolDirectory:
    """A directory of per-process spool files (see the module docstring).

    ``create()`` opens this process's own file; ``claim()`` returns another file whose
    owner is gone (its lock is free), locked for the caller, or None.
    """

    def __init__(
        self,
        path: Path | str,
        max_events: int,
        max_bytes: int,
        synchronous: Synchronous = "FULL",
        background_checkpoints: bool = False,
    ) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.synchronous: Synchronous = synchronous
        self.background_checkpoints = background_checkpoints
        self.path.mkdir(parents=True, exist_ok=True)

    def create(self) -> Spool:
        host = _UNSAFE.sub("_", socket.gethostname())[:40] or "host"
        stem = f"{host}-{os.getpid()}-{secrets.token_hex(4)}"
        lock = _FileLock.create(self.path, stem)
        try:
            return Spool(
                self.path / f"{stem}.db",
                self.max_events,
                self.max_bytes,
                lock=lock,
                synchronous=self.synchronous,
                background_checkpoints=self.background_checkpoints,
            )
        except BaseException:
            lock.release(unlink=True)
            raise

    def candidates(self) -> Iterator[Path]:
        """Lock files of spools in the directory, oldest first."""
        paths = []
        for path in self.path.glob("*.lock"):
            with contextlib.suppress(FileNotFoundError):
                paths.append((path.stat().st_mtime, path))
        return (p for _, p in sorted(paths))

    def claim(self, exclude: Spool | None = None) -> Spool | None:
        """Lock and open a spool nobody holds (a dead process's file), or None."""
        for lock_path in self.candidates():
            if exclude is not None and exclude.lock is not None and lock_path == exclude.lock.path:
                continue
            lock = _FileLock.try_claim(lock_path)
            if lock is None:
                continue
            db = lock_path.with_suffix(".db")
            try:
                return Spool(
                    db, self.max_events, self.max_bytes, lock=lock, synchronous=self.synchronous
                )
            except (OSError, sqlite3.Error):
                lock.release()
                continue
        return None

    def adopt(self, path: Path) -> bool:
        """Move a spool file from elsewhere (e.g. an old one-file spool no process uses
        any more) into the directory, unlocked, so the next claim drains it."""
        stem = f"adopted-{secrets.token_hex(6)}"
        lock = _FileLock.create(self.path, stem)
        try:
            os.rename(path, self.path / f"{stem}.db")  # the loser of a race stops here
        except OSError:
            lock.release(unlink=True)
            return False
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.rename(f"{path}{suffix}", self.path / f"{stem}.db{suffix}")
        lock.release()
        return True


def default_spool_dir(name: str | None = None) -> Path:
    """A spool directory that needs no configuration, one per application ``name``.

    ``$XDG_STATE_HOME/auditstream/spool/<name>`` (``~/.local/state/…`` by default) when
    it is writable, else ``<temp dir>/auditstream-<uid>/spool/<name>``. Set an explicit
    directory in production: a temp directory may be cleared at reboot.
    """
    safe = _UNSAFE.sub("_", name or "default").strip("._") or "default"
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    candidates = [
        Path(state) / "auditstream" / "spool" / safe,
        Path(tempfile.gettempdir()) / f"auditstream-{os.getuid()}" / "spool" / safe,
    ]
    for path in candidates:
        if writable_dir(path):
            return path
    return candidates[-1]


def writable_dir(path: Path) -> bool:
    """Whether ``path`` exists or can be created, and files can be created in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError:
        return False
    return True
