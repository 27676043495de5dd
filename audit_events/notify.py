"""Redis pub/sub channel on which the processor announces stored batches.

After a batch is durable in MongoDB (and its cache generations were bumped,
in the same pipeline) the processor publishes the tenant's name on
:func:`stored_channel`; ``?wait=true`` requests wake on it instead of polling.
Best effort: a lost message only delays a waiter until its fallback query.
"""

from __future__ import annotations

from audit_events.cache_keys import PREFIX

STORED_PATTERN = f"{PREFIX}:stored:*"


def stored_channel(tenant: str) -> str:
    return f"{PREFIX}:stored:{tenant}"


def tenant_of(channel: str | bytes) -> str:
    name = channel.decode() if isinstance(channel, bytes) else channel
    return name[len(STORED_PATTERN) - 1 :]
