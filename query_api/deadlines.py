"""Timeouts for many short awaits without a timer (or a task) each (issue 18).

``asyncio.wait_for`` runs its awaitable as a task of its own (Python 3.11) and
``asyncio.timeout`` schedules and cancels a timer handle on every use: on the
cached hit, a Redis round trip and the sending of the answer, that is 7-20 µs
per request of a request costing well under a millisecond. :class:`Deadlines`
instead notes ``(task, deadline)`` in a dict; one timer, armed only while
something is noted, checks every ``tick`` seconds and cancels the tasks whose
deadline passed. The awaiting code turns that cancellation into
``TimeoutError`` as ``asyncio.timeout`` does (``uncancel``), so a cancellation
from elsewhere (a client that went away, shutdown) still propagates as one.

A deadline fires between ``seconds`` and ``seconds + tick`` after it was set.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Deadlines:
    """Deadlines of running tasks, checked every ``tick`` seconds by one timer per loop."""

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self._due: dict[Deadline, float] = {}
        self._armed: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def after(self, seconds: float | None) -> Deadline:
        """An ``async with`` block whose task is cancelled once ``seconds`` have
        passed (``None``: never); leaving it then raises ``TimeoutError``."""
        return Deadline(self, seconds)

    def _note(self, deadline: Deadline, at: float, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:  # first use, or the previous loop is gone (tests)
            self._due.clear()
            self._loop, self._armed = loop, None
        self._due[deadline] = at
        if self._armed is None:
            self._armed = loop.call_later(self.tick, self._check, loop)

    def _drop(self, deadline: Deadline) -> None:
        self._due.pop(deadline, None)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._armed = None
        now = loop.time()
        for deadline, at in list(self._due.items()):
            if at <= now:
                del self._due[deadline]
                deadline.expire()
        if self._due:
            self._armed = loop.call_later(self.tick, self._check, loop)


class Deadline:
    """One ``async with`` use of :meth:`Deadlines.after` (not reusable)."""

    __slots__ = ("_cancelling", "_expired", "_owner", "_seconds", "_task")

    def __init__(self, owner: Deadlines, seconds: float | None) -> None:
        self._owner = owner
        self._seconds = seconds
        self._task: asyncio.Task[object] | None = None
        self._expired = False
        self._cancelling = 0

    async def __aenter__(self) -> Deadline:
        if self._seconds is not None:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("Deadline must be used inside a task")
            self._task = task
            self._cancelling = task.cancelling()
            loop = task.get_loop()
            self._owner._note(self, loop.time() + self._seconds, loop)
        return self

    def expire(self) -> None:
        if self._task is not None and not self._task.done():
            self._expired = True
            self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is None:
            return
        self._owner._drop(self)
        # As asyncio.timeout: our cancellation is withdrawn, and only ours becomes
        # TimeoutError (one from elsewhere, e.g. a client gone, stays a cancellation).
        expired = self._expired and self._task.uncancel() <= self._cancelling
        if expired and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
