"""A bounded, durable FIFO of encoded events on disk (stdlib ``sqlite3``).

Events go here while Kafka is unreachable and are drained in insertion order when
it returns. Appends are transactions with ``synchronous=FULL``: once :meth:`append`
returned, the events survive a crash of the process. A full spool raises
:class:`~producers.errors.SpoolFull`; it never drops or overwrites.

Thread-safe: one connection guarded by a lock, so the producer's event loop, its
worker threads and other threads (``emit_nowait`` from Django) may all use it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

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


class Spool:
    def __init__(self, path: Path | str, max_events: int, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
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

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
