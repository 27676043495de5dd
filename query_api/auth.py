"""Bearer-token authentication with PyJWT, and scope/tenant checks.

Revocation: when a token's ``sub`` names an account in the users collection,
each request also checks that account (cached ``account_check_seconds``, 5 s):
a disabled account, or a ``token_version`` claim other than the account's
(disabling and secret rotation increment it), is 401. Tokens whose subject is
no account (the dev token of ``auditstream token``, an identity provider's
JWKS tokens) are not affected.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import jwt
from pymongo.errors import PyMongoError
from quart import g, request

from audit_events.settings import AuditSettings
from query_api.keys import KeySet
from query_api.problems import Problem
from query_api.state import api_state

SCOPES = ("events:read", "events:write", "events:admin")
TIME_CLAIMS = ("exp", "nbf", "iat")  # RFC 7519 NumericDate: JSON numbers only

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger("auditstream.api.auth")
VERSION_CLAIM = "token_version"
# While MongoDB cannot be asked, an account's last known state serves this long.
STALE_ACCOUNT_SECONDS = 60.0
# An account's ``(disabled, token_version)``, or None when the subject is no account.
AccountLookup = Callable[[str], Awaitable[tuple[bool, int] | None]]


@dataclass(frozen=True)
class Principal:
    subject: str
    tenants: frozenset[str] | None  # None = every tenant ("*")
    scopes: frozenset[str]
    token_version: int | None = None  # the claim, on tokens POST /v1/token minted

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
    token_version: int | None = None,
) -> str:
    """Sign an HS256 access token with the configured secret.

    ``token_version`` (the account's, for tokens of an account) lets disabling
    the account or rotating its secret revoke the token.
    """
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
    if token_version is not None:
        claims[VERSION_CLAIM] = token_version
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
    version = claims.get(VERSION_CLAIM)
    if isinstance(version, bool) or not isinstance(version, int):
        version = None  # not one of ours (e.g. an identity provider's own claim)
    return Principal(str(claims["sub"]), tenants, frozenset(scope.split()), version)


class AccountCache:
    """Accounts' ``(disabled, token_version)`` by subject, each kept ``ttl`` seconds.

    In process, per API replica: a change in MongoDB is seen within ``ttl``.
    Subjects that are no account are cached too (as None). When the lookup
    fails, a state checked less than ``STALE_ACCOUNT_SECONDS`` ago is used (and
    asked again after a second); without one the request is 503.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        # subject -> (checked at, fresh until, state)
        self._entries: dict[str, tuple[float, float, tuple[bool, int] | None]] = {}

    async def state(self, subject: str, lookup: AccountLookup) -> tuple[bool, int] | None:
        now = self._clock()
        hit = self._entries.get(subject)
        if hit is not None and now < hit[1]:
            return hit[2]
        try:
            state = await lookup(subject)
        except (PyMongoError, OSError, TimeoutError) as exc:
            if hit is not None and now - hit[0] < STALE_ACCOUNT_SECONDS:
                log.warning(
                    "account %r: store unreachable, using its state of %.0f s ago: %s",
                    subject,
                    now - hit[0],
                    exc,
                )
                self._entries[subject] = (hit[0], now + 1.0, hit[2])
                return hit[2]
            raise Problem(
                503,
                "cannot check the token's account now; try again shortly",
                headers={"Retry-After": "5"},
            ) from None
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries = {k: v for k, v in self._entries.items() if now < v[1]}
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
        self._entries[subject] = (now, now + self._ttl, state)
        return state


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
        self.accounts = AccountCache(settings.account_check_seconds)
        # Verified tokens (issue 18): a token is parsed and its signature checked
        # once, then served from here until its exp (or VERIFIED_SECONDS, so a
        # key removed from the JWKS stops its tokens soon). Only the signature
        # check is cached: authenticate() still checks the account every request.
        self._verified: dict[str, tuple[Principal, float, str | None, Any]] = {}
        self.clock: Callable[[], float] = time.time

    VERIFIED_MAX = 1024
    VERIFIED_SECONDS = 60.0

    async def start(self) -> None:
        await self.keys.start()

    async def verify(self, token: str) -> Principal:
        """The token's principal; raises :class:`Problem` 401 on any defect."""
        now = self.clock()
        hit = self._verified.get(token)
        if hit is not None:
            principal, until, kid, jwk = hit
            # A JWKS token only while its key is still the set's key of that kid.
            if now < until and (kid is None or await self.keys.key_for(kid) is jwk):
                return principal
            del self._verified[token]
        claims, kid, jwk = await self._verified_claims(token)
        principal = _claims_to_principal(claims)
        until = min(float(claims["exp"]), now + self.VERIFIED_SECONDS)
        if len(self._verified) >= self.VERIFIED_MAX:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[token] = (principal, until, kid, jwk)
        return principal

    async def _verified_claims(self, token: str) -> tuple[dict[str, Any], str | None, Any]:
        """The token's checked claims, and the JWKS kid and key that signed it (or None)."""
        kid: str | None = None
        jwk: Any = None
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
        return claims, kid, jwk

    async def check_account(self, principal: Principal, lookup: AccountLookup) -> None:
        """401 when the token's account is disabled or its tokens were revoked."""
        state = await self.accounts.state(principal.subject, lookup)
        if state is None:
            if principal.token_version is not None:
                raise _unauthorized("token revoked: its account no longer exists")
            return  # no account of that name: a dev or identity-provider token
        disabled, version = state
        if disabled:
            raise _unauthorized("token revoked: the account is disabled")
        if (principal.token_version or 0) != version:
            raise _unauthorized("token revoked: issued before its account was re-keyed or disabled")


async def authenticate() -> Principal:
    headers = request.headers.getlist("Authorization")
    if len(headers) > 1:
        raise _unauthorized("the Authorization header is given more than once", "invalid_request")
    scheme, _, token = (headers[0] if headers else "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("missing bearer token", error="invalid_request")
    state = api_state()
    verifier = state.verifier
    principal = await verifier.verify(token.strip())
    services = state.services
    if services is not None:
        await verifier.check_account(principal, services.users.token_state)
    return principal


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
