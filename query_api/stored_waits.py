"""Wake ``?wait=true`` requests when the processor announces a stored batch.

One pattern subscription per API process (``audit_events.notify``) feeds
per-tenant wake-ups. A waiter registers *before* its first look at the store,
so an announcement between that look and its wait is never missed.

``POST /v1/events?wait=true`` registers its events (:meth:`StoredWaits.expect`)
*before* it publishes them, so no announcement of them can be missed while the
subscription holds: it needs no look at the store before the first
announcement, and none at all when the announcements name every one of its
events with the content hash it sent (the processor names only what it stored,
after the write). A message that names no events, or one of its ids with another
content hash (masked, or the id stored with other content), makes it look.

Redis is only a hint: every wait also looks again after ``fallback_seconds``
(shorter while the subscription is down, and at once when it was lost since the
waiter registered), so correctness never depends on pub/sub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from enum import Enum

from redis.asyncio import Redis
from redis.exceptions import RedisError

from audit_events.notify import STORED_PATTERN, stored_events, tenant_of

log = logging.getLogger("auditstream.api.waits")


Key = tuple[str, str]  # (tenant, event id)


class Confirmed(Enum):
    ANNOUNCED = "announced"  # the processor named every event with its content hash
    LOOKED = "looked"  # a look at the store found them


class Expectation:
    """Events one request publishes, ``{(tenant, id): content hash}``, and what the
    announcements said of them since it registered."""

    def __init__(self, wanted: Mapping[Key, str], epoch: int) -> None:
        self.wanted = dict(wanted)
        self.epoch = epoch  # the subscription it registered under
        self.announced: set[Key] = set()
        self.look = False  # an announcement asks for a look at the store
        self.woken = asyncio.Event()

    @property
    def complete(self) -> bool:
        return len(self.announced) == len(self.wanted)

    def hear(self, tenant: str, named: Mapping[str, str] | None) -> None:
        """One announcement for ``tenant``: ``named`` events stored, or None (unknown)."""
        if named is None:
            self.look = True
        else:
            for key, digest in self.wanted.items():
                if key[0] == tenant and key[1] in named:
                    if named[key[1]] == digest:
                        self.announced.add(key)
                    else:  # masked, or the id stored with another content
                        self.look = True
        if self.look or self.complete:
            self.woken.set()


class StoredWaits:
    fallback_seconds = 1.0  # a look at the store even without an announcement
    fallback_down_seconds = 0.25  # while the subscription is down
    retry_seconds = 1.0

    def __init__(self, redis: Redis | None) -> None:
        self._redis = redis
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._expected: dict[str, set[Expectation]] = {}
        self._task: asyncio.Task[None] | None = None
        self.subscribed = False
        # Counts subscriptions: an expectation registered under an earlier one may
        # have missed announcements (it looks at the store instead).
        self._epoch = 0
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
            pubsub = self._redis.pubsub()
            try:
                await pubsub.psubscribe(STORED_PATTERN)
                while True:
                    msg = await pubsub.get_message(timeout=0.5)
                    if msg is None:
                        continue
                    if msg.get("type") == "psubscribe":  # Redis confirmed: nothing missed after
                        self._epoch += 1
                        self.subscribed = True
                    elif msg.get("type") == "pmessage":
                        self._wake(tenant_of(msg["channel"]), stored_events(msg["data"]))
            except (RedisError, OSError) as exc:
                if self._stopping:
                    return
                log.warning("stored-batch subscription down (%s); waits fall back to polling", exc)
            finally:
                self.subscribed = False
                self._lost()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self.retry_seconds)

    def _wake(self, tenant: str, named: Mapping[str, str] | None = None) -> None:
        for event in self._waiters.get(tenant, ()):
            event.set()
        for expectation in self._expected.get(tenant, ()):
            expectation.hear(tenant, named)

    def _lost(self) -> None:
        """The subscription is gone: announcements may be missed, every expectation looks."""
        for expectations in self._expected.values():
            for expectation in expectations:
                expectation.look = True
                expectation.woken.set()

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

    @contextlib.contextmanager
    def expect(self, wanted: Mapping[Key, str]) -> Iterator[Expectation]:
        """Register ``wanted`` for announcements; enter it *before* publishing the events."""
        expectation = Expectation(wanted, self._epoch if self.subscribed else -1)
        tenants = {tenant for tenant, _ in wanted}
        for tenant in tenants:
            self._expected.setdefault(tenant, set()).add(expectation)
        try:
            yield expectation
        finally:
            for tenant in tenants:
                expecting = self._expected.get(tenant)
                if expecting is not None:
                    expecting.discard(expectation)
                    if not expecting:
                        del self._expected[tenant]

    def _intact(self, expectation: Expectation) -> bool:
        """Whether every announcement since ``expectation`` registered reached it."""
        return self.subscribed and expectation.epoch == self._epoch

    async def wait_expected(
        self, expectation: Expectation, look: Callable[[], Awaitable[bool]], seconds: float
    ) -> Confirmed | None:
        """How ``expectation``'s events were confirmed stored, or None after ``seconds``.

        ``look`` (a store look-up) runs only when an announcement asks for it, when
        announcements may have been missed (at once then), or after the fallback
        period without a word about the events.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        look_now = not self._intact(expectation)
        while True:
            expectation.woken.clear()
            if expectation.complete:
                return Confirmed.ANNOUNCED
            if look_now or expectation.look:
                expectation.look = False
                if await look():
                    return Confirmed.LOOKED
                if expectation.complete:  # announced during the look
                    return Confirmed.ANNOUNCED
            left = deadline - loop.time()
            if left <= 0:
                return None
            period = self.fallback_seconds if self.subscribed else self.fallback_down_seconds
            try:
                await asyncio.wait_for(expectation.woken.wait(), min(left, period))
                look_now = not self._intact(expectation)
            except TimeoutError:
                look_now = True
