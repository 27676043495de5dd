"""JWT attack suite over real HTTP: every forged, expired, misdirected or
malformed token is refused with the right status (401 + WWW-Authenticate:
Bearer, 403 for a missing scope or tenant, 404 for another tenant's id)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import os
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from audit_events.settings import AuditSettings
from tests.helpers import LiveApi, Store, make_event, serve_api

pytestmark = pytest.mark.integration

AUD, ISS = "auditstream-api", "https://issuer.example"
DROP = object()


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class Keys:
    def __init__(self, directory: Path) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.path = directory / "jwks.json"
        self.write({"rsa-1": ("RS256", self.rsa), "ec-1": ("ES256", self.ec)})

    def write(self, keys: dict[str, tuple[str, Any]]) -> None:
        from query_api.keys import public_jwk

        doc = {"keys": [public_jwk(k.public_key(), kid, alg) for kid, (alg, k) in keys.items()]}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(doc))
        os.replace(tmp, self.path)  # a new inode: rotation is noticed on the next unknown kid

    def rsa_public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "svc",
        "tenant": "acme",
        "scope": "events:read events:write",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "aud": AUD,
        "iss": ISS,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(payload))}.{b64(signature)}"


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


@pytest.fixture
def jwt_settings(settings: AuditSettings, keys: Keys) -> AuditSettings:
    return settings.model_copy(
        update={
            "jwks_path": str(keys.path),
            "jwt_algorithms": ["HS256", "RS256", "ES256"],
            "jwt_audience": AUD,
            "jwt_issuer": ISS,
        }
    )


@pytest.fixture
def api(jwt_settings: AuditSettings) -> Iterator[LiveApi]:
    live = serve_api(jwt_settings)
    yield live
    live.stop()


def secret(s: AuditSettings) -> str:
    assert s.jwt_secret is not None
    return s.jwt_secret.get_secret_value()


Forge = Callable[[Keys, AuditSettings], str]

# name -> (how to forge the token, expected status on GET /v1/events)
ATTACKS: dict[str, Forge] = {
    "alg none": lambda k, s: unsigned({"alg": "none", "typ": "JWT"}, claims()),
    "alg None with kid": lambda k, s: unsigned({"alg": "None", "kid": "rsa-1"}, claims()),
    "HS256 signed with the RSA public key": lambda k, s: _hmac_forge(k.rsa_public_pem(), None),
    "HS256 with RSA public key and its kid": lambda k, s: _hmac_forge(k.rsa_public_pem(), "rsa-1"),
    "expired": lambda k, s: jwt.encode(
        claims(exp=int(time.time()) - 600), secret(s), algorithm="HS256"
    ),
    "nbf in the future": lambda k, s: jwt.encode(
        claims(nbf=int(time.time()) + 600), secret(s), algorithm="HS256"
    ),
    "iat in the future": lambda k, s: jwt.encode(
        claims(iat=int(time.time()) + 600), secret(s), algorithm="HS256"
    ),
    "wrong aud": lambda k, s: jwt.encode(claims(aud="other-api"), secret(s), algorithm="HS256"),
    "missing aud": lambda k, s: jwt.encode(claims(aud=DROP), secret(s), algorithm="HS256"),
    "wrong iss": lambda k, s: jwt.encode(claims(iss="https://evil"), secret(s), algorithm="HS256"),
    "missing exp": lambda k, s: jwt.encode(claims(exp=DROP), secret(s), algorithm="HS256"),
    "missing sub": lambda k, s: jwt.encode(claims(sub=DROP), secret(s), algorithm="HS256"),
    "wrong HS256 secret": lambda k, s: jwt.encode(claims(), "x" * 40, algorithm="HS256"),
    "unknown kid": lambda k, s: jwt.encode(
        claims(), k.rsa, algorithm="RS256", headers={"kid": "rsa-9"}
    ),
    "garbage kid": lambda k, s: jwt.encode(
        claims(), k.rsa, algorithm="RS256", headers={"kid": "../../etc/passwd\x00" + "A" * 300}
    ),
    "non-string kid": lambda k, s: unsigned({"alg": "RS256", "kid": {"$ne": None}}, claims()),
    "missing kid": lambda k, s: jwt.encode(claims(), k.rsa, algorithm="RS256"),
    "RS256 by an attacker's key under a real kid": lambda k, s: jwt.encode(
        claims(), k.attacker, algorithm="RS256", headers={"kid": "rsa-1"}
    ),
    "RS256 header on the EC key's kid": lambda k, s: jwt.encode(
        claims(), k.rsa, algorithm="RS256", headers={"kid": "ec-1"}
    ),
    "tampered payload": lambda k, s: _tamper(jwt.encode(claims(), secret(s), algorithm="HS256")),
    "tampered RS256 payload": lambda k, s: _tamper(
        jwt.encode(claims(), k.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    ),
    "signature stripped": lambda k, s: (
        jwt.encode(claims(), secret(s), algorithm="HS256").rsplit(".", 1)[0] + "."
    ),
    "garbage": lambda k, s: "not-a-jwt",
    "three garbage segments": lambda k, s: "a.b.c",
    "algorithm not configured (HS512)": lambda k, s: jwt.encode(
        claims(), secret(s) * 2, algorithm="HS512"
    ),
    "tenant claim missing": lambda k, s: jwt.encode(
        claims(tenant=DROP), secret(s), algorithm="HS256"
    ),
}


def _hmac_forge(pem: bytes, kid: str | None) -> str:
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(claims()))}"
    sig = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def _tamper(token: str) -> str:
    head, payload, sig = token.split(".")
    body = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["tenant"] = "*"
    body["scope"] = "events:read events:write events:admin"
    return f"{head}.{b64(orjson.dumps(body))}.{sig}"


def test_attacks_are_each_rejected_with_401(
    api: LiveApi, keys: Keys, jwt_settings: AuditSettings
) -> None:
    results: dict[str, int] = {}
    with httpx.Client(base_url=api.url, timeout=30) as client:
        for name, forge in ATTACKS.items():
            resp = client.get(
                "/v1/events", headers={"Authorization": f"Bearer {forge(keys, jwt_settings)}"}
            )
            results[name] = resp.status_code
            assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer"), name
            assert resp.headers["Content-Type"] == "application/problem+json", name
        missing = client.get("/v1/events")
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith(
            "Bearer"
        )
    assert results == dict.fromkeys(ATTACKS, 401)
    print(f"\nJWT attack suite: {len(ATTACKS) + 1} forged/missing tokens, all 401")


def test_valid_tokens_of_each_algorithm_are_accepted(
    api: LiveApi, keys: Keys, jwt_settings: AuditSettings
) -> None:
    tokens = {
        "HS256": jwt.encode(claims(), secret(jwt_settings), algorithm="HS256"),
        "RS256": jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa-1"}),
        "ES256": jwt.encode(claims(), keys.ec, algorithm="ES256", headers={"kid": "ec-1"}),
        "small clock skew": jwt.encode(
            claims(nbf=int(time.time()) + 10, iat=int(time.time()) + 10),
            secret(jwt_settings),
            algorithm="HS256",
        ),
    }
    with httpx.Client(base_url=api.url, timeout=30) as client:
        statuses = {
            name: client.get("/v1/events", headers={"Authorization": f"Bearer {t}"}).status_code
            for name, t in tokens.items()
        }
    assert statuses == dict.fromkeys(tokens, 200)


async def test_other_tenant_and_missing_scope_are_refused(
    api: LiveApi, jwt_settings: AuditSettings, db: Store
) -> None:
    await db.put([make_event(1)])

    def auth(tenant: Any, scope: str = "events:read events:write") -> dict[str, str]:
        token = jwt.encode(
            claims(tenant=tenant, scope=scope), secret(jwt_settings), algorithm="HS256"
        )
        return {"Authorization": f"Bearer {token}"}

    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        own = await client.get("/v1/events/acme-000001", headers=auth("acme"))
        assert own.status_code == 200
        cases = {
            "list another tenant": (
                await client.get("/v1/events?tenant=acme", headers=auth("globex")),
                403,
            ),
            "list another tenant (list claim)": (
                await client.get("/v1/events?tenant=acme", headers=auth(["globex", "initech"])),
                403,
            ),
            "get another tenant's id": (
                await client.get("/v1/events/acme-000001", headers=auth("globex")),
                404,
            ),
            "get another tenant's id, tenant param": (
                await client.get("/v1/events/acme-000001?tenant=acme", headers=auth("globex")),
                403,
            ),
            "write another tenant": (
                await client.post(
                    "/v1/events", json={"tenant": "acme", "action": "a.b"}, headers=auth("globex")
                ),
                403,
            ),
            "write without events:write": (
                await client.post(
                    "/v1/events",
                    json={"tenant": "acme", "action": "a.b"},
                    headers=auth("acme", "events:read"),
                ),
                403,
            ),
            "read without events:read": (
                await client.get("/v1/events", headers=auth("acme", "events:write")),
                403,
            ),
        }
        # the unknown id answers exactly like the other tenant's id
        unknown = await client.get("/v1/events/acme-999999", headers=auth("globex"))
        assert (
            unknown.json()["detail"].replace("999999", "000001")
            == (cases["get another tenant's id"][0].json()["detail"])
        )
    assert {k: r.status_code for k, (r, _) in cases.items()} == {
        k: want for k, (_, want) in cases.items()
    }
    missing_scope = cases["read without events:read"][0]
    assert 'error="insufficient_scope"' in missing_scope.headers["WWW-Authenticate"]


async def test_jwks_file_rotation(api: LiveApi, keys: Keys) -> None:
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    old = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    new = jwt.encode(claims(), new_key, algorithm="RS256", headers={"kid": "rsa-2"})
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:

        async def status(token: str) -> int:
            r = await client.get("/v1/events", headers={"Authorization": f"Bearer {token}"})
            return r.status_code

        assert [await status(old), await status(new)] == [200, 401]
        keys.write({"rsa-2": ("RS256", new_key), "ec-1": ("ES256", keys.ec)})  # rotate
        assert [await status(new), await status(old)] == [200, 401]


def test_jwks_from_url(settings: AuditSettings, keys: Keys) -> None:
    handler = partial(_QuietHandler, directory=str(keys.path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    api = serve_api(
        settings.model_copy(update={"jwks_url": url, "jwt_algorithms": ["RS256", "ES256"]})
    )
    try:
        with httpx.Client(base_url=api.url, timeout=30) as client:

            def status(token: str) -> int:
                r = client.get("/v1/events", headers={"Authorization": f"Bearer {token}"})
                return r.status_code

            good = jwt.encode(claims(aud=DROP, iss=DROP), keys.ec, "ES256", {"kid": "ec-1"})
            hs = jwt.encode(claims(aud=DROP, iss=DROP), secret(settings), algorithm="HS256")
            other = jwt.encode(claims(aud=DROP, iss=DROP), keys.rsa, "RS256", {"kid": "nope"})
            # HS256 is not configured here, even though a secret exists
            assert [status(good), status(hs), status(other)] == [200, 401, 401]
    finally:
        api.stop()
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass
