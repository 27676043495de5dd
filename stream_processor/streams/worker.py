"""The stream worker (``auditstream streamer``).

Reads the tenant's *stored* events from MongoDB in ``seq`` order rather than
the Kafka topic: the store knows erasures (tombstones, no payload) and holds
corrections as their own events in the chain, and a destination's committed
position is simply the last seq it has been given — in order per tenant,
independent of partitions and of every other destination. Ingestion never
waits for a destination: the processor does not know streams exist.

One asyncio task per destination: a slow or dead destination only delays its
own position. A destination is delivered by one worker at a time (a lease in
its document, renewed every batch); several workers share destinations.
At least once: the position advances only after the destination accepted the
batch (2xx); a worker killed between the two re-delivers that batch (receivers
deduplicate on ``idempotency_key`` = event id). A batch failing longer than
AUDITSTREAM_STREAMS_DEAD_LETTER_AFTER_SECONDS (retries: exponential backoff,
full jitter) goes to the destination's dead-letter list, and the position moves
on; ``auditstream streams redrive`` delivers those later.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from audit_events.objectstore import ObjectStore, ObjectStoreError, S3Location
from audit_events.settings import AuditSettings, mongo_client_options
from audit_events.storage import EVENTS_COLLECTION
from audit_events.stream_secrets import StreamSecrets
from audit_events.streams import (
    STREAM_DEAD_LETTERS_COLLECTION,
    STREAMS_COLLECTION,
    matches,
    s3_target,
    stream_lag,
    streamed_event,
)
from stream_processor.health import Heartbeat, ProbeServer
from stream_processor.streams.formats import (
    NDJSON_CONTENT_TYPE,
    build_request,
    ndjson_body,
    s3_key,
    syslog_frames,
)
from stream_processor.streams.metrics import StreamMetrics

log = logging.getLogger("auditstream.streamer")
MAX_ERROR = 500
LAG_EVERY = 1.0  # seconds between lag measurements of a destination that is busy
SCHEDULE_DEADLINE = 60.0  # one scheduling step, MongoDB's server selection included
CONFIG_EVERY = 1.0  # seconds between re-reads of a busy destination's configuration
REDRIVE_CLAIM_SECONDS = 60.0  # a redrive's claim of a dead-letter batch (at least)


def backoff(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 30)))


def tls_context(settings: AuditSettings) -> ssl.SSLContext:
    """System CAs plus AUDITSTREAM_STREAMS_CA_FILE; hostnames always checked."""
    ctx = ssl.create_default_context()
    if settings.streams_ca_file:
        ctx.load_verify_locations(settings.streams_ca_file)
    return ctx


def http_client(settings: AuditSettings, ctx: ssl.SSLContext) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=ctx,
        timeout=settings.streams_timeout_seconds,
        follow_redirects=False,
    )


async def send_syslog(
    dest: dict[str, Any], events: list[dict[str, Any]], ctx: ssl.SSLContext, timeout: float
) -> str | None:
    """Write the batch over a TLS connection; "delivered" once the bytes are flushed.

    Syslog has no application acknowledgement: a receiver that dies after
    accepting the bytes may lose them (unlike HTTP's 2xx).
    """
    parts = urlsplit(dest["url"])
    writer = None
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(
                parts.hostname, parts.port, ssl=ctx, server_hostname=parts.hostname
            )
            writer.write(syslog_frames(dest, events))
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        return None
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        return f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
    finally:
        if writer is not None and not writer.is_closing():
            writer.close()


@functools.lru_cache(maxsize=256)
def _s3_store(
    url: str, region: str | None, key_id: str, secret: str, timeout: float
) -> ObjectStore:
    """One client per destination configuration (a PUT changing any of them gets a new one)."""
    target = s3_target(url)
    return ObjectStore(
        S3Location(
            bucket=target.bucket,
            prefix=target.prefix,
            endpoint=target.endpoint,
            region=region or "us-east-1",
            access_key_id=key_id,
            secret_access_key=secret,
            timeout_seconds=timeout,
            max_retries=0,  # the worker retries (backoff, jitter, dead letters)
        )
    )


async def send_s3(dest: dict[str, Any], events: list[dict[str, Any]], timeout: float) -> str | None:
    """PUT the batch as one NDJSON object; "delivered" once the store acknowledged it.

    Same key for the same batch: a batch delivered again (a worker killed before
    saving its position, a redrive) replaces its own object rather than adding one.
    """
    try:
        store = _s3_store(
            str(dest["url"]),
            dest.get("region"),
            str(dest.get("access_key_id") or ""),
            str(dest.get("secret") or ""),
            timeout,
        )
        await store.put(s3_key(dest, events), ndjson_body(events), content_type=NDJSON_CONTENT_TYPE)
    except (ObjectStoreError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
    return None


async def send(
    client: httpx.AsyncClient,
    ctx: ssl.SSLContext,
    dest: dict[str, Any],
    events: list[dict[str, Any]],
    timeout: float,
) -> str | None:
    """Deliver one batch once; None on a 2xx (syslog: bytes flushed), else why it failed."""
    if dest["kind"] == "syslog":
        return await send_syslog(dest, events, ctx, timeout)
    if dest["kind"] == "s3":
        return await send_s3(dest, events, timeout)
    headers, body = build_request(dest, events, datetime.now(UTC))
    try:
        resp = await client.post(dest["url"], content=body, headers=headers)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
    if 200 <= resp.status_code < 300:
        return None
    return f"HTTP {resp.status_code}: {resp.text[:200]}"[:MAX_ERROR]


class Streamer:
    def __init__(self, settings: AuditSettings, metrics: StreamMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or StreamMetrics()
        self.owner = f"{uuid.uuid4().hex[:12]}"
        # Destination secrets are stored encrypted; they are opened in memory only.
        self.box = StreamSecrets.from_settings(settings)
        # /healthz: the scheduling loop steps every poll interval; one step (find the
        # destinations, take leases) is bounded by MongoDB's timeouts, hence the deadline.
        self.heartbeat = Heartbeat(settings.processor_liveness_seconds, SCHEDULE_DEADLINE)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lag_at: dict[str, float] = {}

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        settings = self.settings
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_uri, **mongo_client_options(settings), tz_aware=True
        )
        db = mongo[settings.mongo_db]
        self.db = db
        self.streams = db[STREAMS_COLLECTION]
        self.dead = db[STREAM_DEAD_LETTERS_COLLECTION]
        self.events = db[EVENTS_COLLECTION]
        self.tls = tls_context(settings)
        self.client = http_client(settings, self.tls)
        log.info("streamer %s started", self.owner)
        try:
            while not stop.is_set():
                self.heartbeat.flush_started()
                try:
                    await self._schedule(stop)
                except PyMongoError as exc:
                    log.warning("store unavailable: %s", exc)
                finally:
                    self.heartbeat.flush_done()
                await _wait(stop, settings.streams_poll_seconds)
        finally:
            for task in self._tasks.values():
                task.cancel()
            for task in self._tasks.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._release_all()
            await self.client.aclose()
            await mongo.close()

    async def ready(self) -> dict[str, bool]:
        """/readyz: the worker runs and MongoDB (its only store) answers."""
        db = getattr(self, "db", None)
        if db is None:
            return {"worker": False}
        try:
            await asyncio.wait_for(db.command("ping"), 1.5)
        except (PyMongoError, TimeoutError):
            return {"worker": True, "mongodb": False}
        return {"worker": True, "mongodb": True}

    async def _release_all(self) -> None:
        with contextlib.suppress(PyMongoError):
            await self.streams.update_many(
                {"lease.owner": self.owner}, {"$set": {"lease.until": datetime.now(UTC)}}
            )

    async def _schedule(self, stop: asyncio.Event) -> None:
        """Start a task for each enabled destination whose lease this worker gets."""
        for sid, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[sid]
        docs = await self.streams.find({"enabled": True}, {"_id": 1}).to_list(None)
        for doc in docs:
            sid = doc["_id"]
            if sid not in self._tasks and await self._lease(sid):
                self._tasks[sid] = asyncio.create_task(self._deliver_loop(sid, stop))

    async def _lease(self, sid: str) -> bool:
        now = datetime.now(UTC)
        until = now + timedelta(seconds=self.settings.streams_lease_seconds)
        got = await self.streams.find_one_and_update(
            {
                "_id": sid,
                "enabled": True,
                "$or": [
                    {"lease": {"$exists": False}},
                    {"lease.owner": self.owner},
                    {"lease.until": {"$lt": now}},
                ],
            },
            {"$set": {"lease": {"owner": self.owner, "until": until}}},
            projection={"_id": 1},
        )
        return got is not None

    async def _deliver_loop(self, sid: str, stop: asyncio.Event) -> None:
        renewed = time.monotonic()  # _schedule just took the lease
        dest: dict[str, Any] | None = None
        loaded = 0.0
        while not stop.is_set():
            try:
                # Renew once half the lease is gone (not every batch: one store call less).
                if time.monotonic() - renewed > self.settings.streams_lease_seconds / 2:
                    if not await self._lease(sid):
                        return  # deleted, disabled, or another worker holds it
                    renewed = time.monotonic()
                # The configuration is re-read at most every CONFIG_EVERY seconds
                # (a PUT applies within that), and after any surprise.
                if dest is None or dest.get("_stale") or time.monotonic() - loaded >= CONFIG_EVERY:
                    dest = await self.streams.find_one({"_id": sid})
                    loaded = time.monotonic()
                    if dest is None or not dest.get("enabled", True):
                        return
                    if (dest.get("lease") or {}).get("owner") != self.owner:
                        return  # taken over after this worker's lease expired
                    await self._drop_expired_secret(dest)
                    dest = self.box.opened(dest)  # SecretKeyError: recorded as last_error
                moved = await self._step(dest, stop)
            except PyMongoError as exc:
                log.warning("stream %s: store unavailable: %s", sid, exc)
                moved = False
            except Exception as exc:  # a destination the worker cannot handle: say so, go on
                log.exception("stream %s: cannot deliver", sid)
                with contextlib.suppress(PyMongoError):
                    await self.streams.update_one(
                        {"_id": sid},
                        {
                            "$set": {
                                "last_error": f"{type(exc).__name__}: {exc}"[:MAX_ERROR],
                                "last_error_at": datetime.now(UTC),
                            }
                        },
                    )
                await _wait(stop, max(self.settings.streams_retry_max_seconds / 2, 1.0))
                dest = None
                moved = False
            if not moved:
                await _wait(stop, self.settings.streams_poll_seconds)

    async def _drop_expired_secret(self, dest: dict[str, Any]) -> None:
        """A rotated-out secret is not kept once its overlap is over."""
        until = dest.get("previous_secret_until")
        if "previous_secret" not in dest or not isinstance(until, datetime):
            return
        if until.tzinfo is None:
            until = until.replace(tzinfo=UTC)
        if until <= datetime.now(UTC):
            await self.streams.update_one(
                {"_id": dest["_id"], "previous_secret_until": dest["previous_secret_until"]},
                {"$unset": {"previous_secret": "", "previous_secret_until": ""}},
            )
            dest.pop("previous_secret", None)

    def _labels(self, dest: dict[str, Any]) -> tuple[str, str, str]:
        return (str(dest["_id"]), str(dest["tenant"]), str(dest["kind"]))

    async def _lag(self, dest: dict[str, Any], position: int) -> None:
        lag, seconds = await stream_lag(self.events, dest["tenant"], position)
        labels = self._labels(dest)
        self.metrics.lag_events.labels(*labels).set(lag)
        self.metrics.lag_seconds.labels(*labels).set(seconds)

    async def _step(self, dest: dict[str, Any], stop: asyncio.Event) -> bool:
        """Deliver the next batch; True when the position moved."""
        position = int(dest.get("position", 0))
        docs = (
            await self.events.find({"tenant": dest["tenant"], "seq": {"$gt": position}})
            .sort("seq", 1)
            .limit(int(dest.get("batch_size", 100)))
            .to_list(None)
        )
        if not docs:  # caught up
            self.metrics.lag_events.labels(*self._labels(dest)).set(0)
            self.metrics.lag_seconds.labels(*self._labels(dest)).set(0)
            return False
        now_m = time.monotonic()
        if now_m - self._lag_at.get(dest["_id"], 0.0) >= LAG_EVERY:
            self._lag_at[dest["_id"]] = now_m
            await self._lag(dest, position)
        last = int(docs[-1]["seq"])
        events = [streamed_event(d) for d in docs if matches(dest.get("filters"), d)]
        delivered = dead = 0
        if events:
            error = await self._deliver(dest, events, stop)
            if error is None:
                delivered = len(events)
            elif error == "stopped":
                dest["_stale"] = True
                return False
            else:
                dead = len(events)
                await self.dead.insert_one(
                    {
                        "stream_id": dest["_id"],
                        "tenant": dest["tenant"],
                        "first_seq": events[0]["seq"],
                        "last_seq": events[-1]["seq"],
                        "count": len(events),  # the events stay in the store, not here:
                        "error": error,  # redrive re-reads them (an erasure since applies)
                        "at": datetime.now(UTC),
                    }
                )
                self.metrics.dead_lettered.labels(*self._labels(dest)).inc(dead)
                log.warning(
                    "stream %s: batch up to seq %d dead-lettered: %s", dest["_id"], last, error
                )
        now = datetime.now(UTC)
        update: dict[str, Any] = {"$set": {"position": last}, "$inc": {}}
        if delivered:
            update["$set"]["last_success_at"] = now
            update["$inc"]["delivered"] = delivered
        if dead:
            update["$inc"]["dead_lettered"] = dead
        if not update["$inc"]:
            del update["$inc"]
        # Only while this worker holds the lease and nobody moved the position.
        result = await self.streams.update_one(
            {"_id": dest["_id"], "lease.owner": self.owner, "position": position}, update
        )
        if result.matched_count:
            dest["position"] = last
        else:  # lease lost, or the position moved under us: re-read before going on
            dest["_stale"] = True
            if dead and not await self.streams.count_documents({"_id": dest["_id"]}, limit=1):
                # deleted (DELETE removes its dead letters) while this batch was failing
                await self.dead.delete_many({"stream_id": dest["_id"]})
        if delivered:
            labels = self._labels(dest)
            self.metrics.delivered.labels(*labels).inc(delivered)
            self.metrics.batches.labels(*labels).inc()
            self.metrics.last_success.labels(*labels).set(now.timestamp())
        return True

    async def _deliver(
        self, dest: dict[str, Any], events: list[dict[str, Any]], stop: asyncio.Event
    ) -> str | None:
        """Deliver with retries; None when delivered, "stopped", or the last error."""
        settings = self.settings
        started = time.monotonic()
        attempt = 0
        while True:
            error = await send(
                self.client, self.tls, dest, events, settings.streams_timeout_seconds
            )
            if error is None:
                return None
            self.metrics.failures.labels(*self._labels(dest)).inc()
            with contextlib.suppress(PyMongoError):
                await self.streams.update_one(
                    {"_id": dest["_id"]},
                    {"$set": {"last_error": error, "last_error_at": datetime.now(UTC)}},
                )
            if time.monotonic() - started >= settings.streams_dead_letter_after_seconds:
                return error
            delay = backoff(
                attempt, settings.streams_retry_base_seconds, settings.streams_retry_max_seconds
            )
            attempt += 1
            if await _wait(stop, delay):
                return "stopped"
            if not await self._lease(dest["_id"]):
                return "stopped"
            fresh = await self.streams.find_one({"_id": dest["_id"]})
            if fresh is None or int(fresh.get("position", 0)) != int(dest.get("position", 0)):
                return "stopped"
            dest = self.box.opened(fresh)  # a PUT (new URL, secret) applies to the next attempt


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop``; True when stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def redrive(settings: AuditSettings, stream_id: str) -> tuple[int, int, str | None]:
    """Deliver a destination's dead-letter batches oldest first, once each.

    Each batch is read again from the store by its seq range (with the
    destination's current filters), so an event erased meanwhile goes out as a
    tombstone, never with its payload.

    Returns (batches delivered, events delivered, first error). A delivered
    batch leaves the list; the first failure stops (the rest stay, in order).
    Redrives of one destination at once share the list: each batch is claimed
    by one of them (REDRIVE_CLAIM_SECONDS at least), delivered and counted once.
    """
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_uri, **mongo_client_options(settings), tz_aware=True
    )
    db = mongo[settings.mongo_db]
    streams: AsyncCollection[dict[str, Any]] = db[STREAMS_COLLECTION]
    dead: AsyncCollection[dict[str, Any]] = db[STREAM_DEAD_LETTERS_COLLECTION]
    batches = events = 0
    try:
        dest = await streams.find_one({"_id": stream_id})
        if dest is None:
            return 0, 0, f"no stream {stream_id!r}"
        dest = StreamSecrets.from_settings(settings).opened(dest)
        ctx = tls_context(settings)
        me = uuid.uuid4().hex
        claim_seconds = max(REDRIVE_CLAIM_SECONDS, 4 * settings.streams_timeout_seconds)
        async with http_client(settings, ctx) as client:
            async for item in dead.find({"stream_id": stream_id}).sort([("at", 1), ("_id", 1)]):
                # One redrive at a time delivers a batch: claim it (a claim of a redrive
                # that died expires), skip it when another redrive holds it or took it.
                now = datetime.now(UTC)
                claimed = await dead.find_one_and_update(
                    {
                        "_id": item["_id"],
                        "$or": [
                            {"redrive": {"$exists": False}},
                            {"redrive.until": {"$lt": now}},
                        ],
                    },
                    {
                        "$set": {
                            "redrive": {
                                "by": me,
                                "until": now + timedelta(seconds=claim_seconds),
                            }
                        }
                    },
                    projection={"_id": 1},
                )
                if claimed is None:
                    continue
                # Read back from the store: an event erased since goes out as a tombstone.
                docs = (
                    await db[EVENTS_COLLECTION]
                    .find(
                        {
                            "tenant": dest["tenant"],
                            "seq": {"$gte": item["first_seq"], "$lte": item["last_seq"]},
                        }
                    )
                    .sort("seq", 1)
                    .to_list(None)
                )
                batch = [streamed_event(d) for d in docs if matches(dest.get("filters"), d)]
                if batch:
                    error = await send(client, ctx, dest, batch, settings.streams_timeout_seconds)
                    if error is not None:
                        await dead.update_one(
                            {"_id": item["_id"], "redrive.by": me}, {"$unset": {"redrive": ""}}
                        )
                        return batches, events, error
                taken = await dead.delete_one({"_id": item["_id"], "redrive.by": me})
                if not taken.deleted_count:  # held so long that another redrive took it
                    continue
                await streams.update_one(
                    {"_id": stream_id},
                    {
                        "$inc": {"delivered": len(batch)},
                        "$set": {"last_success_at": datetime.now(UTC)},
                    },
                )
                batches += 1
                events += len(batch)
        return batches, events, None
    finally:
        await mongo.close()


def run_streamer(settings: AuditSettings) -> None:
    """``auditstream streamer``: run until SIGINT/SIGTERM."""
    import signal

    settings.require("mongo_uri")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s streamer %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    streamer = Streamer(settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        probes = None
        if settings.streamer_metrics_port:
            # /metrics, /healthz (the scheduling loop steps) and /readyz (MongoDB
            # answers) on AUDITSTREAM_STREAMER_METRICS_PORT, as the processor's.
            probes = ProbeServer(
                settings.processor_metrics_host,
                settings.streamer_metrics_port,
                streamer.metrics.registry,
                streamer.heartbeat,
                ready=streamer.ready,
                loop=loop,
            ).start()
        try:
            await streamer.run(stop)
        finally:
            if probes is not None:
                probes.stop()

    asyncio.run(main())
