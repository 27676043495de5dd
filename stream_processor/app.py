"""Faust adapter: topic, agent, wiring. Everything else lives in the pipeline.

Why ``noack_take``: Faust's ``take()`` acks the buffered events in a
``finally:`` even when the body raised, and a crashed agent is restarted past
them, so their offsets would be committed unstored. ``noack_take`` leaves
acking to us: events are acked only after :meth:`BatchProcessor.process`
returned, i.e. after the batch is durable in MongoDB and its cache generations
were bumped. If a batch cannot be stored before the retry deadline the process
exits hard (``os._exit``) so no ``finally`` anywhere can ack or commit it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import faust
from pymongo import AsyncMongoClient
from pymongo.write_concern import WriteConcern
from redis.asyncio import Redis

from audit_events.schema import Limits
from audit_events.settings import AuditSettings
from stream_processor.metrics import ProcessorMetrics
from stream_processor.pipeline import BatchFailed, BatchProcessor
from stream_processor.records import Record
from stream_processor.retry import RetryPolicy
from stream_processor.sinks import MongoStore, RedisInvalidator, dead_letter_value
from stream_processor.store import ensure_indexes, events_collection

log = logging.getLogger("auditstream.processor")
EXIT_BATCH_FAILED = 75  # EX_TEMPFAIL: the supervisor restarts us; nothing was committed


class FaustDeadLetters:
    def __init__(self, topic: Any) -> None:
        self._topic = topic

    async def send(self, record: Record, reason: str) -> None:
        fut = await self._topic.send(key=record.key, value=dead_letter_value(record, reason))
        await fut  # wait for the broker's acknowledgement (acks=all)


def create_app(settings: AuditSettings, metrics: ProcessorMetrics | None = None) -> faust.App:
    """Build the Faust app. Clients are opened in the worker's start-up hook."""
    settings.require("kafka_bootstrap", "mongo_uri", "redis_url")
    metrics = metrics or ProcessorMetrics()
    app = faust.App(
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
    )
    events = app.topic(
        settings.topic_events,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    dlq = app.topic(
        settings.topic_dlq,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    state: dict[str, Any] = {}

    async def open_clients() -> BatchProcessor:
        wc = WriteConcern(
            w="majority" if settings.mongo_write_concern == "majority" else 1,
            j=settings.mongo_journal,
        )
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
        collection = events_collection(mongo, settings).with_options(write_concern=wc)
        await ensure_indexes(collection)
        redis = Redis.from_url(settings.redis_url or "", socket_timeout=2.0)
        state["mongo"], state["redis"] = mongo, redis
        return BatchProcessor(
            MongoStore(collection),
            RedisInvalidator(redis),
            FaustDeadLetters(dlq),
            limits=Limits(settings.max_metadata_bytes, settings.max_metadata_depth),
            max_event_bytes=settings.max_event_bytes,
            retry=RetryPolicy(give_up_after=settings.write_retry_seconds),
            metrics=metrics,
        )

    @app.agent(events)
    async def ingest(stream: Any) -> None:
        # One actor (no concurrency>1): that would commit past in-flight events.
        if "processor" not in state:
            state["processor"] = await open_clients()
        processor: BatchProcessor = state["processor"]
        async for chunk in stream.noack_take(
            settings.batch_max_events, within=settings.batch_max_ms / 1000
        ):
            records = [_record(ev) for ev in chunk]
            try:
                await processor.process(records)
            except BatchFailed as exc:
                _exit_without_commit(f"giving up on a batch: {exc}")
            except Exception:
                # A bug, not an outage. Faust would restart the agent *past* these
                # unacked events; exiting makes the group redeliver them instead.
                log.exception("unexpected error in a batch")
                _exit_without_commit("unexpected error")
            for ev in chunk:
                await stream.ack(ev)
            _observe_lag(app, metrics, records)

    return app


def _exit_without_commit(why: str) -> None:
    log.critical("%s; exiting without acking or committing the batch", why)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_BATCH_FAILED)


def _record(event: Any) -> Record:
    msg = event.message
    return Record(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        timestamp_ms=int(msg.timestamp * 1000),
        key=msg.key,
        value=msg.value,
    )


def _observe_lag(app: faust.App, metrics: ProcessorMetrics, records: list[Record]) -> None:
    last: dict[tuple[str, int], int] = {}
    for r in records:
        last[(r.topic, r.partition)] = r.offset
    for (topic, partition), offset in last.items():
        try:
            high = app.consumer.highwater(faust.types.TP(topic, partition))
        except Exception:
            continue
        if high is not None:
            metrics.lag.labels(topic, str(partition)).set(max(0, high - offset - 1))
