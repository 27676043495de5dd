"""The audit event of an admin change made with the CLI (``auditstream retention``,
``auditstream streams``): published to the tenant's trail as the API publishes its
own (query_api/admin_requests.py), actor ``cli:<user>``."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
from typing import Any

from audit_events.settings import AuditSettings

PUBLISH_TIMEOUT_SECONDS = 15.0
SERVICE = "auditstream-cli"


def cli_actor() -> str:
    """Who made a change with the CLI: ``cli:<the OS user>``."""
    return f"cli:{getpass.getuser()}"


async def publish_admin_event(settings: AuditSettings, fields: dict[str, Any]) -> str | None:
    """Publish the audit event ``fields`` (validated by AuditEvent) to the tenant's
    trail; None once Kafka acknowledged it, else why not (the change is saved either
    way: the caller says so and exits 1)."""
    from audit_events.codec import encode_event
    from audit_events.schema import AuditEvent
    from audit_events.topics import partition_key
    from query_api.publisher import Publisher

    event = AuditEvent.model_validate(fields)
    publisher = Publisher(settings)
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
            await publisher.start()
            await publisher.publish([(partition_key(event.tenant), encode_event(event))])
    except Exception as exc:
        return str(exc) or type(exc).__name__
    finally:
        with contextlib.suppress(Exception):
            await publisher.stop()
    return None
