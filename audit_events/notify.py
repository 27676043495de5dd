"""Redis pub/sub channel on which the processor announces stored batches.

After a batch is durable in MongoDB (and its cache generations were bumped,
in the same pipeline) the processor publishes on the tenant's
:func:`stored_channel` which of the tenant's events the batch stored
(:func:`stored_message`: event id -> content hash); ``?wait=true`` requests
wake on it instead of polling, and a request whose events are all named with
the content hashes it sent needs no look at the store. A message that names no
events (``{"stored": null}``: too many, a purge's or a replay's bump, or an
older processor's payload, the tenant's name) only says "look again".
Best effort: a lost message only delays a waiter until its fallback query.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from audit_events.cache_keys import PREFIX

STORED_PATTERN = f"{PREFIX}:stored:*"
#: Kafka record header the API sets on the events of a ``?wait=true`` request: on a
#: broker that holds empty fetches (Tansu) the worker then fetches with its short
#: wait for a while (stream_processor/kafka.py FetchWait); other records keep the
#: long wait, and the bigger batches it gives.
WAIT_HEADER = "auditstream-wait"
#: Past this many events of one tenant in one batch the message names none of
#: them (waiters look at the store): a bulk load's messages stay small.
MAX_NAMED_EVENTS = 500


def stored_channel(tenant: str) -> str:
    return f"{PREFIX}:stored:{tenant}"


def tenant_of(channel: str | bytes) -> str:
    name = channel.decode() if isinstance(channel, bytes) else channel
    return name[len(STORED_PATTERN) - 1 :]


def stored_message(stored: Iterable[Mapping[str, Any]] | None) -> bytes:
    """The payload naming ``stored`` (documents of one tenant, as stored), or none.

    ``None`` (or more than :data:`MAX_NAMED_EVENTS`, or a document without an
    ``id`` and ``content_hash``): ``{"stored": null}``, which names no event.
    """
    named: dict[str, str] | None = None
    if stored is not None:
        named = {}
        for doc in stored:
            event_id, digest = doc.get("id"), doc.get("content_hash")
            if not isinstance(event_id, str) or not isinstance(digest, str):
                named = None
                break
            named[event_id] = digest
            if len(named) > MAX_NAMED_EVENTS:
                named = None
                break
    return orjson.dumps({"stored": named})


def stored_events(payload: str | bytes) -> dict[str, str] | None:
    """``{event id: content hash}`` a :func:`stored_message` names; None when it names none."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None  # an older processor's payload: the tenant's name
    named = body.get("stored") if isinstance(body, dict) else None
    if not isinstance(named, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in named.items()):
        return None
    return named
