"""Step 7: signed checkpoints of tenant chain heads, published outside MongoDB.

After a batch is durable (Steps 5 and 6; :class:`CheckpointHeads`), each
tenant whose head advanced by at least
``every_events`` since its last checkpoint — or whose last checkpoint is older
than ``every_seconds`` — gets a new one: ``{tenant, seq, hash, time}`` signed
with Ed25519 and tagged with the signing key's ``key_id`` (so verifiers pick
the right key after a rotation), published to the checkpoints topic, which
keeps every checkpoint (key = tenant, acks=all), and stored in the
``checkpoints`` collection. The last checkpoint per tenant is kept in memory
per worker (a restart checkpoints at its first batch).
A failed checkpoint is logged and retried (timer or next batch); it never
blocks ingestion. A timer in the processor (:meth:`Checkpointer.idle`) also
checkpoints heads that moved and then stayed idle, so a tenant's *unsigned
tail* is at most ``every_seconds`` (+ the timer's period) old, not "until its
next batch" (see docs/chain.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pymongo.asynchronous.collection import AsyncCollection

from audit_events.chain import key_id, load_private_key, public_key_b64, sign_checkpoint
from audit_events.codec import canonical_json
from audit_events.connections import kafka_client_options
from audit_events.settings import AuditSettings, SettingsError
from audit_events.topic_admin import create_missing
from audit_events.topics import topic_spec
from stream_processor.chain import derive_head
from stream_processor.metrics import ProcessorMetrics
from stream_processor.records import Batch

log = logging.getLogger("auditstream.processor.checkpoints")
Publish = Callable[[bytes, bytes], Awaitable[None]]


def idle_period(every_seconds: float) -> float:
    """How often the processor's timer looks for idle heads to checkpoint."""
    return max(0.05, min(every_seconds / 2, 5.0))


def checkpoint_id(tenant: str, seq: int) -> str:
    return f"{tenant}:{seq:020d}"


class Checkpointer:
    def __init__(
        self,
        key: Ed25519PrivateKey,
        publish: Publish,
        collection: AsyncCollection[dict[str, Any]],
        *,
        every_events: int,
        every_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: ProcessorMetrics | None = None,
    ) -> None:
        self._key = key
        self._publish = publish
        self._coll = collection
        self._every_events = every_events
        self._every_seconds = every_seconds
        self._clock = clock
        self._now = now
        self._last: dict[str, tuple[int, float]] = {}
        # Heads stored since their tenant's last checkpoint: the timer signs them
        # once due, so an idle tenant's tail does not wait for its next batch.
        self._pending: dict[str, tuple[int, str]] = {}
        self._lock = asyncio.Lock()  # the batch path and the timer never sign at once
        # When each pending tenant's head first waited for a checkpoint (metrics).
        self._pending_since: dict[str, float] = {}
        self._metrics = metrics
        if metrics is not None:
            metrics.checkpoint_pending_age.set_function(self.pending_age)

    def due(self, tenant: str, seq: int, now: float) -> bool:
        """Pure policy: has ``tenant``'s head moved enough, or long enough ago?

        Due when the head moved past the last checkpoint by ``every_events``, or
        moved at all while the last checkpoint is ``every_seconds`` old (a
        tenant never checkpointed by this worker is due at once).
        """
        last_seq, last_at = self._last.get(tenant, (0, -math.inf))
        if seq <= last_seq:
            return False
        return seq - last_seq >= self._every_events or now - last_at >= self._every_seconds

    async def seed(self, heads: dict[str, tuple[int, str]]) -> int:
        """Adopt stored heads no checkpoint covers yet; returns how many.

        A worker that died between storing a batch and signing it left those
        heads unsigned, and its successor knows nothing of them until the
        tenant's next event. The processor's timer seeds every stored head once
        at start; those above the tenant's latest stored checkpoint are signed
        at the next tick (a tenant this worker never checkpointed is due at once).
        """
        signed: dict[str, int] = {}
        cursor = await self._coll.aggregate(
            [{"$group": {"_id": "$tenant", "seq": {"$max": "$seq"}}}]
        )
        async for row in cursor:
            if isinstance(row.get("_id"), str) and isinstance(row.get("seq"), int):
                signed[row["_id"]] = row["seq"]
        adopted = 0
        async with self._lock:
            for tenant, head in heads.items():
                done = max(signed.get(tenant, 0), self._last.get(tenant, (0, 0.0))[0])
                if head[0] > done and head[0] > self._pending.get(tenant, (0, ""))[0]:
                    self._pending[tenant] = head
                    self._pending_since.setdefault(tenant, self._clock())
                    adopted += 1
        return adopted

    def pending_age(self) -> float:
        """Seconds the oldest head without a checkpoint has waited (0: none waits).

        The processor exports it (``auditstream_checkpoint_pending_age_seconds``):
        above ``every_seconds`` plus the timer's period, checkpoints are failing.
        """
        waiting = list(self._pending_since.values())  # read from the metrics thread
        return max((self._clock() - since for since in waiting), default=0.0)

    def pending(self) -> dict[str, tuple[int, str]]:
        """Heads not checkpointed yet, by tenant (what :meth:`idle` looks at)."""
        return dict(self._pending)

    async def after_batch(self, heads: dict[str, tuple[int, str]]) -> int:
        """Checkpoint the due tenants of a stored batch; returns how many were made."""
        async with self._lock:
            for tenant, head in heads.items():
                if head[0] > self._last.get(tenant, (0, 0.0))[0]:
                    self._pending[tenant] = head
                    self._pending_since.setdefault(tenant, self._clock())
            return await self._checkpoint_due(sorted(heads))

    async def idle(self) -> int:
        """Checkpoint every pending head that became due; the processor calls it on a timer.

        A tenant whose head moved and then received nothing gets its checkpoint
        at most ``every_seconds`` after its previous one (plus the timer's
        period) instead of at its next batch: the unsigned tail is bounded in time.
        """
        async with self._lock:
            return await self._checkpoint_due(sorted(self._pending))

    async def _checkpoint_due(self, tenants: list[str]) -> int:
        made = 0
        for tenant in tenants:
            head = self._pending.get(tenant)
            if head is None:
                continue
            seq, hash_ = head
            now = self._clock()
            if not self.due(tenant, seq, now):
                continue
            cp = sign_checkpoint(self._key, tenant, seq, hash_, self._now())
            try:
                await self._publish(tenant.encode(), canonical_json(cp))
                await self._coll.replace_one({"_id": checkpoint_id(tenant, seq)}, cp, upsert=True)
            except Exception as exc:  # the timer or the next batch retries; ingestion goes on
                log.warning("checkpoint of %s at seq %d failed: %s", tenant, seq, exc)
                if self._metrics is not None:
                    self._metrics.checkpoint_failures.inc()
                continue
            self._last[tenant] = (seq, now)
            if self._pending.get(tenant, (0, ""))[0] <= seq:
                self._pending.pop(tenant, None)
                self._pending_since.pop(tenant, None)
            if self._metrics is not None:
                self._metrics.checkpoint_last_success.set(self._now().timestamp())
            made += 1
        return made


