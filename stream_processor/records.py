"""The framework-free record and batch types the pipeline works on."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record.default_records import _DefaultRecordBatchPy
from aiokafka.record.memory_records import _MemoryRecordsPy

log = logging.getLogger("auditstream.processor")


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka message, independent of the consumer library."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # -1 (or anything) when the broker gave none: decode rejects it
    key: bytes | None
    value: bytes | None  # None: a tombstone (null value), dead-lettered by decode
    headers: tuple[tuple[str, bytes | None], ...] = ()


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What Step 5 (seal + ordered insert) did with a batch's documents."""

    inserted: int
    duplicates: int
    # Positions (in the list given to the writer) of the documents not stored
    # because their tenant already holds an event with that id and another content.
    conflicts: tuple[int, ...] = ()
    # The chain head (seq, hash) of every tenant the documents belong to, after the write.
    heads: Mapping[str, tuple[int, str]] = field(default_factory=dict)


@dataclass(slots=True)
class Batch:
    """Records flushed together, and what each step found out about them.

    Carries the offsets it may commit once stored (:meth:`committable`). The
    steps (docs/processor.md, "Steps") fill it in order: decode (Step 2) pairs
    every stored-to-be document with the record it came from (``accepted``) or
    gives the record a reason (``rejects``); the write (Step 5) sets ``written``
    and adds its conflicts to ``rejects``; applying control events (Step 6)
    collects the targets they changed (``changed``), whose scopes the
    invalidation (Step 9) bumps with the batch's own.
    """

    records: list[Record]
    accepted: list[tuple[Record, dict[str, Any]]] = field(default_factory=list)
    rejects: list[tuple[Record, str]] = field(default_factory=list)
    dead_lettered: int = 0  # of ``rejects``, how many the DLQ acknowledged (Steps 3 and 8)
    written: WriteResult | None = None
    changed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def documents(self) -> list[dict[str, Any]]:
        """The decoded documents, in record order (conflicts included)."""
        return [doc for _, doc in self.accepted]

    def stored_documents(self) -> list[dict[str, Any]]:
        """The decoded documents that are stored now (all but the write's conflicts)."""
        conflicts = set(self.written.conflicts) if self.written is not None else set()
        return [doc for i, (_, doc) in enumerate(self.accepted) if i not in conflicts]

    def committable(self) -> dict[tuple[str, int], int]:
        """``{(topic, partition): next_offset}`` covering every record of the batch."""
        out: dict[tuple[str, int], int] = {}
        for r in self.records:
            tp = (r.topic, r.partition)
            out[tp] = max(out.get(tp, 0), r.offset + 1)
        return out


def record_from_message(msg: Any) -> Record:
    """A :class:`Record` from a consumer's message (Faust/aiokafka), whatever it carries.

    Never raises on the payload: a null value or key stays ``None`` (decode
    dead-letters a null value), a missing or absurd timestamp becomes ``-1``
    (decode dead-letters it), headers that are not ``(str, bytes)`` pairs are
    kept as well as they can be. Only the position (topic, partition, offset)
    is taken as given: without it nothing could be committed.
    """
    return Record(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        timestamp_ms=timestamp_ms(getattr(msg, "timestamp", None)),
        key=as_bytes(getattr(msg, "key", None)),
        value=as_bytes(getattr(msg, "value", None)),
        headers=as_headers(getattr(msg, "headers", None)),
    )


def timestamp_ms(seconds: Any) -> int:
    """Milliseconds of a timestamp in seconds; ``-1`` when there is none or it is absurd."""
    try:
        value = float(seconds)
    except (TypeError, ValueError, OverflowError):
        return -1
    if not math.isfinite(value) or not -(2**62) < value * 1000 < 2**62:
        return -1  # keeps every later step (the DLQ record's JSON) within 64 bits
    return round(value * 1000)


def as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    text = value if isinstance(value, str) else repr(value)
    return text.encode("utf-8", "surrogatepass")


def as_headers(headers: Any) -> tuple[tuple[str, bytes | None], ...]:
    if not headers:
        return ()
    try:
        pairs: Iterable[Any] = headers.items() if isinstance(headers, Mapping) else headers
        out = []
        for pair in pairs:
            name, value = pair
            key = name if isinstance(name, str) else repr(name)
            out.append((key, as_bytes(value)))
        return tuple(out)
    except (TypeError, ValueError):
        return (("(unreadable headers)", as_bytes(repr(headers))),)


# --- header names that are not UTF-8 ------------------------------------------------
# The Kafka protocol says a header name is a UTF-8 string; the broker does not check.
# aiokafka's record parser decodes it strictly: one record whose header name is not
# UTF-8 raised UnicodeDecodeError out of every fetch of its partition, so the worker
# (and replay, the archiver) crashed on it again after every restart. Headers are
# never read here (only copied into a dead letter): the batch that fails so is read
# again by aiokafka's pure-Python parser, with undecodable bytes of header names
# written as ``\xNN`` escapes; every other byte of the record is kept as it is.


class _LenientSlice(bytearray):
    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytearray.decode(self, encoding, "backslashreplace")


class _LenientBuffer(bytearray):
    """A batch buffer whose slices decode leniently (the parser decodes header names only)."""

    def __getitem__(self, index: Any) -> Any:
        item = bytearray.__getitem__(self, index)
        return _LenientSlice(item) if isinstance(index, slice) else item


