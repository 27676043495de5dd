"""aiokafka's record reading made never to raise at a consumer (the stream
processor's worker, replay and archiver, and the query API's reader of the
checkpoints topic): any producer may write a topic, and one batch aiokafka cannot
parse raised out of every fetch of its partition, for good."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record.default_records import _DefaultRecordBatchPy
from aiokafka.record.memory_records import _MemoryRecordsPy

log = logging.getLogger("auditstream.kafka")


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


class _TolerantBatch:
    """aiokafka's (C) record batch, made never to raise at its consumer.

    A header name that is not UTF-8: the batch is read again leniently. A batch that
    cannot be read at all (a codec nobody installed, compressed bytes that do not
    decompress, records that do not parse, a CRC that does not match, which Tansu
    accepts): one record at its last offset carries its raw bytes and the reason
    (decode dead-letters it; the checkpoints reader skips it), and the partition goes
    on after it (aiokafka raised out of every fetch).
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