class CheckpointHeads:
    """Step 7 as the pipeline runs it, and the processor's idle-checkpoint timer.

    After each stored batch, the heads the write left (``batch.written.heads``)
    go to :meth:`Checkpointer.after_batch`, which signs the due ones. It never
    raises for a failed checkpoint (logged, retried by the timer or the next
    batch): ingestion never waits for a checkpoint.
    """

    def __init__(self, checkpointer: Checkpointer, events: AsyncCollection[dict[str, Any]]) -> None:
        self._checkpointer = checkpointer
        self._events = events
        self._seeded = False  # stored heads adopted by the checkpointer (first timer tick)

    async def __call__(self, batch: Batch) -> None:
        if batch.written is not None and batch.written.heads:
            await self._checkpointer.after_batch(dict(batch.written.heads))

    async def idle(self) -> int:
        """Checkpoint the heads that moved and then stayed idle (the processor's timer).

        The first call also adopts every stored head that no checkpoint covers
        (left unsigned by a worker that died), so those are signed too.
        """
        if not self._seeded:
            tenants = sorted(await self._events.distinct("tenant"))
            heads = {t: await derive_head(self._events, t) for t in tenants}
            adopted = await self._checkpointer.seed(heads)
            if adopted:
                log.info("%d stored chain heads had no checkpoint; signing them", adopted)
            self._seeded = True
        return await self._checkpointer.idle()


def require_signing_key(settings: AuditSettings) -> None:
    """Refuse to run a processor that would not sign checkpoints, unless allowed.

    Raises :class:`SettingsError` (one line) without a signing key (unless
    ``AUDITSTREAM_ALLOW_UNSIGNED_CHAINS=true``), with a key that is not an
    Ed25519 private key, or when ``AUDITSTREAM_CHECKPOINT_PUBLIC_KEY`` is set to
    another key than the signing key's (verifiers would reject every checkpoint).
    """
    if settings.checkpoint_signing_key is None:
        if not settings.allow_unsigned_chains:
            raise SettingsError(
                "missing setting AUDITSTREAM_CHECKPOINT_SIGNING_KEY: the processor signs chain"
                " checkpoints with it (generate one with `auditstream keys generate`), or set"
                " AUDITSTREAM_ALLOW_UNSIGNED_CHAINS=true to run without signed checkpoints"
            )
        log.warning(
            "running without signed checkpoints (AUDITSTREAM_ALLOW_UNSIGNED_CHAINS=true):"
            " a truncated or rewritten store cannot be detected"
        )
        return
    try:
        key = load_private_key(settings.checkpoint_signing_key.get_secret_value())
    except ValueError:
        raise SettingsError(
            "invalid setting AUDITSTREAM_CHECKPOINT_SIGNING_KEY: not base64 of a raw 32-byte"
            " Ed25519 private key (`auditstream keys generate`)"
        ) from None
    public = public_key_b64(key)
    if settings.checkpoint_public_key and settings.checkpoint_public_key != public:
        raise SettingsError(
            "invalid setting AUDITSTREAM_CHECKPOINT_PUBLIC_KEY: it is not the public key of"
            f" AUDITSTREAM_CHECKPOINT_SIGNING_KEY (key id {key_id(public)}); verifiers would"
            " reject every new checkpoint"
        )


async def ensure_checkpoint_topic(settings: AuditSettings) -> None:
    """Create the checkpoints topic if missing, from the core's topic specification.

    It keeps every checkpoint (``cleanup.policy=delete``, infinite retention):
    compaction by tenant would drop the older ones.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, **kafka_client_options(settings)
    )
    await admin.start()
    try:
        await create_missing(admin, [topic_spec(settings, "checkpoints")])
    finally:
        await admin.close()
