"""Verified tokens are cached by the token (issue 18): parsed once, bounded by exp."""

from __future__ import annotations

import asyncio
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


async def test_an_expired_token_is_rejected_after_its_exp_though_it_was_cached() -> None:
    """The cache is bounded by exp on the real clock: once past it, the token is
    decoded again and PyJWT refuses it (no leeway here)."""
    verifier = TokenVerifier(AuditSettings(jwt_secret=SecretStr(SECRET), jwt_leeway_seconds=0))
    exp = int(time.time()) + 2  # whole seconds: 1..2 s from now
    claims = {"sub": "alice", "tenant": "acme", "scope": "events:read", "exp": exp}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    await verifier.verify(token)
    assert token in verifier._verified
    await asyncio.sleep(exp - time.time() + 0.05)
    with pytest.raises(Problem) as refused:
        await verifier.verify(token)
    assert refused.value.status == 401 and "expired" in refused.value.detail
    assert token not in verifier._verified


async def test_a_revoked_token_is_rejected_though_its_signature_is_cached() -> None:
    """Only the signature check is cached: the account (disabled, re-keyed) is
    checked on every request (AccountCache, its own short TTL)."""
    verifier = TokenVerifier(AuditSettings(jwt_secret=SecretStr(SECRET), account_check_seconds=0))
    token = mint_token(
        settings(), subject="alice", tenant="acme", scopes=["events:read"], token_version=1
    )
    account = {"disabled": False, "version": 1}

    async def lookup(subject: str) -> tuple[bool, int] | None:
        return account["disabled"], account["version"]  # type: ignore[return-value]

    principal = await verifier.verify(token)
    await verifier.check_account(principal, lookup)  # the account is fine
    account["version"] = 2  # secret rotated: tokens of version 1 revoked
    principal = await verifier.verify(token)  # served from the cache
    assert token in verifier._verified
    with pytest.raises(Problem) as refused:
        await verifier.check_account(principal, lookup)
    assert refused.value.status == 401 and "revoked" in refused.value.detail
    account.update(version=1, disabled=True)
    with pytest.raises(Problem) as refused:
        await verifier.check_account(await verifier.verify(token), lookup)
    assert refused.value.status == 401 and "disabled" in refused.value.detail
