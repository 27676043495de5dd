"""auditstream producers: the SDK services use to emit audit events.

- :class:`AuditProducer` — async (aiokafka): ``await emit(...)`` returns once the
  broker acknowledged (or the event is durably spooled), ``emit_nowait(...)`` is
  fire-and-forget into a bounded buffer.
- :class:`SyncAuditProducer` — the same for Django, Flask and scripts (a background
  event-loop thread; flushes at interpreter exit).
- :class:`Spool` — the bounded on-disk (SQLite) spool that keeps events while Kafka
  is unreachable.
- :mod:`producers.asgi` — ASGI middleware; :mod:`producers.django_backend` — a
  django-easy-audit logging backend; :mod:`producers.loadgen` — realistic load.

Imports only the core ``audit_events`` package.
"""

from producers.config import ProducerConfig
from producers.errors import (
    BufferFull,
    DeliveryFailed,
    InvalidEvent,
    ProducerClosed,
    ProducerError,
    SpoolFull,
)
from producers.events import build_event
from producers.producer import AuditProducer, Receipt
from producers.spool import Spool
from producers.sync import SyncAuditProducer

__all__ = [
    "AuditProducer",
    "BufferFull",
    "DeliveryFailed",
    "InvalidEvent",
    "ProducerClosed",
    "ProducerConfig",
    "ProducerError",
    "Receipt",
    "Spool",
    "SpoolFull",
    "SyncAuditProducer",
    "build_event",
]
