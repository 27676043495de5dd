"""Bearer-token authentication with PyJWT, and scope/tenant checks."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import jwt
from quart import current_app, g, request

from audit_events.settings import AuditSettings
from query_api.keys import KeySet
from query_api.problems import Problem

SCOPES = ("events:read", "events:write", "events:admin")
TIME_CLAIMS = ("exp", "nbf", "iat")  # RFC 7519 NumericDate: JSON numbers only

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Principal:
    subject: str
    tenants: frozenset[str] | None  # None = every tenant ("*")
    scopes: frozenset[str]

    def may_access(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants


def _unauthorized(detail: str, error: str = "invalid_token") -> Problem:
    # The description goes into a quoted-string: keep it printable and quote-free.
    safe = "".join(c for c in detail if c.isprintable() and c not in '"\\')[:200]
    challenge = f'Bearer realm="auditstream", error="{error}", error_description="{safe}"'
    return Problem(401, detail, headers={"WWW-Authenticate": challenge})


def mint_token(
    settings: AuditSettings,
    *,
    subject: str,
    tenant: str | list[str],
    scopes: list[str],
    ttl_seconds: int | None = None,
) -> str:
    """Sign an HS256 access token with the configured secret."""
    settings.require("jwt_secret")
    assert settings.jwt_secret is not None
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "tenant": tenant,
        "scope": " ".join(scopes),
        "iat": now,
        "nbf": now,
        "exp": now + (ttl_seconds or settings.token_ttl_seconds),
        "jti": uuid.uuid4().hex,
    }
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


def _claims_to_principal(claims: dict[str, Any]) -> Principal:
    tenant = claims.get("tenant")
    tenants: frozenset[str] | None
    if tenant == "*":
        tenants = None
    elif isinstance(tenant, str) and tenant:
        tenants = frozenset([tenant])
    elif isinstance(tenant, list) and tenant and all(isinstance(t, str) and t for t in tenant):
        tenants = frozenset(tenant)
    else:
        raise _unauthorized("token has no valid tenant claim")
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise _unauthorized("token scope claim must be a string")
    return Principal(str(claims["sub"]), tenants, frozenset(scope.split()))


class TokenVerifier:
    """Verifies bearer tokens against the configured algorithms and keys.

    The algorithm list is fixed by configuration, never by the token: HS256 is
    checked only against ``jwt_secret``; RS256/ES256 only against a JWKS key
    named by the token's ``kid`` whose own algorithm matches. ``exp`` and ``sub``
    are required; ``nbf``/``iat`` are honoured with ``jwt_leeway_seconds``;
    ``aud``/``iss`` are checked when configured.
    """

    def __init__(self, settings: AuditSettings, keys: KeySet | None = None) -> None:
        self._settings = settings
        self.keys = keys or KeySet(
            path=settings.jwks_path,
            url=settings.jwks_url,
            refresh_seconds=settings.jwks_refresh_seconds,
        )
        allowed = set(settings.jwt_algorithms)
        if settings.jwt_secret is None:
            allowed.discard("HS256")
        if not self.keys.configured:
            allowed -= {"RS256", "ES256"}
        self.algorithms = frozenset(allowed)

    async def start(self) -> None:
        await self.keys.start()

    async def verify(self, token: str) -> Principal:
        """The token's principal; raises :class:`Problem` 401 on any defect."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _unauthorized("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise _unauthorized(f"algorithm {str(alg)[:16]!r} is not accepted")
        key: Any
        if alg == "HS256":
            assert self._settings.jwt_secret is not None
            key = self._settings.jwt_secret.get_secret_value()
        else:
            kid = header.get("kid")
            if not isinstance(kid, str) or not 0 < len(kid) <= 256:
                raise _unauthorized("token has no usable kid")
            jwk = await self.keys.key_for(kid)
            if jwk is None or jwk.algorithm_name != alg:
                raise _unauthorized("unknown signing key")
            key = jwk.key
        s = self._settings
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                leeway=s.jwt_leeway_seconds,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": s.jwt_audience is not None,
                    "verify_iss": s.jwt_issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"invalid token: {exc}") from None
        for name in TIME_CLAIMS:
            # PyJWT runs int() on these, which takes "9999999999" and True as well.
            value = claims.get(name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if value is not None and not number:
                raise _unauthorized(f"token {name} claim must be a number (NumericDate)")
        return _claims_to_principal(claims)


async def authenticate() -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("missing bearer token", error="invalid_request")
    verifier: TokenVerifier = current_app.config["AUDITSTREAM_VERIFIER"]
    return await verifier.verify(token.strip())


def require_scope(scope: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Route decorator: a valid token carrying ``scope``; sets ``g.principal``.

    401 (``WWW-Authenticate: Bearer``) for a missing/invalid token, 403 for a
    valid one without ``scope``.
    """

    def decorator(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            principal = await authenticate()
            if scope not in principal.scopes:
                challenge = f'Bearer error="insufficient_scope", scope="{scope}"'
                raise Problem(
                    403, f"token lacks scope {scope}", headers={"WWW-Authenticate": challenge}
                )
            g.principal = principal
            return await fn(*args, **kwargs)

        return wrapper

    return decorator


def read_tenant(principal: Principal, requested: str | None) -> str:
    """The one tenant a read is bounded to, from the token and ``?tenant=``."""
    if requested is None:
        if principal.tenants is not None and len(principal.tenants) == 1:
            return next(iter(principal.tenants))
        raise Problem(400, "this token spans several tenants: pass ?tenant=")
    if not principal.may_access(requested):
        raise Problem(403, f"token does not grant tenant {requested}")
    return requested
