"""Correcting one field of the actor (or source, context) keeps the others (issue 20, 16)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from audit_events.chain import CORRECTED_ACTION
from audit_events.codec import corrected_view
from audit_events.settings import AuditSettings
from tests.helpers import Store, bearer, make_event

pytestmark = pytest.mark.integration


async def published_control(settings: AuditSettings, control_id: str) -> dict[str, Any]:
    """The control event the API published, read back from the events topic."""
    consumer = AIOKafkaConsumer(
        settings.topic_events,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(20):
            async for record in consumer:
                event: dict[str, Any] = orjson.loads(record.value or b"{}")
                if event.get("id") == control_id:
                    return event
    finally:
        await consumer.stop()
    raise AssertionError("control event not found")


async def test_correcting_actor_id_keeps_actor_type_and_name(
    http: httpx.AsyncClient, settings: AuditSettings, db: Store
) -> None:
    event = make_event(1, actor={"id": "svc-billing", "type": "service", "name": "billing-worker"})
    await db.put([event])
    admin = bearer(settings, scopes="events:read events:admin")
    put = await http.put(
        f"/v1/events/{event.id}",
        json={"reason": "wrong worker id", "set": {"actor": {"id": "svc-billing-2"}}},
        headers=admin,
    )
    assert put.status_code == 202, put.text
    control = await published_control(settings, put.json()["id"])
    assert control["action"] == CORRECTED_ACTION
    # Published as named; amended field by field when applied and read, so a concurrent
    # correction of the actor's name is kept too (test_races_events.py).
    assert control["metadata"]["set"] == {"actor": {"id": "svc-billing-2"}}
    applied = {"actor": event.actor.model_dump(exclude_none=True) if event.actor else None}
    applied["corrections"] = [{"set": control["metadata"]["set"]}]
    assert corrected_view(applied)["actor"] == {
        "id": "svc-billing-2",
        "type": "service",
        "name": "billing-worker",
    }
