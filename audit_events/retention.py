"""Per-tenant retention of the hot store (issue 16; docs/archive.md, "Retention").

Plain data and MongoDB access shared by the API (``/v1/retention``, the 410 of
a purged event, verify), the CLI (``auditstream retention``) and the purge job
(:mod:`stream_processor.retention`):

- ``retention``: one policy per tenant, ``{_id: tenant, days, version, set_at,
  set_by}`` (``version`` counts the changes: 1, 2, 3, ...); no document (or
  ``days: null``) keeps the tenant's events forever;
- ``retention_purges``: one purge marker per tenant, ``{_id: tenant,
  through_seq K, hash (of event K), purged_at, segment, partition, offset,
  epoch, purged (count)}``: events ``1..K`` left the hot store and are in the
  archive, segment ``segment`` holds event K. The verifier starts at ``K + 1``
  from ``hash``;
- ``purged_events``: a small stub per purged event (``_id`` = the event's key,
  ``seq``, ``segment``, ``partition``, ``offset``, ``epoch``, ``purged_at``) so
  ``GET /v1/events/{id}`` answers 410 with where it is archived, not 404.
"""

from __future__ import annotations

from contextlib import suppress
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from audit_events.storage import event_key

if TYPE_CHECKING:  # the core installs without pymongo
    from pymongo.asynchronous.collection import AsyncCollection
    from pymongo.asynchronous.database import AsyncDatabase

RETENTION_COLLECTION = "retention"
PURGES_COLLECTION = "retention_purges"
PURGED_EVENTS_COLLECTION = "purged_events"
MAX_DAYS = 36500  # a hundred years; unset keeps forever


class RetentionPolicy(BaseModel):
    """``{"days": N}`` keeps a tenant's events N days in the hot store; ``null``: forever."""

    model_config = ConfigDict(extra="forbid")

    days: int | None = Field(
        None,
        ge=1,
        le=MAX_DAYS,
        description="days an event stays in MongoDB after it was received; null keeps forever",
    )


def _iso(value: object) -> str | None:
    if not isinstance(value, datetime):
        return None
    at = value if value.tzinfo else value.replace(tzinfo=UTC)
    return at.isoformat().replace("+00:00", "Z")


def marker_view(marker: dict[str, Any] | None) -> dict[str, Any] | None:
    """A purge marker as JSON (what verify and ``/v1/retention`` report)."""
    if marker is None:
        return None
    out = {k: marker.get(k) for k in ("through_seq", "hash", "segment", "partition", "offset")}
    out.update(epoch=marker.get("epoch"), purged=marker.get("purged"))
    out["purged_at"] = _iso(marker.get("purged_at"))
    out["received_before"] = _iso(marker.get("received_before"))
    return out


def describe_marker(marker: dict[str, Any]) -> str:
    """``events up to seq K purged on D, archived in segment S``."""
    at = marker.get("purged_at")
    day = at if isinstance(at, str) else (_iso(at) or "?")
    return (
        f"events up to seq {marker.get('through_seq')} purged on {day[:10]},"
        f" archived in segment {marker.get('segment')}"
    )


async def get_policy(db: AsyncDatabase[dict[str, Any]], tenant: str) -> int | None:
    doc = await db[RETENTION_COLLECTION].find_one({"_id": tenant})
    days = None if doc is None else doc.get("days")
    return days if isinstance(days, int) else None


async def set_policy(
    db: AsyncDatabase[dict[str, Any]], tenant: str, days: int | None, *, by: str
) -> dict[str, Any]:
    """Save ``tenant``'s policy as its next ``version`` (1, 2, 3, ... one atomic update:
    concurrent changes each get their own number and the highest one is the policy,
    never a mix of two); returns the policy as this change saved it."""
    from pymongo import ReturnDocument
    from pymongo.errors import DuplicateKeyError

    coll = db[RETENTION_COLLECTION]
    # The document exists first (version 0 reads as "never set"), so the change below
    # is a plain atomic update that always matches and answers its own post-image.
    # One upsert that both creates and answers is not used: on SecantusDB the loser of
    # two first upserts matched the winner's new document and answered null.
    with suppress(DuplicateKeyError):  # MongoDB: two first upserts at once, one inserts
        await coll.update_one(
            {"_id": tenant},
            {"$setOnInsert": {"tenant": tenant, "days": None, "version": 0}},
            upsert=True,
        )
    doc: dict[str, Any] | None = await coll.find_one_and_update(
        {"_id": tenant},
        {
            "$set": {"tenant": tenant, "days": days, "set_at": datetime.now(UTC), "set_by": by},
            "$inc": {"version": 1},
        },
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:  # only if the policy was deleted in between (nothing deletes it)
        raise RuntimeError(f"the retention policy of {tenant!r} vanished while it was set")
    return doc


async def policies(db: AsyncDatabase[dict[str, Any]]) -> dict[str, int]:
    """Every tenant with a retention policy: ``{tenant: days}``."""
    out: dict[str, int] = {}
    async for doc in db[RETENTION_COLLECTION].find({"days": {"$type": "int"}}):
        out[str(doc["_id"])] = int(doc["days"])
    return out


async def purge_marker(db: AsyncDatabase[dict[str, Any]], tenant: str) -> dict[str, Any] | None:
    doc: dict[str, Any] | None = await db[PURGES_COLLECTION].find_one({"_id": tenant})
    return doc


async def purged_event(
    db: AsyncDatabase[dict[str, Any]], tenant: str, event_id: str
) -> dict[str, Any] | None:
    """Where a purged event is archived (None: it was never purged)."""
    doc = await db[PURGED_EVENTS_COLLECTION].find_one({"_id": event_key(tenant, event_id)})
    if doc is None:
        return None
    out = {k: doc.get(k) for k in ("seq", "segment", "partition", "offset", "epoch")}
    out["purged_at"] = _iso(doc.get("purged_at"))
    return out


async def policy_view(
    db: AsyncDatabase[dict[str, Any]], tenant: str, saved: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``{tenant, days, version, set_at, set_by, purge}`` (days null: kept forever;
    version 0: never set) of the stored policy, or of ``saved`` (what a change saved)."""
    doc = saved if saved is not None else await db[RETENTION_COLLECTION].find_one({"_id": tenant})
    doc = doc or {}
    return {
        "tenant": tenant,
        "days": doc.get("days"),
        "version": int(doc.get("version") or 0),
        "set_at": _iso(doc.get("set_at")),
        "set_by": doc.get("set_by"),
        "purge": marker_view(await purge_marker(db, tenant)),
    }


def purges_of(db: AsyncDatabase[dict[str, Any]]) -> AsyncCollection[dict[str, Any]]:
    return db[PURGES_COLLECTION]
