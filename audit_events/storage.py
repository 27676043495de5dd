"""Where events live in MongoDB: collection names and index specs as plain data.

Both the processor (writer) and the query API (reader) create these indexes
idempotently at start; neither imports the other.
"""

from __future__ import annotations

EVENTS_COLLECTION = "events"
USERS_COLLECTION = "users"

# (name, [(field, direction)]) — 1 ascending, -1 descending.
EVENT_INDEXES: list[tuple[str, list[tuple[str, int]]]] = [
    ("tenant_time", [("tenant", 1), ("occurred_at", -1), ("_id", -1)]),
    ("tenant_action_time", [("tenant", 1), ("action", 1), ("occurred_at", -1), ("_id", -1)]),
    ("tenant_actor_time", [("tenant", 1), ("actor.id", 1), ("occurred_at", -1), ("_id", -1)]),
    (
        "tenant_target_time",
        [("tenant", 1), ("targets.type", 1), ("targets.id", 1), ("occurred_at", -1), ("_id", -1)],
    ),
    ("tenant_search_time", [("tenant", 1), ("search", 1), ("occurred_at", -1), ("_id", -1)]),
]
