"""Verified tokens are cached by the token (issue 18): parsed once, bounded by exp."""

from __future__ import annotations

import time

import jwt
import pytest
from pydantic import SecretStr

from audit_events.settings import AuditSettings
from query_api.auth import TokenVerifier, mint_token
from query_api.problems import Problem

pytestmark = pytest.mark.unit
SECRET = "unit-secret-0123456789abcdef0123456789"


def settings() -> AuditSettings:
    return AuditSettings(jwt_secret=SecretStr(SECRET))


async def test_a_token_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = TokenVerifier(settings())
    token = mint_token(settings(), subject="alice", tenant="acme", scopes=["events:read"])
    calls = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = await verifier.verify(token)
    assert await verifier.verify(token) == first
    assert len(calls) == 1


async def test_a_cached_token_is_verified_again_after_its_exp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verifier = TokenVerifier(settings())
    exp = int(time.time()) + 30
    claims = {"sub": "alice", "tenant": "acme", "scope": "events:read", "exp": exp}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    calls = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    await verifier.verify(token)
    verifier.clock = lambda: exp - 0.5
    await verifier.verify(token)
    assert len(calls) == 1
    verifier.clock = lambda: exp + 0.5  # past exp: not served from the cache
    await verifier.verify(token)  # (PyJWT's own clock says it is still valid)
    assert len(calls) == 2


async def test_bad_tokens_are_not_cached_and_the_cache_is_bounded() -> None:
    verifier = TokenVerifier(settings())
    with pytest.raises(Problem):
        await verifier.verify("not.a.token")
    assert verifier._verified == {}
    verifier.VERIFIED_MAX = 3
    for n in range(5):
        token = mint_token(settings(), subject=f"u{n}", tenant="acme", scopes=["events:read"])
        await verifier.verify(token)
    assert len(verifier._verified) == 3
