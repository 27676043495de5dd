"""Faust adapter: topic, agent, wiring. Everything else lives in the pipeline.

Why Faust never acks or commits for us: Faust's ``take()`` acks the buffered
events in a ``finally:`` even when the body raised, a crashed agent is
restarted past them, and its stream also acks events it *skips* (those fetched
before a rebalance, see ``Stream._py_aiter``). Any of these would let Faust's
periodic commit advance past events that were never stored. So the events
topic is declared with ``acks=False``: Faust's ack bookkeeping ignores it and
its commit loop never commits it. The only commits of that topic are made by
:class:`~stream_processor.batching.BatchLoop`, with the offsets a stored batch
carries, after the batch is durable in MongoDB and its cache generations were
bumped. If a batch cannot be stored before the retry deadline (or anything
unexpected fails) the process exits hard (``os._exit``): no ``finally``
anywhere can commit it, and the group redelivers it to the next worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, cast

import faust
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from audit_events.cache_keys import cache_namespace
from audit_events.chain import control_keys
from audit_events.connections import (
    faust_broker_options,
    mongo_write_concern,
    redis_tls_options,
)
from audit_events.schema import limits_from
from audit_events.settings import AuditSettings, mongo_client_options
from audit_events.topics import topic_spec
from stream_processor.batching import BatchLoop
from stream_processor.chain import OldLayout
from stream_processor.checkpoints import Publish, idle_period
from stream_processor.control import ControlGate
from stream_processor.flush import FlushPolicy
from stream_processor.health import WorkerProbes
from stream_processor.invalidate import Invalidate
from stream_processor.kafka import FetchWait, app_class, awaited
from stream_processor.masking import masked_write
from stream_processor.metrics import ProcessorMetrics
from stream_processor.pipeline import BatchFailed, BatchProcessor
from stream_processor.records import Batch, Record, record_from_message
from stream_processor.retry import RetryPolicy
from stream_processor.sinks import RedisInvalidator, dead_letter_key, dead_letter_value
from stream_processor.store import ensure_indexes, events_collection
from stream_processor.write_path import open_write_path

log = logging.getLogger("auditstream.processor")
EXIT_BATCH_FAILED = 75  # EX_TEMPFAIL: the supervisor restarts us; nothing was committed


class FaustDeadLetters:
    def __init__(self, topic: Any, max_bytes: int) -> None:
        self._topic = topic
        self._max_bytes = max_bytes  # key + value; always under the broker's limit

    async def send(self, record: Record, reason: str) -> None:
        value = dead_letter_value(record, reason, max_bytes=self._max_bytes)
        fut = await self._topic.send(key=dead_letter_key(record), value=value)
        await fut  # wait for the broker's acknowledgement (acks=all)


class FaustCommitter:
    """Commits explicit offsets through Faust's consumer, for assigned partitions only."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> bool:
        consumer = cast(Any, self._app.consumer)
        assigned = consumer.assignment()
        tps = {faust.types.TP(t, p): o for (t, p), o in offsets.items()}
        mine = {tp: o for tp, o in tps.items() if tp in assigned}
        if not mine:
            return True  # revoked: the new owner re-reads from the group's offset
        # Faust's ``_commit`` takes explicit offsets (its public ``commit`` only
        # commits what was acked, which is exactly what we must not rely on).
        return bool(await consumer._commit(mine))


def topic_publisher(topic: Any) -> Publish:
    """Publish through a Faust topic and wait for the broker's acknowledgement."""

    async def publish(key: bytes, value: bytes) -> None:
        fut = await topic.send(key=key, value=value)
        await fut

    return publish


