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
"""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "as:v1"


def tenant_generation(tenant: str) -> str:
    return f"{PREFIX}:gen:t:{tenant}"


def target_generation(tenant: str, target_type: str, target_id: str) -> str:
    digest = hashlib.sha256(f"{target_type}\x00{target_id}".encode()).hexdigest()[:32]
    return f"{PREFIX}:gen:o:{tenant}:{digest}"


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


def query_key(kind: str, tenant: str, generations: list[int], normalized_query: str) -> str:
    """Key of a cached read of ``kind`` under the given scope generations."""
    digest = hashlib.sha256(normalized_query.encode()).hexdigest()[:40]
    gens = ".".join(str(g) for g in generations)
    return f"{PREFIX}:q:{kind}:{tenant}:{gens}:{digest}"
