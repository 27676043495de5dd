"""Generation-keyed Redis read-through cache with in-process single-flight.

A read's key embeds the current generation of its scope, read from Redis first;
the processor bumps generations after every stored batch. A reader that was
paused between its MongoDB read and its cache set writes under the *old*
generation, which no later reader asks for: no stale hit, no key scans.

Single-flight: concurrent misses of one key share one load, run as its own task
(a disconnecting client cannot cancel it for the others). The finished load
stays joinable for :attr:`ReadCache.grace_seconds` after its value was stored,
so a request whose Redis GET raced the SET still does not query MongoDB again;
that is safe because the key names the generation it was read under.

Across processes (several API workers or pods on one Redis) a miss takes a
short Redis lock named after the key (``SET NX PX`` with a random token) before
it reads MongoDB; a process that finds the lock taken polls the key until the
holder's value lands (``GET`` every few ms), for at most
:attr:`ReadCache.lock_seconds`, then loads itself. The lock expires on its own
after that time, so a crashed loader holds nobody up for longer, and it is
released (compare-and-delete on the token) once the value is stored or the load
failed. A cold burst over N processes thus reads MongoDB once per key.

When Redis is unavailable reads go straight to MongoDB (``X-Cache: bypass``),
and Redis is skipped for :attr:`ReadCache.retry_seconds` before the next try.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from audit_events.cache_keys import (
    BUMP_SCRIPT,
    generation_keys,
    generation_ttl_seconds,
    new_generation,
    query_key,
    target_generation,
    tenant_generation,
)
from query_api.deadlines import Deadlines

log = logging.getLogger("auditstream.api.cache")

Loader = Callable[[], Awaitable[bytes]]

# A hit in one round trip: the scopes' generations (MGET), then the value under
# the key they name, built as query_key() builds it (ARGV[1], ARGV[2]: the key's
# text before and after the generations). The reply:
# - 1 when that key is ARGV[4] (the value the caller holds, ReadCache._held) and
#   has more than ARGV[3] ms of its TTL left: the value is not sent again;
# - else, for a hit, the generations, the value and its remaining TTL (ms);
# - a miss: the generations; a missing counter: fewer values than keys.
# Single-instance Redis (the key is not declared in KEYS).
HIT_SCRIPT = """
local gens = redis.call('MGET', unpack(KEYS))
for i = 1, #KEYS do
  if not gens[i] then return {} end
