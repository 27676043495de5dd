"""A small client of the query API for the Django admin's History view.

Settings (``settings.AUDITSTREAM["API"]``)::

    AUDITSTREAM = {
        ...,
        "API": {
            "URL": "https://audit.example.com",   # the query API
            "CLIENT_ID": "django-admin",           # a service account with events:read
            "CLIENT_SECRET": os.environ["AUDIT_API_SECRET"],
            # or "TOKEN": "<a bearer token>" instead of the client credentials
            # optional: "UI_URL" (default URL + "/ui/"), "TIMEOUT" (seconds, default 5)
        },
    }

Tokens from ``POST /v1/token`` (client_credentials) are kept per process until a
minute before they expire, and fetched again once when the API answers 401.
Every failure is a :class:`QueryAPIError` with a message for the page; nothing else
is raised. Standard library only (no HTTP client dependency for the Django extra).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TOKEN_MARGIN = 60.0  # seconds before a token's expiry it is fetched again


class QueryAPIError(Exception):
    """The API could not answer: the message says why (shown in the admin page)."""


@dataclass(frozen=True)
class APIConfig:
    url: str
    token: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    ui_url: str | None = None
    timeout: float = 5.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> APIConfig:
        """``AUDITSTREAM["API"]``; a :class:`QueryAPIError` naming what is missing."""
        raw = options.get("API")
        if not isinstance(raw, Mapping) or not raw.get("URL"):
            raise QueryAPIError(
                'settings.AUDITSTREAM["API"] is not set: it needs "URL" and "TOKEN" or '
                '"CLIENT_ID" and "CLIENT_SECRET" (docs/producers.md).'
            )
        token = raw.get("TOKEN")
        client_id, secret = raw.get("CLIENT_ID"), raw.get("CLIENT_SECRET")
        if not token and not (client_id and secret):
            raise QueryAPIError(
                'settings.AUDITSTREAM["API"] needs "TOKEN" or "CLIENT_ID" and "CLIENT_SECRET".'
            )
        try:
            timeout = float(raw.get("TIMEOUT", 5.0))
        except (TypeError, ValueError):
            raise QueryAPIError('settings.AUDITSTREAM["API"]["TIMEOUT"] is not a number.') from None
        return cls(
            url=str(raw["URL"]).rstrip("/"),
            token=str(token) if token else None,
            client_id=str(client_id) if client_id else None,
            client_secret=str(secret) if secret else None,
            ui_url=str(raw["UI_URL"]) if raw.get("UI_URL") else None,
            timeout=timeout,
        )

    @property
    def viewer(self) -> str:
        """The web viewer's address (ends with ``/``)."""
        base = self.ui_url or f"{self.url}/ui/"
        return base if base.endswith("/") else base + "/"


_tokens: dict[tuple[str, str], tuple[str, float]] = {}
_tokens_lock = threading.Lock()


def _problem(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    detail = body.get("detail") or body.get("error_description") or body.get("error") or ""
    return f"{exc.code} {detail}".strip()


def _token(config: APIConfig, *, fresh: bool = False) -> str:
    if config.token:
        return config.token
    assert config.client_id and config.client_secret
    key = (config.url, config.client_id)
    with _tokens_lock:
        cached = _tokens.get(key)
        if cached and not fresh and cached[1] > time.monotonic():
            return cached[0]
    basic = base64.b64encode(f"{config.client_id}:{config.client_secret}".encode()).decode()
    request = urllib.request.Request(
        f"{config.url}/v1/token",
        data=b"grant_type=client_credentials&scope=events%3Aread",
        headers={
            "Authorization": f"Basic {basic}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=config.timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise QueryAPIError(f"the query API refused the service account: {_problem(exc)}") from None
    except (OSError, ValueError) as exc:
        raise QueryAPIError(f"the query API at {config.url} cannot be reached: {exc}") from None
    token = str(body["access_token"])
    expires = time.monotonic() + max(float(body.get("expires_in", 300)) - TOKEN_MARGIN, 1.0)
    with _tokens_lock:
        _tokens[key] = (token, expires)
    return token


def get_json(config: APIConfig, path: str, params: Mapping[str, str]) -> dict[str, Any]:
    """``GET path?params`` with the service token; the JSON body, or QueryAPIError."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v})
    url = f"{config.url}{path}?{query}"
    for attempt in (0, 1):
        token = _token(config, fresh=attempt == 1)
        request = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=config.timeout) as resp:
                data = json.loads(resp.read())
                return data if isinstance(data, dict) else {}
        except urllib.error.HTTPError as exc:
            if exc.code == 401 and attempt == 0 and not config.token:
                continue  # expired or revoked: one more try with a new token
            raise QueryAPIError(f"the query API answered {_problem(exc)}") from None
        except (OSError, ValueError) as exc:
            raise QueryAPIError(f"the query API at {config.url} cannot be reached: {exc}") from None
    raise QueryAPIError("the query API refused the token")  # pragma: no cover


def target_path(target_type: str, target_id: str) -> str:
    quote = urllib.parse.quote
    return f"/v1/targets/{quote(target_type, safe='')}/{quote(target_id, safe='')}/history"


def history(
    config: APIConfig,
    tenant: str,
    target_type: str,
    target_id: str,
    *,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """One page of the object's timeline, newest first."""
    params = {"tenant": tenant, "order": "desc", "limit": str(limit), "cursor": cursor or ""}
    return get_json(config, target_path(target_type, target_id), params)


def state_as_of(
    config: APIConfig, tenant: str, target_type: str, target_id: str, as_of: str
) -> dict[str, Any]:
    """The object's field values at ``as_of`` (RFC 3339)."""
    return get_json(config, target_path(target_type, target_id), {"tenant": tenant, "as_of": as_of})


def viewer_history(config: APIConfig, target_type: str, target_id: str) -> str:
    """The viewer's page of the object's history."""
    quote = urllib.parse.quote
    return f"{config.viewer}#/history/{quote(target_type, safe='')}/{quote(target_id, safe='')}"


def viewer_event(config: APIConfig, tenant: str, event_id: str) -> str:
    quote = urllib.parse.quote
    return f"{config.viewer}#/event/{quote(event_id, safe='')}?tenant={quote(tenant, safe='')}"
