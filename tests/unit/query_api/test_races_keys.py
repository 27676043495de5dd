"""Concurrent requests against the JWKS key set (query_api/keys.py), without servers:
tokens arriving at once that all find the set stale or name an unknown ``kid`` cause
one fetch from the issuer, not one each."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from query_api.keys import KeySet, public_jwk

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("why", ["unknown kid", "stale set"])
async def test_concurrent_tokens_fetch_the_jwks_once(why: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    fetched: list[str] = []
    now = [1000.0]

    async def fetch(url: str) -> bytes:
        fetched.append(url)
        await asyncio.sleep(0.01)  # the issuer answers in 10 ms
        return orjson.dumps({"keys": [public_jwk(key, "k1", "RS256")]})

    ks = KeySet(
        path=None, url="https://idp/jwks", refresh_seconds=300, fetch=fetch, clock=lambda: now[0]
    )
    await ks.start()
    assert len(fetched) == 1
    now[0] += KeySet.min_refetch_seconds if why == "unknown kid" else 300
    kid = "garbage" if why == "unknown kid" else "k1"
    found = await asyncio.gather(*(ks.key_for(kid) for _ in range(20)))
    assert len(fetched) == 2, f"{len(fetched) - 1} fetches for 20 tokens at once"
    assert all((k is None) == (kid == "garbage") for k in found)