def kill_before_commit(after_batches: int) -> Callable[[Batch], None]:
    """Fault injection for tests: SIGKILL this process between a batch's write and commit.

    Fires on the ``after_batches``-th batch that stored at least one document.
    """
    stored = 0

    def hook(batch: Batch) -> None:
        nonlocal stored
        if batch.documents:
            stored += 1
        if stored >= after_batches:
            log.warning("fault injection: SIGKILL between write and commit")
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def create_app(
    settings: AuditSettings,
    metrics: ProcessorMetrics | None = None,
    *,
    before_commit: Callable[[Batch], None] | None = None,
    probes: WorkerProbes | None = None,
) -> faust.App:
    """Build the Faust app. Clients are opened in the worker's start-up hook.

    ``before_commit`` runs after each batch is stored and before its offsets are
    committed; only fault-injection tests pass one. ``probes`` receives what the
    worker's ``/healthz`` and ``/readyz`` read (stream_processor/health.py).
    """
    settings.require("kafka_bootstrap", "mongo_uri", "redis_url")
    metrics = metrics or ProcessorMetrics()
    policy = FlushPolicy(settings.batch_max_events, settings.batch_max_ms)
    # Tansu: a short fetch wait while ?wait=true events arrive, else the long one (kafka.py)
    fetch_wait = FetchWait(settings.kafka_fetch_active_wait_ms, settings.kafka_fetch_max_wait_ms)
    app = app_class(fetch_wait)(
        settings.processor_group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=settings.kafka_replication,
        topic_allow_declare=True,
        producer_acks=-1,
        producer_enable_idempotence=settings.kafka_idempotence,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # Short group timeouts: a killed worker's partitions move within seconds.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=10.0,
        datadir=os.path.join(settings.data_dir, "faust"),
        stream_buffer_maxsize=max(4096, settings.batch_max_events * 2),
        **faust_broker_options(settings),  # SASL/TLS, as every Kafka client
    )
    events = app.topic(
        settings.topic_events,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        acks=False,  # Faust must never commit this topic; BatchLoop does
        config=topic_spec(settings, "events").configs,  # if Faust ever declares it
    )
    dlq = app.topic(
        settings.topic_dlq,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        config=topic_spec(settings, "dlq").configs,
    )
    checkpoints = app.topic(  # key = tenant; every topic is created from the core's spec
        settings.topic_checkpoints,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        config=topic_spec(settings, "checkpoints").configs,
    )
    state: dict[str, Any] = {}
    if probes is not None:
        _connect_probes(app, probes, state)

    async def open_clients() -> BatchProcessor:
        wc = mongo_write_concern(settings)
        # Every store call is bounded (mongo_timeout_ms): a frozen MongoDB fails
        # writes, so the retry policy's deadline applies instead of a hang.
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_uri, **mongo_client_options(settings)
        )
        collection = events_collection(mongo, settings).with_options(write_concern=wc)
        await ensure_indexes(collection)
        redis = Redis.from_url(
            settings.redis_url or "", socket_timeout=2.0, **redis_tls_options(settings)
        )
        state["mongo"], state["redis"] = mongo, redis
        steps = await open_write_path(settings, collection, topic_publisher(checkpoints), metrics)
        state["checkpoints"] = steps.checkpoint  # the idle-checkpoint timer uses it
        keys = control_keys(settings)
        if not keys:
            log.warning(
                "AUDITSTREAM_CONTROL_PUBLIC_KEYS is not set: every correction and erasure"
                " is dead-lettered as a forged control event"
            )
        invalidator = RedisInvalidator(
            redis, settings.cache_ttl_seconds, namespace=cache_namespace(settings)
        )
        return BatchProcessor(
            masked_write(steps.write, collection.database, settings),  # before the seal
            Invalidate(invalidator, metrics),
            FaustDeadLetters(dlq, settings.dlq_max_record_bytes),
            fence=steps.fence,
            controls=steps.controls,
            checkpoint=steps.checkpoint,
            limits=limits_from(settings),
            max_event_bytes=settings.max_event_bytes,
            tenant_keys_only=settings.tenant_keys_only,
            retry=RetryPolicy(give_up_after=settings.write_retry_seconds),
            metrics=metrics,
            check=ControlGate(keys),  # only the API's signed control events pass
        )

    async def open_or_exit() -> BatchProcessor:
        """Open the clients, retrying like a failing batch; then exit non-zero.

        A crashed agent would leave a live worker holding its partitions and
        processing nothing; exiting lets the supervisor restart it (nothing was
        consumed-and-committed, so nothing is lost).
        """
        retry = RetryPolicy(give_up_after=settings.write_retry_seconds)
        started, attempt = time.monotonic(), 0
        while True:
            try:
                return await open_clients()
            except OldLayout as exc:  # not an outage: retrying cannot fix it
                _exit_without_commit(str(exc))
            except Exception as exc:
                attempt += 1
                if retry.should_give_up(started, time.monotonic()):
                    _exit_without_commit(f"cannot open the store: {exc}")
                log.warning("opening MongoDB/Redis failed (%s); retrying", exc)
                await asyncio.sleep(retry.delay(attempt))

    async def idle_checkpoints() -> None:
        # Heads that moved and then stayed idle get their checkpoint now, not at
        # the tenant's next batch (docs/chain.md: the unsigned tail is bounded).
        checkpoints = state.get("checkpoints")
        if checkpoints is None:
            return
        try:
            await checkpoints.idle()
        except Exception as exc:  # never stops the worker; the next tick retries
            log.warning("idle checkpoints failed: %s", exc)

    app.timer(interval=idle_period(settings.checkpoint_every_seconds))(idle_checkpoints)

    async def fetch_wait_tick() -> None:
        fetch_wait.tick()  # idle for FetchWait.idle_after seconds: the long wait again

    app.timer(interval=1.0)(fetch_wait_tick)

    @app.agent(events)
    async def ingest(stream: Any) -> None:
        # One actor (no concurrency>1); parallelism comes from partitions/workers.
        if "processor" not in state:
            state["processor"] = await open_or_exit()
        queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=settings.batch_max_events)
        loop = BatchLoop(
            queue,
            policy,
            state["processor"],
            FaustCommitter(app),
            on_batch=lambda batch: _observe_lag(app, metrics, batch),
            before_commit=before_commit,
            on_commit_failed=metrics.commit_failures.inc,
            heartbeat=probes.heartbeat if probes is not None else None,
            backlog=consumer_backlog(app),  # flush at once when caught up
            on_flush=metrics.batch_wait.observe,
            commit_every=fetch_wait.commit_every,  # fewer commits of small batches
        )
        task = asyncio.ensure_future(_run_or_exit(loop))
        try:
            async for event in stream.events():
                record = _record(event)
                if record.headers and awaited(record):
                    fetch_wait.awaited()  # a ?wait=true request's event: fetch promptly
                await queue.put(record)
        finally:
            task.cancel()

    return app


