"""The async producer: validate locally, buffer, send in chunks, spool when Kafka is down.

One background task (the *sender*) owns all traffic to Kafka. Events flow

    emit / emit_nowait ─▶ bounded memory buffer ─▶ sender ─▶ Kafka (acks=all)
                                      │                 │ not acknowledged
                                      └─ overflow ─▶ on-disk spool ◀─┘

and the sender keeps emission order: while the spool holds anything, newer events
are appended behind it and the spool is drained (oldest first) before the buffer is
sent again. A chunk that Kafka did not acknowledge goes back to the *front* of the
spool. Some of its events may have been written anyway; they are resent later with
the same ids, which the idempotent sink (``_id`` = ``tenant/id``) turns into no-ops.

Backpressure policy of ``emit_nowait``: the buffer holds ``buffer_size`` events.
When it is full, the buffer and the new event are written to the spool (one
transaction, in order); without a spool :class:`BufferFull` is raised. A full spool
raises :class:`SpoolFull`. Nothing is dropped silently. These rules (what goes where,
what the sender does next) are the pure :class:`producers.policy.SpoolPolicy`; this
module does the I/O.

Durable mode (``config.durable``): there is no memory buffer. ``emit``/``emit_nowait``
append the event to the spool (a committed SQLite transaction) before they return,
and the sender drains the spool into Kafka in the background, so a process killed at
any moment has lost nothing it was handed. With ``config.spool_dir`` the idle sender
also claims and drains the spool files of dead processes (see :mod:`producers.spool`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from audit_events.codec import encode_event
from audit_events.schema import AuditEvent
from audit_events.topics import partition_key
from producers.config import ProducerConfig
from producers.errors import BufferFull, DeliveryFailed, ProducerClosed, SpoolFull
from producers.events import build_event
from producers.policy import SpoolPolicy
from producers.spool import Spool, SpoolDirectory
from producers.transport import KafkaTransport, Message, Transport

log = logging.getLogger("auditstream.producer")


@dataclass(frozen=True)
class Receipt:
    """What happened to an emitted event.

    ``acknowledged``: Kafka acknowledged it (acks=all) at ``partition``/``offset``.
    ``spooled``: Kafka was unreachable; it is stored in the on-disk spool and will be
    sent, in order, when Kafka returns.
    """

    id: str
    status: Literal["acknowledged", "spooled"]
    partition: int | None = None
    offset: int | None = None


@dataclass(frozen=True)
class ProducerStats:
    connected: bool
    acknowledged: int  # events Kafka acknowledged (directly or drained from the spool)
    spooled: int  # events written to the spool since start
    drained: int  # spooled events acknowledged later
    buffered: int  # events waiting in memory (including the chunk in flight)
    spool_events: int  # events in the spool now
    spool_bytes: int
    claimed: int = 0  # events drained from spool files of other (dead) processes


class _Item:
    __slots__ = ("future", "id", "key", "value")

    def __init__(
        self, key: bytes, value: bytes, event_id: str, future: asyncio.Future[Receipt] | None
    ) -> None:
        self.key, self.value, self.id, self.future = key, value, event_id, future


class AuditProducer:
    """Async audit-event producer. Use ``async with AuditProducer(config) as p:``.

    Methods other than :meth:`emit_nowait` and :meth:`stats` must be called from the
    event loop that ran :meth:`start`; :meth:`emit_nowait` may be called from any
    thread.
    """

    def __init__(self, config: ProducerConfig, transport: Transport | None = None) -> None:
        self.config = config
        self._policy = SpoolPolicy(config.buffer_size, config.chunk_size, config.durable)
        self._transport: Transport = transport or KafkaTransport(config)
        self._defaults: dict[str, Any] = (
            {"source": {"service": config.service}} if config.service else {}
        )
        self._buffer: deque[_Item] = deque()
        self._lock = threading.Lock()
        self._inflight = 0
        self._spool: Spool | None = None
        self._spool_dir: SpoolDirectory | None = None
        self._claimed_spool: Spool | None = None
        self._next_claim = 0.0
        self._claimed = 0
        self._sending = False  # a chunk is on its way to Kafka
        #: Whether an emit must wake the sender. Durable mode: only while the sender may
        #: be about to idle; otherwise it re-reads the spool anyway when its work is done
        #: (saves the emitting thread a cross-thread wake-up per event).
        self._armed = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Future[BaseException | None] | None = None
        self._connected = False
        self._stopping = False
        self._closed = False
        self._next_attempt = 0.0
        self._backoff = config.reconnect_initial
        self._acknowledged = self._spooled = self._drained = 0

    # --- lifecycle ---------------------------------------------------------

    async def start(self, *, wait_connected: bool = True) -> None:
        """Open the spool and start the sender.

        With ``wait_connected`` the first connection attempt is awaited: without a
        spool an unreachable Kafka raises :class:`DeliveryFailed`; with one, events
        are spooled until Kafka is reachable. Spooled events from an earlier run are
        drained first.
        """
        if self._task is not None:
            return
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wakeup = asyncio.Event()
        self._first_attempt = self._loop.create_future()
        if cfg.spool_dir is not None:
            self._spool_dir = SpoolDirectory(
                cfg.spool_dir,
                cfg.spool_max_events,
                cfg.spool_max_bytes,
                cfg.synchronous,
                background_checkpoints=cfg.durable,
            )
            self._spool = self._spool_dir.create()
        elif cfg.spool_path is not None:
            self._spool = Spool(
                cfg.spool_path,
                cfg.spool_max_events,
                cfg.spool_max_bytes,
                synchronous=cfg.synchronous,
                background_checkpoints=cfg.durable,
            )
        self._task = asyncio.create_task(self._run(), name="auditstream-producer")
        if wait_connected:
            error = await asyncio.shield(self._first_attempt)
            if error is not None and self._spool is None:
                await self.close()
                raise DeliveryFailed(f"Kafka at {cfg.bootstrap} is unreachable: {error!r}")

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every event emitted so far is acknowledged or spooled.

        Raises :class:`TimeoutError` after ``timeout`` seconds. It does not wait for
        the spool to drain (see :meth:`wait_spool_empty`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._buffer or self._inflight:
            if self._task is None or self._task.done():
                raise ProducerClosed("the producer is not running")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.stats().buffered} events still unsent after flush")
            await asyncio.sleep(0.005)

    async def wait_spool_empty(self, timeout: float) -> None:
        """Wait until the spool is drained into Kafka; :class:`TimeoutError` otherwise."""
        deadline = time.monotonic() + timeout
        while (
            self._buffer
            or self._inflight
            or (self._spool is not None and self._spool.events)
            or self._claimed_spool is not None
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"spool still holds {self.stats().spool_events} events")
            await asyncio.sleep(0.02)

    async def close(self, timeout: float = 30.0) -> None:
        """Flush (bounded by ``timeout``), stop the sender and close the spool.

        Events still in memory then are spooled; without a spool, :class:`DeliveryFailed`
        says how many were not delivered. Spooled events stay on disk for the next start.
        """
        if self._closed:
            return
        with contextlib.suppress(TimeoutError, ProducerClosed):
            await self.flush(timeout)
        if self.config.durable:
            # Deliver what is spooled while Kafka answers, for at most close_grace; what
            # is left stays on disk for the next producer.
            deadline = time.monotonic() + min(timeout, self.config.close_grace)
            while self._delivering_spool(deadline):  # noqa: ASYNC110 - the sender drains
                await asyncio.sleep(0.01)
        self._stopping = True
        self._closed = True
        self._wake(force=True)
        if self._task is not None:
            # The sender may be mid-way through a connection attempt or a send. In
            # durable mode everything is on disk already: do not hold the exit up.
            grace = min(timeout, self.config.delivery_timeout)
            if self.config.durable:
                grace = min(grace, self.config.close_grace) if self._sending else 0.0
            await asyncio.wait({self._task}, timeout=grace)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._transport.close()
        lost = self._spool_buffer() if self._spool is not None else len(self._buffer)
        if self._claimed_spool is not None:
            self._claimed_spool.close(delete_if_empty=True)
            self._claimed_spool = None
        if self._spool is not None:
            # An emptied per-process file is removed; one that still holds events stays
            # for the next producer (or, in a spool directory, any live process).
            self._spool.close(delete_if_empty=self._spool_dir is not None)
        if lost:
            raise DeliveryFailed(f"{lost} events were not delivered before close")

    def _delivering_spool(self, deadline: float) -> bool:
        return bool(
            self._connected
            and self._spool is not None
            and self._spool.events
            and time.monotonic() < deadline
            and self._task is not None
            and not self._task.done()
        )

    async def __aenter__(self) -> AuditProducer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- emitting ----------------------------------------------------------

    def prepare(
        self, event: AuditEvent | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> AuditEvent:
        """Validate ``event``/``fields`` into an event with the producer's defaults
        (masked when the config has masking rules)."""
        built = build_event(event, defaults=self._defaults, **fields)
        return built if self.config.masking is None else self.config.masking.apply(built)

    async def emit(
        self,
        event: AuditEvent | Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> Receipt:
        """Validate and send one event; return once Kafka acknowledged it (or it is spooled).

        Raises :class:`InvalidEvent` (nothing sent), :class:`SpoolFull`,
        :class:`DeliveryFailed` (no spool and no acknowledgement within ``timeout``,
        default 4 x ``delivery_timeout``) or :class:`ProducerClosed`.
        """
        [receipt] = await self.emit_batch([self.prepare(event, **fields)], timeout=timeout)
        return receipt

    async def emit_batch(
        self, events: Iterable[AuditEvent | Mapping[str, Any]], *, timeout: float | None = None
    ) -> list[Receipt]:
        """Validate all events first (any invalid one raises, none is sent), then send
        them in order and wait for each to be acknowledged or spooled."""
        prepared = [self.prepare(e) for e in events]
        loop = self._running_loop()
        if self.config.durable:
            self._write_ahead([(partition_key(e.tenant), encode_event(e), e.id) for e in prepared])
            return [Receipt(e.id, "spooled") for e in prepared]
        items = [
            _Item(partition_key(e.tenant), encode_event(e), e.id, loop.create_future())
            for e in prepared
        ]
        with self._lock:
            self._buffer.extend(items)
        self._wake()
        futures = [i.future for i in items if i.future is not None]
        wait = timeout if timeout is not None else self.config.delivery_timeout * 4
        _done, pending = await asyncio.wait(futures, timeout=wait)
        if pending:
            raise DeliveryFailed(
                f"{len(pending)} of {len(futures)} events not acknowledged within {wait:.0f}s; "
                "they may still arrive (ids make a retry safe)"
            )
        return [f.result() for f in futures]

    def emit_nowait(
        self, event: AuditEvent | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> str:
        """Validate and queue one event; return its id without waiting. Thread-safe.

        Raises :class:`InvalidEvent`; when the buffer is full, :class:`BufferFull`
        (no spool) or :class:`SpoolFull` (spool full). See the module docstring.
        """
        ev = self.prepare(event, **fields)
        if self.config.durable:
            self._write_ahead([(partition_key(ev.tenant), encode_event(ev), ev.id)])
        else:
            self._enqueue(_Item(partition_key(ev.tenant), encode_event(ev), ev.id, None))
        return ev.id

    def _write_ahead(self, rows: list[tuple[bytes, bytes, str]]) -> None:
        """Durable mode: commit the events to the spool (raises :class:`SpoolFull`)."""
        if self._task is None or self._stopping or self._spool is None:
            raise ProducerClosed("the producer is not running; call start() first")
        self._spool.append([(k, v) for k, v, _ in rows])
        with self._lock:
            self._spooled += len(rows)
        self._wake()

    def _enqueue(self, item: _Item) -> None:
        if self._task is None or self._stopping:
            raise ProducerClosed("the producer is not running; call start() first")
        with self._lock:
            spool = self._spool
            admission = self._policy.admit(len(self._buffer), spooling=spool is not None)
            if admission == "buffer":
                self._buffer.append(item)
            elif admission == "refuse" or spool is None:
                raise BufferFull(
                    f"{len(self._buffer)} events buffered (buffer_size); Kafka is slow or down"
                )
            else:
                # Overflow: buffer + the new event to the spool in one transaction, in order.
                items = [*self._buffer, item]
                spool.append([(i.key, i.value) for i in items])
                self._buffer.clear()
                self._spooled += len(items)
                self._resolve_spooled(items)
        self._wake()

    # --- observing ---------------------------------------------------------

    @property
    def spool_size(self) -> int:
        """Events currently in the on-disk spool (0 without a spool)."""
        return self._spool.events if self._spool is not None else 0

    def stats(self) -> ProducerStats:
        return ProducerStats(
            connected=self._connected,
            acknowledged=self._acknowledged,
            spooled=self._spooled,
            drained=self._drained,
            buffered=len(self._buffer) + self._inflight,
            spool_events=self.spool_size,
            spool_bytes=self._spool.size_bytes if self._spool is not None else 0,
            claimed=self._claimed,
        )

    # --- the sender --------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._task is None or self._stopping:
            raise ProducerClosed("the producer is not running; call start() first")
        return self._loop

    def _wake(self, force: bool = False) -> None:
        loop, wakeup = self._loop, self._wakeup
        if loop is None or wakeup is None or not (self._armed or force):
            return
        if threading.get_ident() == self._loop_thread:
            wakeup.set()
        else:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(wakeup.set)

    async def _run(self) -> None:
        assert self._wakeup is not None
        policy = self._policy
        try:
            while not self._stopping:
                self._wakeup.clear()
                self._armed = True
                spool = self._spool
                if spool is not None and spool.needs_checkpoint():
                    await asyncio.to_thread(spool.checkpoint)
                step = policy.next_step(
                    connected=self._connected,
                    spool_events=spool.events if spool is not None else 0,
                    buffered=len(self._buffer),
                    draining_claimed=self._claimed_spool is not None,
                    claim_due=self._spool_dir is not None and time.monotonic() >= self._next_claim,
                )
                self._armed = policy.wake_on_emit(step)
                if step == "reconnect":
                    await self._reconnect()
                elif step == "drain_spool":
                    assert spool is not None
                    if policy.linger(spool.events):
                        await asyncio.sleep(self.config.linger_ms / 1000)  # gather a chunk
                    self._spool_buffer()  # newer events queue up behind the spooled ones
                    await self._drain_chunk()
                elif step == "send_buffer":
                    await self._send_chunk()
                elif step == "drain_claimed":
                    await self._drain_claimed()
                elif step == "claim":
                    self._claim()
                else:
                    wait = None
                    if self._spool_dir is not None:
                        wait = max(0.0, self._next_claim - time.monotonic())
                    await self._idle(wait)
        except Exception:  # a bug: make it loud, keep what is buffered
            log.exception("auditstream producer sender crashed")
            raise

    async def _idle(self, timeout: float | None) -> None:
        assert self._wakeup is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _reconnect(self) -> None:
        if self._spool is not None:
            self._spool_buffer()
        if not self.config.bootstrap:  # no Kafka configured: keep everything spooled
            if self._first_attempt is not None and not self._first_attempt.done():
                log.error("no Kafka bootstrap configured: audit events are only spooled")
                self._first_attempt.set_result(ConnectionError("no Kafka bootstrap configured"))
            await self._idle(None)
            return
        wait = self._next_attempt - time.monotonic()
        if wait > 0:
            await self._idle(wait)
            return
        error: BaseException | None = None
        try:
            await asyncio.wait_for(
                self._transport.connect(), self.config.request_timeout_ms / 1000 * 2
            )
        except Exception as exc:
            error = exc
            await self._transport.close()
            self._next_attempt = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.config.reconnect_max)
            log.warning("Kafka at %s unreachable (%r)", self.config.bootstrap, exc)
        else:
            self._connected = True
            self._backoff = self.config.reconnect_initial
            log.info("connected to Kafka at %s", self.config.bootstrap)
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_result(error)

    async def _disconnect(self, exc: BaseException) -> None:
        log.warning("Kafka did not acknowledge (%r); spooling until it returns", exc)
        self._connected = False
        self._next_attempt = time.monotonic() + self._backoff
        await self._transport.close()

    async def _send_chunk(self) -> None:
        with self._lock:
            n = min(len(self._buffer), self.config.chunk_size)
            items = [self._buffer.popleft() for _ in range(n)]
            self._inflight = n
        try:
            results = await self._transport.send(
                [(i.key, i.value) for i in items], self.config.delivery_timeout
            )
        except asyncio.CancelledError:  # closing: keep them for the spool / the error count
            with self._lock:
                self._buffer.extendleft(reversed(items))
            raise
        except Exception as exc:
            await self._disconnect(exc)
            self._requeue_failed(items)
            return
        finally:
            self._inflight = 0
        self._acknowledged += n
        for item, (partition, offset) in zip(items, results, strict=True):
            if item.future is not None and not item.future.done():
                item.future.set_result(Receipt(item.id, "acknowledged", partition, offset))

    def _requeue_failed(self, items: list[_Item]) -> None:
        """A chunk was not acknowledged: to the front of the spool, or back to the buffer."""
        spool = self._spool
        if self._policy.unacknowledged(spooling=spool is not None) == "spool_front":
            assert spool is not None
            with self._lock:
                try:
                    spool.prepend([(i.key, i.value) for i in items])
                except SpoolFull:
                    log.error("spool full: %d unacknowledged events kept in memory", len(items))
                    self._buffer.extendleft(reversed(items))
                    return
                self._spooled += len(items)
            self._resolve_spooled(items)
            return
        retry = []
        for item in items:
            if item.future is None:
                retry.append(item)  # fire-and-forget: keep trying
            elif not item.future.done():
                item.future.set_exception(DeliveryFailed("Kafka did not acknowledge the event"))
        with self._lock:
            self._buffer.extendleft(reversed(retry))

    async def _drain_chunk(self) -> None:
        assert self._spool is not None
        rows = self._spool.peek(self.config.chunk_size)
        if not rows:
            return
        messages: list[Message] = [(k, v) for _, k, v in rows]
        self._sending = True
        try:
            await self._transport.send(messages, self.config.delivery_timeout)
        except Exception as exc:
            await self._disconnect(exc)
            return
        finally:
            self._sending = False
        self._spool.remove_through(rows[-1][0])
        self._acknowledged += len(rows)
        self._drained += len(rows)
        if not self._spool.events:
            log.info("spool drained (%d events)", self._drained)

    def _claim(self) -> None:
        """Look for a spool file of a dead process and take it (the lock is the claim)."""
        assert self._spool_dir is not None
        self._next_claim = time.monotonic() + self.config.claim_interval
        try:
            claimed = self._spool_dir.claim(exclude=self._spool)
        except Exception as exc:  # an unreadable file must not stop the sender
            log.warning("looking for orphaned spool files in %s: %r", self._spool_dir.path, exc)
            return
        if claimed is not None:
            if claimed.events:
                log.info("draining %d events spooled by %s", claimed.events, claimed.path.name)
            self._claimed_spool = claimed

    async def _drain_claimed(self) -> None:
        spool = self._claimed_spool
        assert spool is not None
        rows = spool.peek(self.config.chunk_size)
        if not rows:
            spool.close(delete_if_empty=True)
            self._claimed_spool = None
            self._next_claim = 0.0  # there may be more
            return
        self._sending = True
        try:
            await self._transport.send([(k, v) for _, k, v in rows], self.config.delivery_timeout)
        except Exception as exc:
            await self._disconnect(exc)
            return
        finally:
            self._sending = False
        spool.remove_through(rows[-1][0])
        self._acknowledged += len(rows)
        self._claimed += len(rows)

    def _spool_buffer(self) -> int:
        """Move the buffer to the spool's tail; return how many could not be spooled."""
        assert self._spool is not None
        with self._lock:
            items = list(self._buffer)
            if not items:
                return 0
            try:
                self._spool.append([(i.key, i.value) for i in items])
            except SpoolFull as exc:
                log.error("%s; %d events kept in memory", exc, len(items))
                return len(items)
            self._buffer.clear()
            self._spooled += len(items)
        self._resolve_spooled(items)
        return 0

    def _forget_after_fork(self) -> None:
        """In a forked child: drop the parent's sender, spool handles and locks."""
        for spool in (self._spool, self._claimed_spool):
            if spool is not None:
                if spool.lock is not None:
                    spool.lock.forget()
                _INHERITED.append(spool)  # never closed (nor collected) in the child
        self._spool = self._claimed_spool = None
        self._task = None
        self._loop = None
        self._stopping = self._closed = True
        self._buffer.clear()
        self._lock = threading.Lock()

    def _resolve_spooled(self, items: list[_Item]) -> None:
        for item in items:
            fut = item.future
            if fut is not None and not fut.done():
                # Futures belong to the producer's loop; overflow may run on another thread.
                if threading.get_ident() == self._loop_thread:
                    fut.set_result(Receipt(item.id, "spooled"))
                elif self._loop is not None:
                    self._loop.call_soon_threadsafe(_set_if_pending, fut, item.id)


#: Spools inherited through fork: kept referenced so the child never closes the parent's
#: SQLite connections (a close could checkpoint or remove the parent's WAL).
_INHERITED: list[Spool] = []


def _set_if_pending(fut: asyncio.Future[Receipt], event_id: str) -> None:
    if not fut.done():
        fut.set_result(Receipt(event_id, "spooled"))
