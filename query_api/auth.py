"""Bearer-token authentication with PyJWT, and scope/tenant checks."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import jwt
from quart import current_app, g, request

from audit_events.settings import AuditSettings
from query_api.problems import Problem

SCOPES = ("events:read", "events:write", "events:admin")
LEEWAY_SECONDS = 30

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
    challenge = f'Bearer realm="auditstream", error="{error}", error_description="{detail}"'
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
    }
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


def decode_token(settings: AuditSettings, token: str) -> Principal:
    """Verify ``token``; raises :class:`Problem` 401 on any defect."""
    if settings.jwt_secret is None:
        raise _unauthorized("no verification key is configured")
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret.get_secret_value(),
            algorithms=[a for a in settings.jwt_algorithms if a == "HS256"],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "sub"], "verify_aud": settings.jwt_audience is not None},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise _unauthorized(f"invalid token: {exc}") from None
    tenant = claims.get("tenant")
    tenants: frozenset[str] | None
    if tenant == "*":
        tenants = None
    elif isinstance(tenant, str) and tenant:
        tenants = frozenset([tenant])
    elif isinstance(tenant, list) and tenant and all(isinstance(t, str) for t in tenant):
        tenants = frozenset(tenant)
    else:
        raise _unauthorized("token has no valid tenant claim")
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise _unauthorized("token scope claim must be a string")
    return Principal(str(claims["sub"]), tenants, frozenset(scope.split()))


def authenticate() -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("missing bearer token", error="invalid_request")
    settings: AuditSettings = current_app.config["AUDITSTREAM_SETTINGS"]
    return decode_token(settings, token.strip())


def require_scope(scope: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Route decorator: a valid token carrying ``scope``; sets ``g.principal``."""

    def decorator(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            principal = authenticate()
            if scope not in principal.scopes:
                raise Problem(403, f"token lacks scope {scope}")
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
