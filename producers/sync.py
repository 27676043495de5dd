"""A blocking facade for code without an event loop (Django, Flask, scripts).

The async :class:`~producers.AuditProducer` runs on a private event loop in a daemon
thread. Every method is thread-safe. At interpreter exit the producer is closed
(flushed: events are acknowledged or spooled) unless ``close_at_exit=False``.

Durable by default: unless ``durable=False``, ``emit`` and ``emit_nowait`` return
only once the event is committed to the on-disk spool (a per-process file in
``config.spool_dir``, or :func:`~producers.spool.default_spool_dir` when the config
has no spool), and the background thread drains the spool into Kafka; it also drains
the files that dead processes left in the same directory. A process killed at any
moment therefore loses nothing it was handed.

Exit: ``atexit`` closes the producer. When started from the main thread it also
chains a SIGTERM handler: buffered events (non-durable mode) are spooled before the
previous handler runs (gunicorn's and uwsgi's graceful shutdown keep working); with
the default disposition the producer is closed and the process then terminated as
before. After ``os.fork()`` the child drops the parent's producer state (a child must
start its own producer).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import threading
import weakref
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from types import FrameType, TracebackType
from typing import Any, TypeVar

from audit_events.schema import AuditEvent
from producers.config import ProducerConfig
from producers.errors import ProducerClosed
from producers.producer import AuditProducer, ProducerStats, Receipt
from producers.spool import default_spool_dir
from producers.transport import Transport

log = logging.getLogger("auditstream.producer")
T = TypeVar("T")


class SyncAuditProducer:
    def __init__(
        self,
        config: ProducerConfig,
        *,
        transport: Transport | None = None,
        close_at_exit: bool = True,
        exit_timeout: float = 10.0,
        durable: bool = True,
        handle_sigterm: bool = True,
    ) -> None:
        if durable and not config.has_spool:
            config = replace(config, spool_dir=default_spool_dir(config.service))
        config = replace(config, durable=durable and config.has_spool)
        self.config = config
        self._producer = AuditProducer(config, transport)
        self._pid = os.getpid()
        self._handle_sigterm = handle_sigterm
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._close_at_exit = close_at_exit
        self._exit_timeout = exit_timeout
        self._lock = threading.Lock()

    def start(self, *, wait_connected: bool = True, timeout: float = 60.0) -> SyncAuditProducer:
        """Start the loop thread and the producer (see :meth:`AuditProducer.start`)."""
        with self._lock:
            if self._thread is not None:
                return self
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=run, name="auditstream-producer", daemon=True)
            thread.start()
            ready.wait()
            self._loop, self._thread = loop, thread
        try:
            self._call(self._producer.start(wait_connected=wait_connected), timeout)
        except BaseException:
            self._stop_loop()
            raise
        if self._close_at_exit:
            atexit.register(self._close_at_interpreter_exit)
        _track(self)
        return self

    def emit(
        self,
        event: AuditEvent | Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> Receipt:
        """Validate, send and block until acknowledged or spooled (see ``AuditProducer.emit``)."""
        ev = self._producer.prepare(event, **fields)  # InvalidEvent raised in the caller
        if self.config.durable:  # committed to the spool in this thread: no hop
            return Receipt(self._producer.emit_nowait(ev), "spooled")
        return self._call(self._producer.emit(ev, timeout=timeout), None)

    def emit_batch(
        self, events: Iterable[AuditEvent | Mapping[str, Any]], *, timeout: float | None = None
    ) -> list[Receipt]:
        prepared = [self._producer.prepare(e) for e in events]
        return self._call(self._producer.emit_batch(prepared, timeout=timeout), None)

    def emit_nowait(
        self, event: AuditEvent | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> str:
        """Validate and queue; returns the id at once (see ``AuditProducer.emit_nowait``)."""
        return self._producer.emit_nowait(event, **fields)

    def flush(self, timeout: float | None = None) -> None:
        self._call(self._producer.flush(timeout), None)

    def wait_spool_empty(self, timeout: float) -> None:
        self._call(self._producer.wait_spool_empty(timeout), None)

    @property
    def spool_size(self) -> int:
        return self._producer.spool_size

    def stats(self) -> ProducerStats:
        return self._producer.stats()

    def close(self, timeout: float = 30.0) -> None:
        """Flush, stop the producer and its thread. Idempotent."""
        with self._lock:
            if self._loop is None:
                return
        if self._close_at_exit:
            atexit.unregister(self._close_at_interpreter_exit)
        try:
            self._call(self._producer.close(timeout), timeout + 10)
        finally:
            self._stop_loop()

    def __enter__(self) -> SyncAuditProducer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _close_at_interpreter_exit(self) -> None:
        if os.getpid() != self._pid:
            return  # a forked child: the producer belongs to the parent
        try:
            self.close(self._exit_timeout)
        except Exception:
            log.exception("closing the audit producer at exit")

    def _on_sigterm(self, terminating: bool) -> None:
        """SIGTERM arrived: spool what is in memory; close when the process dies now."""
        if os.getpid() != self._pid or self._loop is None:
            return
        try:
            if terminating:
                self.close(self._exit_timeout)
            elif not self.config.durable:
                self.flush(self._exit_timeout)
        except Exception:
            log.exception("flushing the audit producer on SIGTERM")

    def _after_fork_in_child(self) -> None:
        """The loop thread did not survive the fork: forget the parent's producer."""
        with contextlib.suppress(Exception):
            self._producer._forget_after_fork()
        self._loop = self._thread = None
        self._lock = threading.Lock()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            raise ProducerClosed("the producer is not running; call start() first")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no answer from the producer thread within {timeout}s") from None

    def _stop_loop(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10)
        with contextlib.suppress(RuntimeError):
            loop.close()


# --- process-wide hooks: fork and SIGTERM --------------------------------------------

_live: weakref.WeakSet[SyncAuditProducer] = weakref.WeakSet()
_hooks_lock = threading.Lock()
_previous_sigterm: Any = None
_sigterm_installed = False
_fork_hook_installed = False


def _track(producer: SyncAuditProducer) -> None:
    global _fork_hook_installed
    with _hooks_lock:
        _live.add(producer)
        if not _fork_hook_installed:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook_installed = True
    if producer._handle_sigterm:
        _install_sigterm()


def _after_fork_in_child() -> None:
    global _hooks_lock
    _hooks_lock = threading.Lock()
    for producer in list(_live):
        producer._after_fork_in_child()
    _live.clear()


def _install_sigterm() -> None:
    global _previous_sigterm, _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        _previous_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError) as exc:  # not the main interpreter, or no signals
        log.debug("no SIGTERM handler installed: %r", exc)
        return
    _sigterm_installed = True


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    previous = _previous_sigterm
    terminating = previous in (signal.SIG_DFL, None)
    for producer in list(_live):
        producer._on_sigterm(terminating)
    if callable(previous):
        previous(signum, frame)
    elif terminating:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