end
local key = ARGV[1] .. table.concat(gens, '.') .. ARGV[2]
local ttl = redis.call('PTTL', key)
if ttl == -2 then return gens end
if key == ARGV[4] and (ttl < 0 or ttl >= tonumber(ARGV[3])) then return 1 end
local value = redis.call('GET', key)
if not value then return gens end
gens[#KEYS + 1] = value
gens[#KEYS + 2] = ttl
return gens
"""
# Release a single-flight lock only if it is still ours (it may have expired and
# been taken by another loader meanwhile).
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
LOCK_SUFFIX = ":loading"
_SPLIT = 7_373_737_373_737_373_737  # a generation no counter has, to split query_key()'s text


class _Queued:
    """A :meth:`HitConnections.call_shared` command not sent yet, and its reply."""

    __slots__ = ("joined", "reply")

    def __init__(self, reply: asyncio.Future[object]) -> None:
        self.reply = reply
        self.joined = False

    def settle(self, task: asyncio.Task[object]) -> None:
        """Pass the round trip's outcome on to every caller."""
        if task.cancelled():
            self.reply.cancel()
        elif (error := task.exception()) is not None:
            self.reply.set_exception(error)
        else:
            self.reply.set_result(task.result())
        # Retrieved here: callers that all went away leave no "never retrieved" warning.
        self.reply.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


class HitConnections:
    """Redis connections kept for the hit script: one command per cached hit.

    redis-py's ``execute_command`` costs a cached hit about as much CPU as the
    rest of the request (issue 18 profile): the blocking pool's condition and
    wait timeout, the retry wrapper, a ``wait_for`` task per send and a timeout
    per read. Here a hit takes an idle connection of its own (made with the
    pool's connection settings: URL, credentials, TLS), sends the command and
    reads the reply within ``timeout`` seconds (the client's socket timeout; a
    :class:`~query_api.deadlines.Deadline`, checked every 50 ms: no timer per
    round trip), and puts the connection back. At most ``size``
    are open; a hit that finds them all busy waits up to ``wait_seconds`` for one
    (the pool's own wait), then fails like a Redis error (the read bypasses the
    cache). A connection that failed or was interrupted mid-command is dropped.
    """

    def __init__(
        self, pool: ConnectionPool, size: int, *, timeout: float = 1.0, wait_seconds: float = 5.0
    ) -> None:
        self._pool = pool
        self._kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._idle: list[AbstractConnection] = []
        self._slots = asyncio.Semaphore(size)
        self._deadlines = Deadlines(tick=0.05)
        self._packer = self._new()  # never connected: encodes commands
        self._queued: dict[bytes, _Queued] = {}  # call_shared's commands not sent yet
        self.timeout = timeout
        self.wait_seconds = wait_seconds

    def pack(self, *args: str | int | bytes) -> list[bytes]:
        """``args`` as the command :meth:`call` sends (for :meth:`call_packed`)."""
        return [b"".join(self._packer.pack_command(*args))]

    async def call(self, *args: str | int | bytes) -> object:
        """One command's reply; raises ``RedisError`` or ``OSError`` (a timeout)."""
        return await self.call_packed(self.pack(*args))

    async def call_packed(self, command: list[bytes]) -> object:
        """The reply to a command :meth:`pack` encoded; raises as :meth:`call`.

        A reused connection that turns out closed (Redis restarted, or dropped
        idle clients) is retried once on a new connection, and the other idle
        ones are dropped (closed alike, most likely), as redis-py's own retry
        would reconnect: a restart costs no bypass.
        """
        if self._slots.locked():
            async with asyncio.timeout(self.wait_seconds):
                await self._slots.acquire()
        else:
            await self._slots.acquire()  # free: no suspension
        try:
            if not self._idle:
                return await self._once(self._new(), command)
            try:
                return await self._once(self._idle.pop(), command)
            except RedisConnectionError:
                await self.aclose()
                return await self._once(self._new(), command)
        finally:
            self._slots.release()

    async def call_shared(self, command: list[bytes]) -> object:
        """As :meth:`call_packed`, one round trip for the callers of the same
        ``command`` in one event-loop iteration.

        The first caller lets the loop run once before it sends; whoever asks
        the same meanwhile joins and gets the same reply (or error). The command
        is sent after every caller it answers asked: none is answered by a
        Redis state older than its own call (a read after a write still sees
        the write's bump). Concurrent hits of one page thus cost Redis one
        script run and the process one send and one read instead of one each
        (issue 18). A caller alone costs one loop iteration more; a caller
        that goes away does not cancel the round trip of those who joined it.
        """
        key = command[0]
        queued = self._queued.get(key)
        if queued is not None:
            queued.joined = True
            return await asyncio.shield(queued.reply)
        loop = asyncio.get_running_loop()
        queued = self._queued[key] = _Queued(loop.create_future())
        try:
            await asyncio.sleep(0)  # the callers of this loop iteration join
        finally:
            del self._queued[key]
            if queued.joined:  # their round trip, whatever happens to this caller
                task = loop.create_task(self.call_packed(command))
                task.add_done_callback(queued.settle)
        if not queued.joined:
            return await self.call_packed(command)
        return await asyncio.shield(queued.reply)

    def _new(self) -> AbstractConnection:
        return self._pool.connection_class(**self._kwargs)  # connects on its first command

    async def _once(self, conn: AbstractConnection, command: list[bytes]) -> object:
        try:
            async with self._deadlines.after(self.timeout):
                await conn.send_packed_command(command)
                reply = await conn.read_response()
        except ResponseError:  # a whole error reply: the connection is fine
            self._idle.append(conn)
            raise
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        self._idle.append(conn)
        return reply

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect()


class ReadCache:
    grace_seconds = 1.0
    retry_seconds = 1.0
    # A hit with less than this share of the TTL left reloads the entry in the background.
    refresh_fraction = 0.2
    # Cross-process single-flight: how long a load may hold its key's lock, which
    # is also the longest another process waits for it before loading itself.
    lock_seconds = 5.0
    poll_first_seconds = 0.005  # the first poll of a waiting process, doubling
    poll_max_seconds = 0.05  # up to this interval

    def __init__(
        self,
        redis: Redis | None,
        ttl_seconds: int,
        *,
        namespace: str,
        hit_connections: HitConnections | None = None,
    ) -> None:
        self._redis = redis
        # The hit script's own connections (Services passes them); else the client's.
        self._hits = hit_connections
        # The deployment's key namespace (audit_events.cache_keys.cache_namespace):
        # the processor bumps the counters under the same one.
        self.namespace = namespace
        self._ttl = ttl_seconds
        self._generation_ttl = generation_ttl_seconds(ttl_seconds)
        # A hit with less than this left (ms) reloads the entry in the background.
        self._refresh_ms = int(ttl_seconds * 1000 * self.refresh_fraction)
        self._hit_script = redis.register_script(HIT_SCRIPT) if redis is not None else None
        # A read's hit command by (kind, tenant, query, generation keys...): its key's
        # text around the generations, and the EVALSHA as sent (built once, not per hit).
        self._hit_commands: dict[tuple[str, ...], tuple[str, str, list[bytes] | None]] = {}
        # Values this process holds, by the same read: (key, value, until, command
        # naming the key). The script answers 1 instead of the value while the
        # key is still the read's current one (same generations) and has TTL left;
        # a value is held no longer than its Redis entry had left when it came.
        self._held: dict[tuple[str, ...], tuple[str, bytes, float, list[bytes] | None]] = {}
        self._held_bytes = 0
        self._release_script = redis.register_script(RELEASE_SCRIPT) if redis is not None else None
        self._inflight: dict[str, asyncio.Task[bytes]] = {}
        self._redis_down_until = 0.0
        self.hits = 0
        self.misses = 0
        self.bypasses = 0
        self.refreshes = 0
        self.loads = 0  # loader calls (MongoDB reads) this process made
        self.shared = 0  # misses answered by another process's load
        # Called once per loader call (the API counts them: auditstream_api_cache_loads_total).
        self.on_load: Callable[[], None] | None = None
        # Test seam: awaited between a miss's MongoDB read and its cache set.
        self.after_load: Callable[[str], Awaitable[None]] | None = None

    async def aclose(self) -> None:
        """Close the hit script's own connections (the client is its owner's to close)."""
        if self._hits is not None:
            await self._hits.aclose()

    async def settle(self, documents: list[dict[str, Any]]) -> None:
        """Bump the generations of every scope ``documents`` touch (as the processor's
        step 9 does), before a ``?wait=true`` request answers that they are stored.

        The processor bumps only after its checkpoint and dead letters, so a wait
        that saw the documents in MongoDB would otherwise answer while every page
        cached before the write is still served (a read after a 201 missing the
        event, or an erased payload read after a 204). A value cached under a
        generation this bump passed was read before the bump; one cached under a
        newer generation was read after it, i.e. after the write. Best effort, like
        the processor's: a failure is logged (its own bump follows).
        """
        keys = generation_keys(self.namespace, documents)
        if self._redis is None or not keys:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.eval(BUMP_SCRIPT, 1, key, self._generation_ttl, new_generation())
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("could not invalidate the cache before answering a wait: %s", exc)

    def tenant_scope(self, tenant: str) -> list[str]:
        """The generation keys of a read of the tenant's events."""
        return [tenant_generation(self.namespace, tenant)]

    def target_scope(self, tenant: str, target_type: str, target_id: str) -> list[str]:
        """The generation keys of a read of one object's history."""
        return [target_generation(self.namespace, tenant, target_type, target_id)]

    async def get_or_load(
        self,
        kind: str,
        tenant: str,
        generation_keys: list[str],
        normalized_query: str,
        loader: Loader,
    ) -> tuple[bytes, str]:
        """Return ``(value, "hit"|"miss"|"bypass")``; never raises for Redis errors.

        ``loader`` (the MongoDB read) may raise; its error reaches every caller
        that shared the load.
        """
        if self._redis is None or time.monotonic() < self._redis_down_until:
            return await self._bypass(kind, tenant, normalized_query, loader)
        try:
            gens, cached, looked, ttl_ms = await self._read(
                kind, tenant, generation_keys, normalized_query
            )
            if not looked:
                assert gens is not None
                cached = await self._redis.get(
                    query_key(self.namespace, kind, tenant, gens, normalized_query)
                )
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable, reading from MongoDB: %s", exc)
            self._redis_down_until = time.monotonic() + self.retry_seconds
            return await self._bypass(kind, tenant, normalized_query, loader)
        if cached is not None:
            self.hits += 1
            if ttl_ms is not None and 0 <= ttl_ms < self._refresh_ms:
                # Early refresh: a hot entry is reloaded in the background before it
                # expires (single-flight), so no reader waits on an expired hot key.
                assert gens is not None
                self.refreshes += 1
                # Read the reloaded value once it is stored, not the copy held now.
                self._drop_held((kind, tenant, normalized_query, *generation_keys))
                key = query_key(self.namespace, kind, tenant, gens, normalized_query)
                self._flight(key, loader, store=True, refresh=True)
            return cached if isinstance(cached, bytes) else cached.encode(), "hit"
        self.misses += 1
        assert gens is not None  # a miss answers the generations
        key = query_key(self.namespace, kind, tenant, gens, normalized_query)  # a hit needs none
        return await asyncio.shield(self._flight(key, loader, store=True)), "miss"

    async def _read(
        self, kind: str, tenant: str, generation_keys: list[str], normalized_query: str
    ) -> tuple[list[int] | None, bytes | str | None, bool, int | None]:
        """The generations, the cached value, whether it was looked up, its TTL (ms).

        A plain hit answers the value alone: generations and TTL ``None`` (a hit
        needs neither); a hit due for the early refresh answers all four.

        One round trip (:data:`HIT_SCRIPT`). When a counter is missing the
        script reads nothing, :meth:`_generations` creates it and the caller GETs
        the value (the rare path).
        """
        assert self._hit_script is not None
        memo = (kind, tenant, normalized_query, *generation_keys)
        head, tail, command = self._hit_command(memo, generation_keys)
        held = self._held.get(memo)
        now = time.monotonic()
        if held is not None and held[2] <= now:
            self._drop_held(memo)
            held = None
        holding = held[0] if held is not None else ""
        # EVALSHA directly: redis-py's Script.__call__ cost ~3 % of a hit (an isinstance
        # check against a Protocol class on every call).
        try:
            if self._hits is not None:
                sent = held[3] if held is not None else command
                assert sent is not None
                reply: Any = await self._hits.call_shared(sent)
            else:
                reply = await self._redis.evalsha(  # type: ignore[union-attr]
                    self._hit_script.sha,
                    len(generation_keys),
                    *generation_keys,
                    head,
                    tail,
                    self._refresh_ms,
                    holding,
                )
        except NoScriptError:  # a restarted or other server: the wrapper loads it
            reply = await self._hit_script(
                keys=generation_keys, args=[head, tail, self._refresh_ms, holding]
            )
        if held is not None:
            if reply == 1:  # a hit of the value held
                return None, held[1], True, None
            self._drop_held(memo)  # not current (a miss stores anew, maybe under its key)
        n = len(generation_keys)
        if len(reply) < n:  # a counter is missing
            return await self._generations(generation_keys), None, False, None
        gens = [int(v) for v in reply[:n]]
        if len(reply) < n + 2:  # a miss
            return gens, None, True, None
        value, ttl_ms = reply[n], int(reply[n + 1])
        if isinstance(value, str):
            value = value.encode()
        self._hold(memo, head + ".".join(map(str, gens)) + tail, value, ttl_ms, now)
        return gens, value, True, ttl_ms

    HELD_BYTES = 32 * 1024 * 1024  # values held at most (bytes), the oldest dropped first
    HELD_MAX = 4096  # and at most this many

    def _hold(self, memo: tuple[str, ...], key: str, value: bytes, ttl_ms: int, now: float) -> None:
        """Hold ``value``, the entry ``key`` with ``ttl_ms`` left (-1: none), for ``memo``."""
        self._drop_held(memo)
        if len(value) > self.HELD_BYTES // 8:
            return
        left = ttl_ms / 1000 if ttl_ms >= 0 else float(self._ttl)
        keys = list(memo[3:])
        head, tail, _ = self._hit_command(memo, keys)
        command = self._pack_hit(keys, head, tail, key)
        while self._held and (
            self._held_bytes + len(value) > self.HELD_BYTES or len(self._held) >= self.HELD_MAX
        ):
            self._drop_held(next(iter(self._held)))  # the oldest
        self._held[memo] = (key, value, now + left, command)
        self._held_bytes += len(value)

    def _drop_held(self, memo: tuple[str, ...]) -> None:
        held = self._held.pop(memo, None)
        if held is not None:
            self._held_bytes -= len(held[1])

    HIT_COMMANDS_MAX = 4096

    def _pack_hit(self, keys: list[str], head: str, tail: str, holding: str) -> list[bytes] | None:
        """The hit script's EVALSHA as :class:`HitConnections` sends it, ``holding``
        the key of the value held ("" none); None without those connections."""
        if self._hits is None:
            return None
        assert self._hit_script is not None
        sha = self._hit_script.sha
        return self._hits.pack(
            "EVALSHA", sha, len(keys), *keys, head, tail, self._refresh_ms, holding
        )

    def _hit_command(
        self, memo: tuple[str, ...], generation_keys: list[str]
    ) -> tuple[str, str, list[bytes] | None]:
        """The hit key's text before and after the generations, and the hit's EVALSHA
        holding no value as :class:`HitConnections` sends it (None without them),
        of the read ``memo`` (kind, tenant, query, generation keys...); kept per read."""
        found = self._hit_commands.get(memo)
        if found is None:
            assert self._hit_script is not None
            kind, tenant, normalized_query = memo[:3]
            key = query_key(self.namespace, kind, tenant, [_SPLIT], normalized_query)
            head, _, tail = key.rpartition(str(_SPLIT))
            command = self._pack_hit(generation_keys, head, tail, "")
            if len(self._hit_commands) >= self.HIT_COMMANDS_MAX:
                self._hit_commands.clear()
            found = self._hit_commands[memo] = (head, tail, command)
        return found

    async def _generations(self, keys: list[str]) -> list[int]:
        """The scopes' current generations; a missing counter is created first.

        Never read a missing counter as 0: entries cached under a counter that
        was lost (restart, flush, eviction, expiry) could match again once it
        counted back up. ``SET NX`` with a fresh random value (whoever is first,
        reader or processor, creates it) makes a lost counter's values unreachable.
        """
        assert self._redis is not None
        values = await self._redis.mget(keys)
        missing = [k for k, v in zip(keys, values, strict=True) if v is None]
        if missing:  # rare: once per scope and counter lifetime (2 x the TTL)
            for k in missing:
                await self._redis.set(k, new_generation(), nx=True, ex=self._generation_ttl)
            values = await self._redis.mget(keys)
        # Gone again already (eviction): a value nobody shares, i.e. effectively uncached.
        return [int(v) if v is not None else new_generation() for v in values]

    async def _bypass(
        self, kind: str, tenant: str, normalized_query: str, loader: Loader
    ) -> tuple[bytes, str]:
        self.bypasses += 1
        key = f"nocache:{kind}:{tenant}:{normalized_query}"
        return await asyncio.shield(self._flight(key, loader, store=False)), "bypass"

    def _flight(
        self, key: str, loader: Loader, store: bool, *, refresh: bool = False
    ) -> asyncio.Task[bytes]:
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load(key, loader, store, refresh))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._landed(key, t, store))
        return task

    async def _load(self, key: str, loader: Loader, store: bool, refresh: bool) -> bytes:
        if not store:
            return await self._call(loader)
        token = secrets.token_hex(16)
        theirs = await self._lock_or_wait(key, token)
        if theirs is None and not refresh:
            # Another process may have stored it between our miss and our lock.
            theirs = await self._get_quietly(key)
            if theirs is not None:
                await self._unlock(key, token)
        if theirs is not None:
            self.shared += 1
            return theirs
        try:
            value = await self._call(loader)
            if self.after_load is not None:
                await self.after_load(key)
            assert self._redis is not None
            try:
                await self._redis.set(key, value, ex=self._ttl)
            except (RedisError, OSError) as exc:
                log.warning("cache set failed: %s", exc)
            return value
        finally:
            await self._unlock(key, token)

    async def _get_quietly(self, key: str) -> bytes | None:
        assert self._redis is not None
        try:
            value = await self._redis.get(key)
        except (RedisError, OSError):
            return None
        return value if isinstance(value, bytes | None) else value.encode()

    async def _call(self, loader: Loader) -> bytes:
        self.loads += 1
        if self.on_load is not None:
            self.on_load()
        return await loader()

    async def _lock_or_wait(self, key: str, token: str) -> bytes | None:
        """Take the key's load lock (``None``: load now), or another process's value.

        Waits at most :attr:`lock_seconds` for the holder's value; when the lock
        is gone without a value (the holder failed, or its lock expired) it tries
        to take the lock itself. Redis errors: ``None`` (load without a lock).
        """
        assert self._redis is not None
        lock = key + LOCK_SUFFIX
        lock_ms = int(self.lock_seconds * 1000)
        deadline = time.monotonic() + self.lock_seconds
        pause = self.poll_first_seconds
        try:
            while True:
                if await self._redis.set(lock, token, nx=True, px=lock_ms):
                    return None
                while time.monotonic() < deadline:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, self.poll_max_seconds)
                    value = await self._redis.get(key)
                    if value is not None:
                        return value if isinstance(value, bytes) else value.encode()
                    if not await self._redis.exists(lock):
                        break  # released without a value: try to take it
                else:
                    return None  # waited long enough: load it ourselves
        except (RedisError, OSError) as exc:
            log.warning("cache lock unavailable, loading without it: %s", exc)
            return None

    async def _unlock(self, key: str, token: str) -> None:
        assert self._release_script is not None
        try:
            await self._release_script(keys=[key + LOCK_SUFFIX], args=[token])
        except (RedisError, OSError) as exc:  # it expires on its own
            log.warning("cache lock release failed: %s", exc)

    def _landed(self, key: str, task: asyncio.Task[bytes], store: bool) -> None:
        failed = task.cancelled() or task.exception() is not None  # marks it retrieved
        if store and not failed:
            asyncio.get_running_loop().call_later(self.grace_seconds, self._forget, key, task)
        else:
            self._forget(key, task)

    def _forget(self, key: str, task: asyncio.Task[bytes]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
