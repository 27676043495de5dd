"""The events collection as the processor opens it."""

from __future__ import annotations

from typing import Any

from pymongo import IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.mongo_client import AsyncMongoClient

from audit_events.settings import AuditSettings
from audit_events.storage import EVENT_INDEXES, EVENTS_COLLECTION


def events_collection(
    client: AsyncMongoClient[dict[str, Any]], settings: AuditSettings
) -> AsyncCollection[dict[str, Any]]:
    return client[settings.mongo_db][EVENTS_COLLECTION]


async def ensure_indexes(collection: AsyncCollection[dict[str, Any]]) -> None:
    """Create the query indexes; idempotent, safe on every start."""
    await collection.create_indexes([IndexModel(keys, name=name) for name, keys in EVENT_INDEXES])
