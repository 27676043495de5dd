"""Redis key builders for generation-keyed caching.

A read caches under a key that embeds the current generation of its scope; the
processor bumps generations (INCR) after each stored batch, so a new write makes
every older key unreachable without scanning. TTLs bound the rest.

Counters may be lost (a Redis restart or flush, an eviction, a counter's own
expiry): a counter that is created again must never repeat a value an older
cached entry was keyed on. So a counter never starts at 0: whoever finds it
missing (the processor bumping it, a reader reading it) creates it with a fresh
random 62-bit value (:func:`new_generation`), atomically (``SET NX`` / a script),
and every counter expires (:func:`generation_ttl_seconds`) so their number stays
bounded by the scopes written or read within that time. Entries cached under a
lost counter's values are unreachable and expire by their TTL.

Every key carries the deployment's namespace (:func:`cache_namespace`: its
MongoDB database), so two deployments sharing one Redis never read each
other's cached pages nor bump each other's counters. The API's reads and the
processor's invalidation build their keys here, from the same settings.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit_events.settings import AuditSettings

PREFIX = "as:v1"


def cache_namespace(settings: AuditSettings) -> str:
    """The deployment's cache namespace: its MongoDB database name.

    The API and the processor of one deployment share the database setting, so
    they agree on it; another deployment on the same Redis uses another database.
    """
    return settings.mongo_db


def scope(namespace: str) -> str:
    """The start of every key of the deployment ``namespace`` (cache, login throttle).

    ``db=`` keeps namespaced keys apart from PREFIX's other keys (``stored:``).
    """
    return f"{PREFIX}:db={namespace}"


def tenant_generation(namespace: str, tenant: str) -> str:
    return f"{scope(namespace)}:gen:t:{tenant}"


def target_generation(namespace: str, tenant: str, target_type: str, target_id: str) -> str:
    digest = hashlib.sha256(f"{target_type}\x00{target_id}".encode()).hexdigest()[:32]
    return f"{scope(namespace)}:gen:o:{tenant}:{digest}"


# Read-audit events (``auditstream.log.*``, query_api/read_audit.py): every read of
# the log stores one. They bump their own generation, not the tenant's, or each
# read would make the next one a cache miss; reads whose filter selects read-audit
# events only are keyed on it too (fresh), other reads show new read-audit
# events after the tenant's next other write or the cache TTL.
READ_AUDIT_PREFIX = "auditstream.log."


def read_audit_generation(namespace: str, tenant: str) -> str:
    return f"{scope(namespace)}:gen:r:{tenant}"


def generation_keys(namespace: str, documents: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every scope generation a stored batch changes: tenant (or its read-audit
    scope, for read-audit events), and tenant+target."""
    keys: set[str] = set()
    for doc in documents:
        tenant = doc["tenant"]
        if str(doc.get("action", "")).startswith(READ_AUDIT_PREFIX):
            keys.add(read_audit_generation(namespace, tenant))
        else:
            keys.add(tenant_generation(namespace, tenant))
        for target in doc.get("targets", ()):
            keys.add(target_generation(namespace, tenant, target["type"], target["id"]))
    return sorted(keys)


#: Bump one counter (KEYS[1]); ARGV: ttl seconds, a fresh value for a missing counter.
BUMP_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[2], 'NX')
local value = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return value
"""


def new_generation() -> int:
    """A fresh counter's first value: random in [2**61, 2**62), far from INCR's limit."""
    return (1 << 61) | secrets.randbits(61)


def generation_ttl_seconds(cache_ttl_seconds: int) -> int:
    """How long a counter lives after its last bump or creation (twice the cache TTL).

    Safety does not depend on it (a re-created counter starts at a new random value);
    it bounds the counters' memory, and is long enough that busy scopes keep theirs.
    """
    return max(60, 2 * cache_ttl_seconds)


def query_key(
    namespace: str, kind: str, tenant: str, generations: list[int], normalized_query: str
) -> str:
    """Key of a cached read of ``kind`` under the given scope generations."""
    digest = hashlib.sha256(normalized_query.encode()).hexdigest()[:40]
    gens = ".".join(str(g) for g in generations)
    return f"{scope(namespace)}:q:{kind}:{tenant}:{gens}:{digest}"
