"""``POST /v1/token``: the OAuth2 token endpoint (RFC 6749).

``grant_type=password`` for users, ``grant_type=client_credentials`` for service
accounts (client authentication by HTTP Basic or ``client_id``/``client_secret``
in the form). Errors are the JSON of RFC 6749 §5.2, not problem documents, so
OAuth2 client libraries understand them. Attempts are rate-limited per name and
per client IP (429 with ``Retry-After``): each is reserved in Redis before the
secret is checked, and a login is refused with 503 while Redis cannot reserve.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any
from urllib.parse import unquote_plus

import orjson
from pydantic import BaseModel, Field
from quart import Blueprint, Response, current_app, request
from quart_schema import DataSource, document_request, document_response

from query_api.auth import mint_token
from query_api.state import current_services, current_settings
from query_api.throttle import ThrottleUnavailable
from query_api.users import Kind, Login

bp = Blueprint("token", __name__)
FORM = "application/x-www-form-urlencoded"
UNAVAILABLE_RETRY_SECONDS = 5


class TokenForm(BaseModel):
    grant_type: str = Field(description="password or client_credentials")
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    scope: str | None = Field(None, description="Space-separated subset of the account's scopes")


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    scope: str


class OAuthError(BaseModel):
    error: str
    error_description: str | None = None


def oauth_error(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> Response:
    body = {"error": error, "error_description": description}
    resp = Response(orjson.dumps(body), status=status, content_type="application/json")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None
    # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote_plus(client_id), unquote_plus(secret)


def _single(form: Any, name: str) -> str | None:
    values = form.getlist(name)
    if len(values) > 1:
        raise ValueError(f"parameter {name} given more than once")
    return values[0] if values else None


@bp.post("/v1/token")
@document_request(TokenForm, source=DataSource.FORM)
@document_response(TokenResponse)
@document_response(OAuthError, 400)
@document_response(OAuthError, 401)
@document_response(OAuthError, 429)
@document_response(OAuthError, 503)
async def issue_token() -> Response:
    """Exchange a user's password or a service account's secret for an access token."""
    settings, services = current_settings(), current_services()
    if request.mimetype != FORM:
        return oauth_error(400, "invalid_request", f"the body must be {FORM}")
    form = await request.form
    try:
        grant = _single(form, "grant_type")
        requested = _single(form, "scope")
        kind: Kind
        if grant == "password":
            kind, name, secret = "user", _single(form, "username"), _single(form, "password")
        elif grant == "client_credentials":
            kind = "service"
            headers = request.headers.getlist("Authorization")
            if len(headers) > 1:
                raise ValueError("the Authorization header is given more than once")
            basic = _basic_credentials(headers[0] if headers else "")
            if basic is not None:
                if "client_id" in form or "client_secret" in form:  # RFC 6749 §2.3
                    raise ValueError("client credentials both in the Basic header and the form")
                name, secret = basic
            else:
                name, secret = _single(form, "client_id"), _single(form, "client_secret")
        elif grant is None:
            return oauth_error(400, "invalid_request", "grant_type is required")
        else:
            return oauth_error(400, "unsupported_grant_type", f"grant_type {grant[:40]!r}")
    except ValueError as exc:
        return oauth_error(400, "invalid_request", str(exc))
    if not name or secret is None:
        what = "username and password" if kind == "user" else "client credentials"
        return oauth_error(400, "invalid_request", f"{what} are required")
    if settings.jwt_secret is None:
        return oauth_error(
            400, "unsupported_grant_type", "this server verifies tokens but issues none"
        )

    ip = request.remote_addr or "unknown"
    # Reserve the attempt before checking anything (one atomic Redis call), so
    # concurrent guesses cannot all pass the limit; a success gives it back.
    try:
        slot = await services.throttle.reserve(name, ip)
    except ThrottleUnavailable as exc:
        current_app.logger.error("login refused, rate limiter unavailable: %s", exc)
        return oauth_error(
            503,
            "temporarily_unavailable",
            "the login rate limiter is unavailable; try again shortly",
            {"Retry-After": str(UNAVAILABLE_RETRY_SECONDS)},
        )
    if slot.retry_after is not None:
        return oauth_error(
            429, "slow_down", "too many failed attempts", {"Retry-After": str(slot.retry_after)}
        )
    try:
        outcome, account = await services.users.login(name, secret, kind)
    except asyncio.CancelledError:  # the client went away: counted as a failed attempt,
        # not left as a check under way that later attempts would wait for
        await asyncio.shield(services.throttle.failed(slot))
        raise
    except Exception:  # the store failed: nothing was checked, do not count it
        await services.throttle.release(slot)
        raise
    if outcome is Login.OK:
        await services.throttle.release(slot)
    if outcome is not Login.OK or account is None:
        await services.throttle.failed(slot)  # a lockout it starts is recorded in MongoDB too
        current_app.logger.warning("failed %s login for %r from %s", grant, name, ip)
        if kind == "service":
            return oauth_error(
                401,
                "invalid_client",
                "client authentication failed",
                {"WWW-Authenticate": 'Basic realm="auditstream"'},
            )
        detail = "account disabled" if outcome is Login.DISABLED else "wrong username or password"
        return oauth_error(400, "invalid_grant", detail)

    scopes = account.scopes
    if requested is not None:
        wanted = requested.split()
        if not wanted or not set(wanted) <= set(account.scopes):
            return oauth_error(400, "invalid_scope", "scope exceeds what the account holds")
        scopes = [s for s in account.scopes if s in wanted]
    token = mint_token(
        settings,
        subject=account.name,
        tenant=account.tenant,
        scopes=scopes,
        token_version=account.token_version,
    )
    body = {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": settings.token_ttl_seconds,
        "scope": " ".join(scopes),
    }
    resp = Response(orjson.dumps(body), content_type="application/json")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    return resp
