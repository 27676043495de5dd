"""Wake ``?wait=true`` requests when the processor announces a stored batch.

One pattern subscription per API process (``audit_events.notify``) feeds
per-tenant wake-ups. A waiter registers *before* its first look at the store,
so an announcement between that look and its wait is never missed. Redis is
only a hint: every wait also looks again after ``fallback_seconds`` (shorter
while the subscription is down), so correctness never depends on pub/sub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from audit_events.notify import STORED_PATTERN, tenant_of

log = logging.getLogger("auditstream.api.waits")


class StoredWaits:
    fallback_seconds = 1.0  # a look at the store even without an announcement
    fallback_down_seconds = 0.25  # while the subscription is down
    retry_seconds = 1.0

    def __init__(self, redis: Redis | None) -> None:
        self._redis = redis
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.subscribed = False
        self._stopping = False

    def start(self) -> None:
        if self._redis is not None and self._task is None:
            self._task = asyncio.create_task(self._listen(), name="stored-waits")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        task.cancel()
        # redis-py can turn a cancellation inside a read into a ConnectionError,
        # which the loop would take for an outage and retry forever: the flag
        # ends the loop then, and the wait is bounded either way (an API that
        # cannot stop would outlive Quart's shutdown timeout).
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, timeout=2.0)

    async def _listen(self) -> None:
        assert self._redis is not None
        while not self._stopping:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(STORED_PATTERN)
                self.subscribed = True
                while True:
                    msg = await pubsub.get_message(timeout=0.5)
                    if msg is not None and msg.get("type") == "pmessage":
                        self._wake(tenant_of(msg["channel"]))
            except (RedisError, OSError) as exc:
                if self._stopping:
                    return
                log.warning("stored-batch subscription down (%s); waits fall back to polling", exc)
            finally:
                self.subscribed = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self.retry_seconds)

    def _wake(self, tenant: str) -> None:
        for event in self._waiters.get(tenant, ()):
            event.set()

    @contextlib.contextmanager
    def _register(self, tenants: set[str]) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        for tenant in tenants:
            self._waiters.setdefault(tenant, set()).add(event)
        try:
            yield event
        finally:
            for tenant in tenants:
                waiting = self._waiters.get(tenant)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._waiters[tenant]

    async def wait_until(
        self, tenants: set[str], done: Callable[[], Awaitable[bool]], seconds: float
    ) -> bool:
        """True once ``done()`` (a store look-up) is true, False after ``seconds``.

        ``done`` runs once at first, then once per announcement for one of
        ``tenants`` (announcements during a look-up coalesce into one more),
        or after the fallback period without one.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        with self._register(tenants) as announced:
            while True:
                announced.clear()
                if await done():
                    return True
                left = deadline - loop.time()
                if left <= 0:
                    return False
                period = self.fallback_seconds if self.subscribed else self.fallback_down_seconds
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(announced.wait(), min(left, period))
