"""Token verification and JWKS handling, without servers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from audit_events.settings import AuditSettings
from query_api.auth import TokenVerifier, mint_token
from query_api.keys import KeySet, parse_jwks, public_jwk
from query_api.problems import Problem

pytestmark = pytest.mark.unit
SECRET = "unit-secret-0123456789abcdef-0123456789"


def settings(**kw: Any) -> AuditSettings:
    return AuditSettings(jwt_secret=SecretStr(SECRET), **kw)


def claims(**kw: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "s", "tenant": "acme", "scope": "events:read", "exp": now + 60, **kw}


async def verify(v: TokenVerifier, token: str) -> int | str:
    try:
        return (await v.verify(token)).subject
    except Problem as exc:
        assert exc.headers["WWW-Authenticate"].startswith("Bearer")
        return exc.status


async def test_minted_token_round_trips() -> None:
    s = settings(jwt_audience="api", jwt_issuer="me")
    token = mint_token(s, subject="alice", tenant=["a", "b"], scopes=["events:read"])
    principal = await TokenVerifier(s).verify(token)
    assert principal.subject == "alice"
    assert principal.tenants == frozenset({"a", "b"})
    assert principal.scopes == frozenset({"events:read"})
    star = await TokenVerifier(s).verify(mint_token(s, subject="op", tenant="*", scopes=[]))
    assert star.tenants is None and star.may_access("anything")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "s"),
        ({"exp": -31}, 401),  # times are seconds relative to now, resolved at run time
        ({"exp": -10}, "s"),  # inside the 30 s leeway
        ({"nbf": 120}, 401),
        ({"iat": 120}, 401),
        ({"tenant": ""}, 401),
        ({"tenant": ["a", 3]}, 401),
        ({"tenant": {"$ne": None}}, 401),
        ({"scope": ["events:read"]}, 401),
    ],
)
async def test_claim_rules(overrides: dict[str, Any], expected: int | str) -> None:
    now = int(time.time())
    relative = {k: now + v for k, v in overrides.items() if k in ("exp", "nbf", "iat")}
    token = jwt.encode(claims(**{**overrides, **relative}), SECRET, algorithm="HS256")
    assert await verify(TokenVerifier(settings()), token) == expected


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("kind", ["numeric string", "bool", "padded string"])
async def test_time_claims_must_be_json_numbers(claim: str, kind: str) -> None:
    # PyJWT runs int() on them, which accepts "9999999999" (and True); RFC 7519
    # says NumericDate is a JSON number.
    now = int(time.time())
    value = {"exp": now + 600, "nbf": now - 5, "iat": now - 5}[claim]
    forged: Any = {"numeric string": str(value), "bool": True, "padded string": f" {value} "}
    token = jwt.encode(claims(**{claim: forged[kind]}), SECRET, algorithm="HS256")
    assert await verify(TokenVerifier(settings()), token) == 401
    ok = jwt.encode(claims(**{claim: float(value)}), SECRET, algorithm="HS256")
    assert await verify(TokenVerifier(settings()), ok) == "s"  # a float is a JSON number


async def test_algorithms_are_fixed_by_configuration() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    hs_only = TokenVerifier(settings())
    assert hs_only.algorithms == frozenset({"HS256"})
    rs = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k"})
    assert await verify(hs_only, rs) == 401
    no_hs = TokenVerifier(settings(jwt_algorithms=["RS256"]))
    assert no_hs.algorithms == frozenset()  # RS256 allowed but no JWKS configured
    assert await verify(no_hs, jwt.encode(claims(), SECRET, algorithm="HS256")) == 401


def test_parse_jwks_keeps_only_asymmetric_signing_keys() -> None:
    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    doc = {
        "keys": [
            public_jwk(rsa_pub, "r1", "RS256"),
            public_jwk(ec_pub, "e1", "ES256"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**public_jwk(rsa_pub, "enc", "RS256"), "use": "enc"},
            {**public_jwk(rsa_pub, "x", "RS256"), "kid": None},
            {"kty": "RSA", "kid": "broken"},
        ]
    }
    keys = parse_jwks(orjson.dumps(doc))
    assert sorted(keys) == ["e1", "r1"]
    assert keys["r1"].algorithm_name == "RS256" and keys["e1"].algorithm_name == "ES256"
    with pytest.raises(ValueError):
        parse_jwks(b"[1,2]")
    with pytest.raises(ValueError):
        parse_jwks(b"not json")


async def test_url_keyset_refetches_unknown_kids_at_most_every_interval() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    docs = [{"keys": []}, {"keys": [public_jwk(key, "new", "RS256")]}]
    fetched: list[str] = []
    now = [1000.0]

    async def fetch(url: str) -> bytes:
        fetched.append(url)
        return orjson.dumps(docs[min(len(fetched) - 1, 1)])

    ks = KeySet(
        path=None, url="https://idp/jwks", refresh_seconds=300, fetch=fetch, clock=lambda: now[0]
    )
    await ks.start()
    assert await ks.key_for("new") is None  # just fetched: no refetch within the interval
    assert len(fetched) == 1
    now[0] += KeySet.min_refetch_seconds
    assert (await ks.key_for("new")) is not None
    assert len(fetched) == 2
    for _ in range(5):  # garbage kids do not hammer the issuer
        assert await ks.key_for("garbage") is None
    assert len(fetched) == 2


async def test_file_keyset_rereads_a_changed_file(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "jwks.json"
    path.write_bytes(b'{"keys": []}')
    ks = KeySet(path=str(path), url=None, refresh_seconds=300)
    await ks.start()
    assert await ks.key_for("e") is None
    tmp = tmp_path / "new.json"
    tmp.write_bytes(orjson.dumps({"keys": [public_jwk(key.public_key(), "e", "ES256")]}))
    tmp.replace(path)
    assert await ks.key_for("e") is not None
    token = jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "e"})
    v = TokenVerifier(settings(jwt_algorithms=["ES256"], jwks_path=str(path)), ks)
    assert await verify(v, token) == "s"


async def test_account_check_caches_and_decides() -> None:
    from pymongo.errors import ServerSelectionTimeoutError

    from query_api.auth import AccountCache, Principal

    now = [100.0]
    accounts: dict[str, tuple[bool, int]] = {"alice": (False, 2)}
    calls: list[str] = []
    down = [False]

    async def lookup(name: str) -> tuple[bool, int] | None:
        calls.append(name)
        if down[0]:
            raise ServerSelectionTimeoutError("store away")
        return accounts.get(name)

    v = TokenVerifier(settings(account_check_seconds=5))
    v.accounts = AccountCache(5, clock=lambda: now[0])

    def who(sub: str, version: int | None) -> Principal:
        return Principal(sub, frozenset({"acme"}), frozenset(), version)

    async def status(sub: str, version: int | None) -> int:
        try:
            await v.check_account(who(sub, version), lookup)
        except Problem as exc:
            return exc.status
        return 200

    assert await status("alice", 2) == 200
    assert await status("alice", 1) == 401  # issued before a rotation
    assert await status("alice", None) == 401  # an old token without the claim: version 0
    assert await status("dev", None) == 200  # no such account: not affected
    assert await status("gone", 3) == 401  # minted for an account that no longer exists
    assert calls == ["alice", "dev", "gone"]  # cached for 5 s
    accounts["alice"] = (True, 3)
    assert await status("alice", 2) == 200  # still inside the cache window
    now[0] += 5
    assert await status("alice", 3) == 401  # disabled
    down[0] = True
    now[0] += 5
    assert await status("alice", 3) == 401  # the last known state serves during an outage
    now[0] += 60
    assert await status("alice", 3) == 503  # ... for at most 60 s
    assert await status("unseen", None) == 503


async def test_a_foreign_token_version_claim_is_ignored() -> None:
    token = jwt.encode(claims(token_version="v7"), SECRET, algorithm="HS256")
    principal = await TokenVerifier(settings()).verify(token)
    assert principal.token_version is None
    minted = mint_token(settings(), subject="a", tenant="t", scopes=[], token_version=4)
    assert (await TokenVerifier(settings()).verify(minted)).token_version == 4
