"""Where events live in MongoDB: collection names and index specs as plain data.

Both the processor (writer) and the query API (reader) create these indexes
idempotently at start; neither imports the other.
"""

from __future__ import annotations

EVENTS_COLLECTION = "events"
USERS_COLLECTION = "users"

# (name, [(field, direction)]) — 1 ascending, -1 descending. Every list-shaped read
# (query_api/listing.py: list, history, export, the as-of fold) asks the store for
# the tenant, ONE ``search`` value and an ``occurred_at`` range, sorted by
# ``(occurred_at, _id)``; every other clause is checked after the range. The
# ``search`` array (audit_events/codec.py search_terms) holds the ``q`` words and
# one token per indexed attribute, so one multikey index serves every filter:
#   no filter, actor_type, outcome, crud, source, action prefix, target_type,
#     since/until -> "*" (every event has it)
#   action (exact) -> "c:<action>";  actor -> "a:<actor id>"
#   target_id, with or without target_type -> "t:<target id>" (one per target; the
#     type is checked after the range: one object id rarely has several types)
#   q (its first word) -> the word
# Chain reads (verify, streams, replay, the processor's probes) use tenant_seq
# (CHAIN_INDEX), get-by-id and ?wait=true use _id. Fewer indexes and index entries
# per event is the store's cost per event (bench/bench_store_cpu.py): 3 indexes and
# ~12.8 entries per event now (~6.8 words, 4 tokens, _id, tenant_seq).
# RETIRED_EVENT_INDEXES lists what earlier versions created and nothing reads any more.
EVENT_INDEXES: list[tuple[str, list[tuple[str, int]]]] = [
    ("tenant_search_time", [("tenant", 1), ("search", 1), ("occurred_at", -1), ("_id", -1)]),
]

# Indexes earlier versions created on the events collection that no query uses now
# (each cost one index entry per event, or one per target). Nothing drops them
# automatically: dropping is an operator step (docs/operations.md, "Index changes"),
# after ``auditstream reindex-search`` gave every stored event its tokens.
RETIRED_EVENT_INDEXES: tuple[str, ...] = (
    "tenant_target_time",  # (tenant, targets.type, targets.id, …): api_target_id_time
    "api_actor_type_time",  # low-cardinality filters: tenant_time + the matcher
    "api_outcome_time",
    "api_crud_time",
    "api_source_time",
    # Since the search tokens (issue 18): tenant_search_time serves these filters.
    "tenant_time",  # "*"
    "tenant_action_time",  # "c:<action>"
    "tenant_actor_time",  # "a:<actor id>"
    "api_target_id_time",  # "t:<target id>"
)

# The tenant chain's UNIQUE index: one event per (tenant, seq), so two writers can
# never fork a chain. Created by the chain writers (processor, replay) only, through
# audit_events.store_adapter.ensure_chain_index: partial ({seq: {$exists: true}}) on
# MongoDB; not partial on SecantusDB, which ignores partial indexes when planning
# queries, so there documents without a seq (e.g. seeded directly by tests) collide.
CHAIN_INDEX: tuple[str, list[tuple[str, int]]] = ("tenant_seq", [("tenant", 1), ("seq", 1)])

CHECKPOINTS_COLLECTION = "checkpoints"
REPLAY_STATE_COLLECTION = "replay_state"
REPLAY_COLLECTION = "events_replay"
# Journal of ``auditstream migrate-ids`` (documents being moved to their per-tenant _id).
MIGRATE_IDS_COLLECTION = "migrate_ids"
# Progress of ``auditstream reindex-search`` (the search tokens of stored events).
REINDEX_SEARCH_COLLECTION = "reindex_search"


def event_key(tenant: str, event_id: str) -> str:
    """The stored ``_id`` of ``tenant``'s event ``event_id``: ``"{tenant}/{event_id}"``.

    An event is identified by (tenant, id): the same client id in two tenants is
    two events. Tenants cannot contain ``/`` (schema), so the key is unambiguous,
    and every key of one tenant shares its prefix, so ``_id`` tie-breakers in the
    ``(tenant, …, _id)`` indexes order a tenant's events by their client id.
    The client id itself is stored in the ``id`` field.
    """
    return f"{tenant}/{event_id}"
