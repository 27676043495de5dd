"""Phases 3-6 of ``auditstream replay``: verify, fence, check coverage, swap or refuse.

The rebuilt collection replaces the live one only when it holds everything the
live one holds (stream_processor/replay/__init__.py describes the phases); the
catch-up under the fence is the rebuild's own (passed in as ``catch_up``), so
this module knows nothing of Kafka beyond where a tenant's events sit in the
topic (for the refusal line).

After a swap every tenant's read cache is invalidated (:func:`invalidate_cache`):
the API's cached answers (a 404 or 410, a page, an object's history) describe the
replaced store, and no stored batch would bump their generations.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from audit_events.cache_keys import READ_AUDIT_PREFIX, cache_namespace
from audit_events.chain import GENESIS, Report, checkpoint_keys, verify_chain
from audit_events.settings import AuditSettings
from audit_events.storage import CHECKPOINTS_COLLECTION, EVENTS_COLLECTION, REPLAY_COLLECTION
from stream_processor.chain import derive_head
from stream_processor.fence import FENCE_ID
from stream_processor.replay.result import STATE_ID, ReplayResult
from stream_processor.replay.source import TopicSource
from stream_processor.sinks import Invalidator, RedisInvalidator

log = logging.getLogger("auditstream.replay")
_BUMP_CHUNK = 1000  # scopes per pipelined round trip


class Swap:
    """Swaps ``target`` (the rebuilt ``events_replay``) in for the live ``events``, if complete."""

    def __init__(
        self,
        settings: AuditSettings,
        client: AsyncMongoClient[dict[str, Any]],
        db: AsyncDatabase[dict[str, Any]],
        state: AsyncCollection[dict[str, Any]],
        target: AsyncCollection[dict[str, Any]],
        *,
        grace_seconds: float,
        fence_seconds: float,
    ) -> None:
        self._settings = settings
        self._client = client
        self._db = db
        self._state = state
        self._target = target
        self._grace = grace_seconds
        self._fence_seconds = fence_seconds

    async def run(
        self,
        source: TopicSource,
        catch_up: Callable[[], Awaitable[None]],
        topic: dict[int, tuple[int, int]],
        result: ReplayResult,
    ) -> None:
        """Phases 3-6: verify, fence, catch up, check coverage, then swap or refuse."""
        live, target, state = self._db[EVENTS_COLLECTION], self._target, self._state
        # The bulk of the verification runs while live writers go on; ``to_end`` waits
        # for the fence (a live checkpoint may sign events the rebuild has not reached).
        reports = {t: await self._verify(target, t, None) for t in await _tenants(target)}
        refusal = _broken(reports)
        if refusal is None:
            fenced_until = await self._fence(up=True)
            fenced_at = mark = time.perf_counter()

            def lap(phase: str) -> None:
                nonlocal mark
                now = time.perf_counter()
                result.fence_phases[phase] = round(now - mark, 3)
                mark = now

            try:
                await asyncio.sleep(self._grace)
                lap("grace")
                await catch_up()
                lap("catch-up")
                result.live_count = await live.count_documents({})
                result.replay_count = await target.count_documents({})
                refusal = await self._coverage(live, target, source, topic)
                lap("coverage")
                if refusal is None:
                    for tenant in await _tenants(target):
                        reports[tenant] = await self._verify(target, tenant, reports.get(tenant))
                    refusal = _broken(reports)
                    lap("verify tail")
                if refusal is None and fenced_until and datetime.now(UTC) >= fenced_until:
                    refusal = (
                        f"the checks outlasted the {self._fence_seconds:.0f} s fence, "
                        "so live writers may have resumed"
                    )
                if refusal is None:
                    await self._fence(up=True, bump=False)  # a full deadline for the rename
                    await self._client.admin.command(
                        "renameCollection",
                        f"{self._settings.mongo_db}.{REPLAY_COLLECTION}",
                        to=f"{self._settings.mongo_db}.{EVENTS_COLLECTION}",
                        dropTarget=True,
                    )
                    lap("rename")
                    result.swapped = True
            finally:
                await self._fence(up=False)
                result.fenced_seconds = time.perf_counter() - fenced_at
            if result.swapped:
                await self._invalidate(live)
        result.reports = [reports[t] for t in sorted(reports)]
        if refusal is not None:
            result.refusal = (
                f"replay refused: {refusal}; live store untouched, "
                f"rebuilt copy kept in {REPLAY_COLLECTION}"
            )
        phase = "done" if result.swapped else "refused"
        await state.update_one(
            {"_id": STATE_ID}, {"$set": {"phase": phase, "refusal": result.refusal}}
        )

    async def _invalidate(self, events: AsyncCollection[dict[str, Any]]) -> None:
        """Bump every tenant's cache generations (best effort: Redis down, cached
        entries expire by their TTL)."""
        s = self._settings
        if not s.redis_url:
            return
        from redis.asyncio import Redis

        from audit_events.connections import redis_tls_options

        redis = Redis.from_url(s.redis_url, socket_timeout=5.0, **redis_tls_options(s))
        try:
            invalidator = RedisInvalidator(redis, s.cache_ttl_seconds, namespace=cache_namespace(s))
            await invalidate_cache(events, invalidator)
        except Exception as exc:
            log.warning("replay: cache invalidation after the swap failed (%s)", exc)
        finally:
            await redis.aclose()

    async def _coverage(
        self,
        live: AsyncCollection[dict[str, Any]],
        target: AsyncCollection[dict[str, Any]],
        source: TopicSource,
        topic: dict[int, tuple[int, int]],
    ) -> str | None:
        """What the rebuilt store lacks of the live one (compared by tenant, seq, hash)."""
        short: list[str] = []
        for tenant in await _tenants(live):
            live_seq, live_hash = await derive_head(live, tenant)
            stored = await live.count_documents({"tenant": tenant})
            rebuilt = await target.count_documents({"tenant": tenant})
            at_head = (
                await target.find_one({"tenant": tenant, "seq": live_seq}, {"hash": 1})
                if live_seq
                else None
            )
            where = _where(tenant, source, topic)
            if (live_seq and at_head is None) or rebuilt < stored:
                short.append(
                    f"tenant {tenant} has {stored} stored events, the topic rebuilt {rebuilt}"
                    + (f" ({where})" if where else "")
                )
            elif live_seq and at_head is not None and at_head.get("hash") != live_hash:
                short.append(
                    f"tenant {tenant}'s rebuilt chain differs from the stored one at seq "
                    f"{live_seq}" + (f" ({where})" if where else "")
                )
        if not short:
            return None
        rest = len(short) - 3
        missing = "" if source.tps else f"; topic {source.topic} does not exist"
        return "; ".join(short[:3]) + (f"; and {rest} more tenants" if rest > 0 else "") + missing

    async def _fence(self, *, up: bool, bump: bool = True) -> datetime | None:
        """Raise (``up``) or lift the fence live writers check (stream_processor/fence.py)."""
        until = datetime.now(UTC) + timedelta(seconds=self._fence_seconds) if up else None
        await self._state.update_one(
            {"_id": FENCE_ID},
            {"$set": {"until": until}, "$inc": {"generation": 1 if bump else 0}},
            upsert=True,
        )
        return until

    async def _verify(
        self, events: AsyncCollection[dict[str, Any]], tenant: str, before: Report | None
    ) -> Report:
        """Verify ``tenant``'s chain in ``events``: all of it (``before`` is None,
        not to the end) or, under the fence, on from where ``before`` stopped to
        the end (every signed checkpoint reached)."""
        key = checkpoint_keys(self._settings)  # current + retired, by key id
        checkpoints = events.database[CHECKPOINTS_COLLECTION]
        cps = [c async for c in checkpoints.find({"tenant": tenant})]
        start, prev = (before.head_seq + 1, before.head_hash) if before else (1, GENESIS)
        cursor = events.find({"tenant": tenant, "seq": {"$gte": start}}).sort(
            [("seq", 1), ("_id", 1)]
        )
        docs = aiter(cursor.batch_size(1000))
        if before is None:
            return await verify_chain(tenant, docs, cps, key, to_end=False)
        if not before.ok:
            return before
        tail = await verify_chain(tenant, docs, cps, key, start_seq=start, prev_hash=prev)
        if tail.checked == 0 and tail.ok:
            tail.head_seq, tail.head_hash = before.head_seq, before.head_hash
        tail.checked += before.checked
        tail.erased += before.erased
        tail.corrected += before.corrected
        return tail


def _where(tenant: str, source: TopicSource, topic: dict[int, tuple[int, int]]) -> str:
    """Where ``tenant``'s events live in the topic, as far as the broker says."""
    partition = source.partition_of(tenant)
    if partition is None:
        return ""  # no topic: said once, after every tenant
    first, end = topic.get(partition, (0, 0))
    return f"topic {source.topic} starts at offset {first} of partition {partition}, ends at {end}"


