"""Batch → process → commit, driven without Faust or servers (fakes for the I/O).

The commit-after-write rule is checked on the loop the Faust adapter runs:
nothing is committed unless the batch's ``process`` returned, and a batch that
cannot be stored propagates out of the loop uncommitted.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from audit_events.cache_keys import generation_keys
from audit_events.chain import document_content_hash
from audit_events.schema import Limits
from stream_processor.batching import BatchLoop
from stream_processor.chain import Write
from stream_processor.fence import SwapInProgress
from stream_processor.flush import FlushPolicy
from stream_processor.invalidate import Invalidate
from stream_processor.metrics import ProcessorMetrics
from stream_processor.pipeline import BatchFailed, BatchProcessor
from stream_processor.records import Batch, Record, WriteResult
from stream_processor.retry import RetryPolicy

pytestmark = pytest.mark.unit

TOPIC = "audit.events"


def rec(offset: int, value: bytes | None = None, partition: int = 0) -> Record:
    if value is None:
        value = orjson.dumps(
            {
                "id": f"e-{partition}-{offset}",
                "tenant": "acme",
                "action": "invoice.update",
                "targets": [{"type": "invoice", "id": str(offset % 2)}],
            }
        )
    return Record(TOPIC, partition, offset, 1_700_000_000_000, b"acme", value)


class MemoryStore:
    """Insert-only by ``_id`` (tenant/id), like ChainWriter; can be told to fail N times.

    A second document with a stored ``_id`` is a duplicate when its content is
    the same, else a conflict (returned by position, like ChainWriter does).
    """

    def __init__(self, failures: int = 0) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.failures = failures
        self.calls = 0

    async def insert(self, documents: list[dict[str, Any]]) -> WriteResult:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store down")
        inserted = duplicates = 0
        conflicts = []
        for index, doc in enumerate(documents):
            stored = self.docs.get(doc["_id"])
            if stored is None:
                self.docs[doc["_id"]] = dict(doc)
                inserted += 1
            elif document_content_hash(stored) == document_content_hash(doc):
                duplicates += 1
            else:
                conflicts.append(index)
        return WriteResult(inserted, duplicates, tuple(conflicts))

    def ids(self) -> list[str]:
        """The client ids stored, sorted."""
        return sorted(d["id"] for d in self.docs.values())


class Invalidator:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.bumped: list[list[str]] = []

    async def bump(
        self, documents: list[dict[str, Any]], stored: list[dict[str, Any]] | None = None
    ) -> None:
        if self.fail:
            raise ConnectionError("redis down")
        self.bumped.append(generation_keys("test", documents))


class DeadLetters:
    def __init__(self, failures: int = 0) -> None:
        self.sent: list[tuple[int, str]] = []
        self.failures = failures

    async def send(self, record: Record, reason: str) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker down")
        self.sent.append((record.offset, reason))


class Committer:
    def __init__(self, accept: bool = True) -> None:
        self.commits: list[dict[tuple[str, int], int]] = []
        self.accept = accept

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> bool:
        if self.accept:
            self.commits.append(dict(offsets))
        return self.accept


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def processor(
    store: MemoryStore,
    clock: Clock,
    *,
    invalidator: Invalidator | None = None,
    dlq: DeadLetters | None = None,
    metrics: ProcessorMetrics | None = None,
    give_up_after: float = 10.0,
) -> BatchProcessor:
    metrics = metrics or ProcessorMetrics()
    return BatchProcessor(
        Write(store, metrics),
        Invalidate(invalidator or Invalidator(), metrics),
        dlq or DeadLetters(),
        limits=Limits(),
        max_event_bytes=4096,
        retry=RetryPolicy(initial_delay=1.0, max_delay=4.0, give_up_after=give_up_after),
        metrics=metrics,
        clock=clock,
        sleep=clock.sleep,
    )


def value(metrics: ProcessorMetrics, name: str) -> float:
    got = metrics.registry.get_sample_value(name)
    assert got is not None, name
    return got


async def test_the_store_raises_nothing_is_committed() -> None:
    clock, store, committer = Clock(), MemoryStore(failures=10**6), Committer()
    metrics = ProcessorMetrics()
    queue: asyncio.Queue[Record] = asyncio.Queue()
    for i in range(3):
        queue.put_nowait(rec(i))
    loop = BatchLoop(
        queue,
        FlushPolicy(3, 200),
        processor(store, clock, metrics=metrics, give_up_after=10.0),
        committer,
        clock=clock,
    )
    with pytest.raises(BatchFailed, match="write failed for 5 attempts: store down"):
        await loop.run()
    assert committer.commits == []
    assert loop.uncommitted == {}
    assert store.docs == {}
    assert clock.slept == [1.0, 2.0, 4.0, 4.0]  # backoff until the 10 s deadline
    assert value(metrics, "auditstream_batch_retries_total") == 5
    assert value(metrics, "auditstream_events_stored_total") == 0


async def test_a_failing_store_is_retried_then_committed_once() -> None:
    clock, store, committer = Clock(), MemoryStore(failures=2), Committer()
    queue: asyncio.Queue[Record] = asyncio.Queue()
    for i in range(5):
        queue.put_nowait(rec(i))
    loop = BatchLoop(queue, FlushPolicy(5, 200), processor(store, clock), committer, clock=clock)
    await loop.step()  # takes the 5 queued records
    await loop.step()  # due: process (2 failures, 3rd attempt stores) then commit
    assert store.calls == 3
    assert store.ids() == [f"e-0-{i}" for i in range(5)]
    assert committer.commits == [{(TOPIC, 0): 5}]


async def test_a_redelivered_batch_changes_nothing() -> None:
    clock, store, invalidator = Clock(), MemoryStore(), Invalidator()
    metrics = ProcessorMetrics()
    proc = processor(store, clock, invalidator=invalidator, metrics=metrics)
    records = [rec(i) for i in range(4)]
    await proc.process(records)
    before = {k: dict(v) for k, v in store.docs.items()}
    clock.now += 60  # redelivered later: received_at comes from the Kafka timestamp
    batch = await proc.process(records)
    assert store.docs == before
    assert batch.committable() == {(TOPIC, 0): 4}
    assert value(metrics, "auditstream_events_stored_total") == 4
    assert value(metrics, "auditstream_events_duplicate_total") == 4


async def test_partial_batch_flushes_after_max_ms_without_more_traffic() -> None:
    clock, store, committer = Clock(), MemoryStore(), Committer()
    queue: asyncio.Queue[Record] = asyncio.Queue()
    loop = BatchLoop(queue, FlushPolicy(100, 200), processor(store, clock), committer, clock=clock)
    queue.put_nowait(rec(0))
    queue.put_nowait(rec(1))
    await loop.step()
    assert loop.pending == [rec(0), rec(1)] and loop.batch_started == 100.0
    clock.now = 100.199
    await asyncio.wait_for(loop.step(), 5)  # waits (really) for the remaining ~1 ms
    assert committer.commits == [] and len(loop.pending) == 2
    clock.now = 100.2
    await loop.step()
    assert committer.commits == [{(TOPIC, 0): 2}]
    assert loop.pending == [] and loop.batch_started is None


async def test_events_queued_during_a_slow_write_do_not_wait_another_max_ms() -> None:
    clock, store, committer = Clock(), MemoryStore(), Committer()
    queue: asyncio.Queue[Record] = asyncio.Queue()
    inner = processor(store, clock)

    class SlowWrite:  # each write takes 300 ms; record 1 arrives during the first
        async def process(self, records: list[Record]) -> Any:
            clock.now += 0.3
            if not store.docs:
                queue.put_nowait(rec(1))
            return await inner.process(records)

    loop = BatchLoop(queue, FlushPolicy(100, 200), SlowWrite(), committer, clock=clock)
    queue.put_nowait(rec(0))
    await loop.step()  # takes record 0 at t=100.0
    clock.now = 100.2
    await loop.step()  # due: the write runs 100.2 → 100.5, record 1 queues up
    assert committer.commits == [{(TOPIC, 0): 1}]
    await loop.step()  # takes record 1: it has waited since the write began
    assert loop.batch_started == 100.2
    await loop.step()  # 300 ms ≥ max_ms: flushed at once, no further wait
    assert committer.commits[-1] == {(TOPIC, 0): 2}
    assert clock.now == 100.8  # two writes of 300 ms, no max_ms wait in between


async def test_a_caught_up_loop_flushes_a_lone_event_without_waiting() -> None:
    clock, store, committer = Clock(), MemoryStore(), Committer()
    queue: asyncio.Queue[Record] = asyncio.Queue()
    waits: list[float] = []
    probed: list[dict[tuple[str, int], int]] = []

    def backlog(positions: Mapping[tuple[str, int], int]) -> bool:
        probed.append(dict(positions))
        return False  # the high watermarks say nothing more is coming

    loop = BatchLoop(
        queue,
        FlushPolicy(100, 200),
        processor(store, clock),
        committer,
        clock=clock,
        backlog=backlog,
        on_flush=waits.append,
    )
    queue.put_nowait(rec(0))
    await loop.step()  # takes record 0
    await loop.step()  # caught up: flushed now, not at 100.2
    assert committer.commits == [{(TOPIC, 0): 1}] and store.ids() == ["e-0-0"]
    assert clock.now == 100.0 and waits == [0.0]
    assert probed == [{(TOPIC, 0): 1}]


async def test_a_loop_behind_the_high_watermark_keeps_filling_its_batch() -> None:
    clock, store, committer = Clock(), MemoryStore(), Committer()
    queue: asyncio.Queue[Record] = asyncio.Queue()
    highwater = {(TOPIC, 0): 3}  # the last fetch said offsets 0-2 exist

    def backlog(positions: Mapping[tuple[str, int], int]) -> bool:
        return any(highwater.get(tp, 0) > offset for tp, offset in positions.items())

    loop = BatchLoop(
        queue,
        FlushPolicy(100, 200),
        processor(store, clock),
        committer,
        clock=clock,
        backlog=backlog,
    )
    queue.put_nowait(rec(0))
    await loop.step()  # takes record 0
    await asyncio.wait_for(loop.step(), 5)  # queue empty but behind: waits (really 0.2 s)
    assert committer.commits == [] and len(loop.pending) == 1
    queue.put_nowait(rec(1))
    await loop.step()  # records queued: never caught up while the queue holds any
    assert committer.commits == [] and len(loop.pending) == 2
    queue.put_nowait(rec(2))
    await loop.step()  # takes record 2: now at the high watermark
    await loop.step()
    assert committer.commits == [{(TOPIC, 0): 3}] and loop.pending == []
    assert clock.now == 100.0  # flushed when caught up, before max_ms


async def test_batch_never_exceeds_max_events_and_commits_per_partition() -> None:
    clock, store, committer = Clock(), MemoryStore(), Committer()
    queue: asyncio.Queue[Record] = asyncio.Queue()
    for i in range(5):
        queue.put_nowait(rec(i, partition=i % 2))
    loop = BatchLoop(queue, FlushPolicy(3, 200), processor(store, clock), committer, clock=clock)
    await loop.step()
    assert len(loop.pending) == 3
    await loop.step()
    assert committer.commits == [{(TOPIC, 0): 3, (TOPIC, 1): 2}]
    await loop.step()
    clock.now += 1
    await loop.step()
    assert committer.commits[-1] == {(TOPIC, 0): 5, (TOPIC, 1): 4}


async def test_small_batches_share_a_commit_while_commit_every_says_so() -> None:
    clock, store, committer = Clock(), MemoryStore(), Committer()
    queue: asyncio.Queue[Record] = asyncio.Queue()
    every = {"seconds": 0.5}  # e.g. FetchWait.commit_every while waited records arrive
    loop = BatchLoop(
        queue,
        FlushPolicy(1, 200),
        processor(store, clock),
        committer,
        clock=clock,
        commit_every=lambda: every["seconds"],
    )
    for i in range(3):
        queue.put_nowait(rec(i))
        await loop.step()
        await loop.step()
        clock.now += 0.1
    # the first batch commits; the next two are stored, their offsets wait
    assert store.ids() == ["e-0-0", "e-0-1", "e-0-2"]
    assert committer.commits == [{(TOPIC, 0): 1}] and loop.uncommitted == {(TOPIC, 0): 3}
    clock.now = 100.5  # 0.5 s after the first commit: the next flush commits all
    queue.put_nowait(rec(3))
    await loop.step()
    await loop.step()
    assert committer.commits == [{(TOPIC, 0): 1}, {(TOPIC, 0): 4}] and loop.uncommitted == {}
    queue.put_nowait(rec(4))
    await loop.step()
    await loop.step()  # deferred again; idle, the loop commits once the time is up
    assert loop.uncommitted == {(TOPIC, 0): 5}
    clock.now = 100.9
    await asyncio.wait_for(loop.step(), 5)  # waits (really) for the remaining 0.1 s
    assert committer.commits[-1] == {(TOPIC, 0): 5} and loop.uncommitted == {}
    every["seconds"] = 0.0  # no longer: every batch commits at once again
    queue.put_nowait(rec(5))
    await loop.step()
    await loop.step()
    assert committer.commits[-1] == {(TOPIC, 0): 6}


async def test_a_refused_commit_is_retried_with_the_next_one() -> None:
    clock, store, committer = Clock(), MemoryStore(), Committer(accept=False)
    failures: list[int] = []
    queue: asyncio.Queue[Record] = asyncio.Queue()
    loop = BatchLoop(
        queue,
        FlushPolicy(1, 200),
        processor(store, clock),
        committer,
        clock=clock,
        on_commit_failed=lambda: failures.append(1),
    )
    queue.put_nowait(rec(0))
    await loop.step()
    await loop.step()
    assert loop.uncommitted == {(TOPIC, 0): 1} and failures == [1]
    committer.accept = True
    queue.put_nowait(rec(1))
    await loop.step()
    await loop.step()
    assert committer.commits == [{(TOPIC, 0): 2}] and loop.uncommitted == {}


async def test_redis_down_still_stores_and_commits_and_counts_the_failure() -> None:
    clock, store, committer = Clock(), MemoryStore(), Committer()
    metrics = ProcessorMetrics()
    proc = processor(store, clock, invalidator=Invalidator(fail=True), metrics=metrics)
    queue: asyncio.Queue[Record] = asyncio.Queue()
    queue.put_nowait(rec(0))
    loop = BatchLoop(queue, FlushPolicy(1, 200), proc, committer, clock=clock)
    await loop.step()
    await loop.step()
    assert store.ids() == ["e-0-0"] and committer.commits == [{(TOPIC, 0): 1}]
    assert value(metrics, "auditstream_invalidation_failures_total") == 1


async def test_invalidation_bumps_tenant_and_target_scopes_of_the_batch() -> None:
    clock, invalidator = Clock(), Invalidator()
    await processor(MemoryStore(), clock, invalidator=invalidator).process([rec(0), rec(1)])
    assert len(invalidator.bumped) == 1
    keys = invalidator.bumped[0]
    assert len(keys) == 3 and sum(":gen:t:acme" in k for k in keys) == 1


async def test_poison_goes_to_the_dlq_and_its_offset_is_committed() -> None:
    clock, store, committer, dlq = Clock(), MemoryStore(), Committer(), DeadLetters(failures=1)
    queue: asyncio.Queue[Record] = asyncio.Queue()
    for r in (rec(0), rec(1, b"\xff\xfe"), rec(2, b"{nope"), rec(3)):
        queue.put_nowait(r)
    loop = BatchLoop(
        queue, FlushPolicy(4, 200), processor(store, clock, dlq=dlq), committer, clock=clock
    )
    await loop.step()
    await loop.step()
    assert [o for o, _ in dlq.sent] == [1, 2]  # the failed send was retried, not duplicated
    assert dlq.sent[0][1].startswith("not UTF-8") and dlq.sent[1][1].startswith("not JSON")
    assert store.ids() == ["e-0-0", "e-0-3"]
    assert committer.commits == [{(TOPIC, 0): 4}]


def same_id(record: Record, offset: int, **changes: Any) -> Record:
    """``record``'s event with ``changes`` (same id), as the record at ``offset``
    (keyed by its tenant, as every producer keys it)."""
    body = {**orjson.loads(record.value), **changes}
    return dataclasses.replace(rec(offset, orjson.dumps(body)), key=str(body["tenant"]).encode())


async def test_same_id_other_content_is_dead_lettered_before_the_commit() -> None:
    clock, store, committer = Clock(), MemoryStore(), Committer()
    dlq, metrics = DeadLetters(failures=1), ProcessorMetrics()
    first = rec(0)
    records = [
        first,
        same_id(first, 1, action="invoice.delete"),  # same tenant and id, other content
        rec(2, first.value),  # an identical redelivery
        same_id(first, 3, tenant="globex"),  # the same id in another tenant: its own event
    ]
    queue: asyncio.Queue[Record] = asyncio.Queue()
    for r in records:
        queue.put_nowait(r)
    proc = processor(store, clock, dlq=dlq, metrics=metrics)
    loop = BatchLoop(queue, FlushPolicy(4, 200), proc, committer, clock=clock)
    await loop.step()
    await loop.step()
    assert dlq.sent == [(1, "duplicate id with different content")]  # retried once, sent once
    assert sorted(store.docs) == ["acme/e-0-0", "globex/e-0-0"]
    assert store.docs["acme/e-0-0"]["action"] == "invoice.update"  # unchanged
    assert committer.commits == [{(TOPIC, 0): 4}]
    assert value(metrics, "auditstream_duplicate_id_conflicts_total") == 1
    assert value(metrics, "auditstream_events_duplicate_total") == 1
    assert value(metrics, "auditstream_events_stored_total") == 2


async def test_a_conflict_that_cannot_be_dead_lettered_commits_nothing() -> None:
    clock, store, committer = Clock(), MemoryStore(), Committer()
    first = rec(0)
    queue: asyncio.Queue[Record] = asyncio.Queue()
    queue.put_nowait(first)
    queue.put_nowait(same_id(first, 1, action="invoice.delete"))
    proc = processor(store, clock, dlq=DeadLetters(failures=10**6), give_up_after=10.0)
    loop = BatchLoop(queue, FlushPolicy(2, 200), proc, committer, clock=clock)
    with pytest.raises(BatchFailed, match="dead-letter failed"):
        await loop.run()
    assert committer.commits == []


async def test_every_write_attempt_checks_the_fence_first() -> None:
    clock, store = Clock(), MemoryStore(failures=1)
    order: list[str] = []

    async def fence(batch: Batch) -> None:
        order.append("fence")
        if order.count("fence") == 1:
            raise SwapInProgress("replay is swapping collections; retrying")

    class Recording(MemoryStore):
        async def insert(self, documents: list[dict[str, Any]]) -> WriteResult:
            order.append("write")
            return await store.insert(documents)

    proc = BatchProcessor(
        Write(Recording()),
        Invalidate(Invalidator()),
        DeadLetters(),
        fence=fence,
        limits=Limits(),
        max_event_bytes=4096,
        retry=RetryPolicy(initial_delay=1.0, max_delay=4.0, give_up_after=10.0),
        clock=clock,
        sleep=clock.sleep,
    )
    await proc.process([rec(0)])
    # fenced, then a failing write, then both again: the fence is asked before each write
    assert order == ["fence", "fence", "write", "fence", "write"]
    assert clock.slept == [1.0, 2.0] and store.ids() == ["e-0-0"]


async def test_steps_run_in_order_and_control_targets_are_invalidated_with_the_batch() -> None:
    clock, store, invalidator = Clock(), MemoryStore(), Invalidator()
    order: list[str] = []

    async def fence(batch: Batch) -> None:
        order.append("fence")

    async def controls(batch: Batch) -> None:
        order.append("controls")
        assert batch.written is not None  # after the write
        batch.changed.append({"tenant": "acme", "targets": [{"type": "order", "id": "9"}]})

    async def checkpoint(batch: Batch) -> None:
        order.append("checkpoint")

    class Dlq(DeadLetters):
        async def send(self, record: Record, reason: str) -> None:
            order.append("dead-letter")
            await super().send(record, reason)

    class Bump(Invalidator):
        async def bump(
            self, documents: list[dict[str, Any]], stored: list[dict[str, Any]] | None = None
        ) -> None:
            order.append("invalidate")
            await invalidator.bump(documents)

    first = rec(0)
    proc = BatchProcessor(
        Write(store),
        Invalidate(Bump()),
        Dlq(),
        fence=fence,
        controls=controls,
        checkpoint=checkpoint,
        limits=Limits(),
        max_event_bytes=4096,
        retry=RetryPolicy(),
        clock=clock,
        sleep=clock.sleep,
    )
    await proc.process([first, rec(1, b"{nope"), same_id(first, 2, action="invoice.delete")])
    assert order == [
        "dead-letter",  # Step 3: the undecodable record
        "fence",
        "controls",
        "checkpoint",
        "dead-letter",  # Step 8: the conflict, after the write
        "invalidate",  # Step 9, once
    ]
    changed = {"tenant": "acme", "targets": [{"type": "order", "id": "9"}]}
    decoded = [{"tenant": "acme", "targets": [{"type": "invoice", "id": "0"}]}]
    assert invalidator.bumped == [generation_keys("test", [*decoded, changed])]