class _LenientBatch(_DefaultRecordBatchPy):  # type: ignore[misc]  # untyped in aiokafka
    def __init__(self, buffer: bytes | bytearray | memoryview) -> None:
        super().__init__(buffer)
        self._buffer: bytearray = _LenientBuffer(self._buffer)

    def _maybe_uncompress(self) -> None:
        super()._maybe_uncompress()  # a compressed batch gets a new (plain) buffer
        if not isinstance(self._buffer, _LenientBuffer):
            self._buffer = _LenientBuffer(self._buffer)


# The header the fetcher puts on the one record that stands for a batch it cannot read
# (decode dead-letters that record with the reason it carries). A producer that sets
# it on its own record only gets that record dead-lettered.
UNREADABLE_BATCH_HEADER = "auditstream-unreadable-batch"
UNREADABLE_BATCH = "unreadable record batch"


@dataclass(frozen=True, slots=True)
class _UnreadableBatchRecord:
    """What the fetcher makes a ``ConsumerRecord`` of: the batch's last offset, its raw bytes."""

    offset: int
    timestamp: int
    timestamp_type: int
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    key: None = None
    checksum: None = None


def unreadable_batch_reason(record: Record) -> str | None:
    """The reason a record stands for a batch the fetcher could not read, if it does."""
    for name, value in record.headers:
        if name == UNREADABLE_BATCH_HEADER:
            detail = (value or b"").decode("utf-8", "backslashreplace")[:500]
            return f"{UNREADABLE_BATCH} (offsets up to this one): {detail}"
    return None


class _TolerantBatch:
    """aiokafka's (C) record batch, made never to raise at its consumer.

    A header name that is not UTF-8: the batch is read again leniently. A batch that
    cannot be read at all (a codec nobody installed, compressed bytes that do not
    decompress, records that do not parse, a CRC that does not match, which Tansu
    accepts): one record at its last offset carries its raw bytes and the reason to
    the DLQ, and the partition goes on after it (aiokafka raised out of every fetch).
    """

    def __init__(self, fast: Any, raw: memoryview) -> None:
        self._fast = fast
        self._raw = raw
        self._records: Iterator[Any] | None = None
        self._crc_ok = True

    def __getattr__(self, name: str) -> Any:  # base_offset, next_offset, ...
        return getattr(self._fast, name)

    def validate_crc(self) -> bool:
        self._crc_ok = bool(self._fast.validate_crc())
        return True  # a mismatch is dead-lettered when read, not raised at every fetch

    def _unreadable(self, why: str) -> _UnreadableBatchRecord:
        fast = self._fast
        log.warning("record batch at offset %s cannot be read: %s", fast.base_offset, why)
        return _UnreadableBatchRecord(
            offset=fast.next_offset - 1,
            timestamp=fast.first_timestamp,
            timestamp_type=fast.timestamp_type,
            value=bytes(self._raw),
            headers=((UNREADABLE_BATCH_HEADER, why[:500].encode("utf-8", "replace")),),
        )

    def __iter__(self) -> Iterator[Any]:
        if not self._crc_ok:
            yield self._unreadable("its CRC does not match its bytes")
            return
        try:
            records = list(self._fast)  # one batch: bounded by the fetch size
        except UnicodeDecodeError:  # a header name
            log.warning(
                "record batch at offset %s: a header name is not UTF-8; read leniently",
                self._fast.base_offset,
            )
            try:
                records = list(_LenientBatch(bytes(self._raw)))
            except Exception as exc:
                yield self._unreadable(f"{type(exc).__name__}: {exc}")
                return
        except Exception as exc:  # codec, compression, structure
            yield self._unreadable(f"{type(exc).__name__}: {exc}")
            return
        lie = self._offsets_lie(records)
        if lie is not None:
            yield self._unreadable(lie)
            return
        yield from records

    def _offsets_lie(self, records: list[Any]) -> str | None:
        """Why the records' offsets do not fit the batch's header, if they do not.

        The producer writes both; Apache Kafka refuses a batch whose record count
        differs from its header, Tansu stores it and gives the next batch offsets
        these records claim: taking them would commit past that batch's events."""
        first, end = self._fast.base_offset, self._fast.next_offset
        previous = first - 1
        for record in records:
            if not previous < record.offset < end:
                return (
                    f"its records' offsets do not fit its header (offsets {first}..{end - 1}:"
                    f" a record claims {record.offset} after {previous})"
                )
            previous = record.offset
        return None

    def __next__(self) -> Any:  # the fetcher reads a control batch's marker with next()
        if self._records is None:
            self._records = iter(self)
        return next(self._records)


class _TolerantMemoryRecords(_MemoryRecordsPy):  # type: ignore[misc]  # untyped in aiokafka
    """aiokafka's ``MemoryRecords`` (the pure-Python splitter of a fetched buffer into
    batches, which the C batches then parse), each v2 batch wrapped in :class:`_TolerantBatch`."""

    def next_batch(self, *args: Any, **kwargs: Any) -> Any:
        raw = self._next_slice
        batch = super().next_batch(*args, **kwargs)
        if raw is None or batch is None or getattr(batch, "magic", 0) < 2:
            return batch
        return _TolerantBatch(batch, raw)


def tolerate_undecodable_header_names() -> None:
    """Make every aiokafka consumer of this process survive a batch it cannot parse:
    header names that are not UTF-8 are read leniently, any other unreadable batch
    becomes one record for the DLQ (:class:`_TolerantBatch`). Idempotent; called
    where the worker, replay and the archiver consume."""
    aiokafka_fetcher.MemoryRecords = _TolerantMemoryRecords
