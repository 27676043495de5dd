"""Exceptions raised by the producer SDK. All derive from :class:`ProducerError`."""

from __future__ import annotations


class ProducerError(Exception):
    """Base class of the SDK's errors."""


class InvalidEvent(ProducerError, ValueError):
    """The event failed local validation; nothing was sent.

    ``errors`` lists ``(field, message)`` pairs; ``field`` is a dotted path such as
    ``"actor.id"`` or ``"tenant"``. The message names every offending field.
    """

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("invalid audit event: " + "; ".join(f"{f}: {m}" for f, m in errors))

    @property
    def fields(self) -> list[str]:
        return [f for f, _ in self.errors]


class BufferFull(ProducerError):
    """``emit_nowait`` found the in-memory buffer full and no spool is configured."""


class SpoolFull(ProducerError):
    """The on-disk spool reached its bound; the event was not accepted (never dropped)."""


class DeliveryFailed(ProducerError):
    """Kafka did not acknowledge the event in time and no spool is configured.

    The event may still arrive later; its id is an idempotency key, so emitting it
    again is safe.
    """


class ProducerClosed(ProducerError):
    """The producer is closed (or was never started)."""