async def invalidate_cache(
    events: AsyncCollection[dict[str, Any]], invalidator: Invalidator
) -> int:
    """Bump, through ``invalidator`` (the processor's own key builders), every cache
    scope of the swapped-in ``events``: each tenant's, its read-audit scope, and each
    (tenant, target) of its events. Returns how many scope documents were bumped."""
    scopes: list[dict[str, Any]] = []
    for tenant in await _tenants(events):
        scopes.append({"tenant": tenant, "targets": []})  # the tenant's generation
        scopes.append({"tenant": tenant, "action": READ_AUDIT_PREFIX, "targets": []})
    seen: set[tuple[str, str, str]] = set()
    async for doc in events.find({}, {"tenant": 1, "targets": 1}).batch_size(5000):
        for target in doc.get("targets") or ():
            key = (str(doc["tenant"]), str(target.get("type")), str(target.get("id")))
            if key not in seen:
                seen.add(key)
                scopes.append({"tenant": key[0], "targets": [{"type": key[1], "id": key[2]}]})
    for i in range(0, len(scopes), _BUMP_CHUNK):
        await invalidator.bump(scopes[i : i + _BUMP_CHUNK])
    return len(scopes)


async def _tenants(events: AsyncCollection[dict[str, Any]]) -> list[str]:
    return sorted(await events.distinct("tenant"))


def _broken(reports: dict[str, Report]) -> str | None:
    """The first tenant whose rebuilt chain does not verify, as a clause."""
    for tenant in sorted(reports):
        r = reports[tenant]
        if not r.ok:
            return (
                f"tenant {tenant}'s rebuilt chain does not verify at seq {r.first_bad_seq}: "
                f"{r.reason} ({r.detail})"
            )
    return None
