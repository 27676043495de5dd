"""Redis key builders for generation-keyed caching.

A read caches under a key that embeds the current generation of its scope; the
processor bumps generations (INCR) after each stored batch, so a new write makes
every older key unreachable without scanning. TTLs bound the rest.
"""

from __future__ import annotations

import hashlib

PREFIX = "as:v1"


def tenant_generation(tenant: str) -> str:
    return f"{PREFIX}:gen:t:{tenant}"


def target_generation(tenant: str, target_type: str, target_id: str) -> str:
    digest = hashlib.sha256(f"{target_type}\x00{target_id}".encode()).hexdigest()[:32]
    return f"{PREFIX}:gen:o:{tenant}:{digest}"


def query_key(kind: str, tenant: str, generations: list[int], normalized_query: str) -> str:
    """Key of a cached read of ``kind`` under the given scope generations."""
    digest = hashlib.sha256(normalized_query.encode()).hexdigest()[:40]
    gens = ".".join(str(g) for g in generations)
    return f"{PREFIX}:q:{kind}:{tenant}:{gens}:{digest}"