def _connect_probes(app: faust.App, probes: WorkerProbes, state: dict[str, Any]) -> None:
    """Readiness: group membership (an assignment, no rebalance running) and the store."""

    def joined(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        probes.joined = True

    async def ping_store() -> bool:
        mongo = state.get("mongo")
        if mongo is None or "processor" not in state:
            return False  # the store is not open yet
        await mongo.admin.command("ping")
        return True

    app.on_partitions_assigned.connect(joined)
    probes.rebalancing = lambda: bool(app.rebalancing)
    probes.ping_store = ping_store


async def _run_or_exit(loop: BatchLoop) -> None:
    try:
        await loop.run()
    except asyncio.CancelledError:
        raise  # worker stopping: the batch in flight stays uncommitted
    except BatchFailed as exc:
        _exit_without_commit(f"giving up on a batch: {exc}")
    except BaseException:
        # A bug, not an outage. Exiting makes the group redeliver the batch.
        log.exception("unexpected error in a batch")
        _exit_without_commit("unexpected error")


def _exit_without_commit(why: str) -> NoReturn:
    log.critical("%s; exiting without committing the batch", why)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_BATCH_FAILED)


def _record(event: Any) -> Record:
    # Null values and keys, odd headers or timestamps never raise here: decode
    # turns them into DLQ reasons (issue 14: one record must not stop the worker).
    return record_from_message(event.message)


def consumer_backlog(app: faust.App) -> Callable[[Mapping[tuple[str, int], int]], bool]:
    """The batch loop's backlog probe: does an assigned partition hold records past ``positions``?

    Compares the offset after the last record the loop took with the partition's
    high watermark from the consumer's latest fetch response (aiokafka keeps it
    per assigned partition). Partitions no longer assigned, and those without a
    known high watermark yet, do not count. A high watermark that is stale or
    low (Tansu's can be) only makes a batch flush early — smaller, never wrong;
    one that is high makes it wait out ``BATCH_MAX_MS`` as before.
    """

    def behind(positions: Mapping[tuple[str, int], int]) -> bool:
        consumer = app.consumer
        try:
            assigned = consumer.assignment()
        except Exception:
            return False
        for (topic, partition), position in positions.items():
            tp = faust.types.TP(topic, partition)
            if tp not in assigned:
                continue
            try:
                high = consumer.highwater(tp)
            except Exception:
                continue
            if high is not None and high > position:
                return True
        return False

    return behind


def _observe_lag(app: faust.App, metrics: ProcessorMetrics, batch: Batch) -> None:
    for (topic, partition), next_offset in batch.committable().items():
        try:
            high = app.consumer.highwater(faust.types.TP(topic, partition))
        except Exception:
            continue
        if high is not None:
            metrics.lag.labels(topic, str(partition)).set(max(0, high - next_offset))
