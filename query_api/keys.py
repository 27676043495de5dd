"""RS256/ES256 verification keys from a JWKS file or URL, chosen by ``kid``.

Rotation: the set is re-read every ``jwks_refresh_seconds``; a token naming an
unknown ``kid`` triggers a re-read too (a changed file at once, a URL at most
every :attr:`KeySet.min_refetch_seconds`, so garbage kids cannot flood the
issuer). Symmetric (``oct``) keys in a JWKS are ignored: HS256 uses only the
configured secret, so a public key can never double as an HMAC secret.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from jwt import PyJWK, PyJWKSet
from jwt.exceptions import PyJWKError, PyJWKSetError

log = logging.getLogger("auditstream.api.keys")

ASYMMETRIC = ("RS256", "ES256")


def parse_jwks(raw: bytes) -> dict[str, PyJWK]:
    """``{kid: key}`` of the usable RS256/ES256 keys in a JWKS document.

    Raises ``ValueError`` when the document is not a JWKS at all.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"JWKS is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError('JWKS must be an object with a "keys" list')
    usable = [k for k in data["keys"] if isinstance(k, dict) and isinstance(k.get("kid"), str)]
    if not usable:
        return {}
    try:
        jwks = PyJWKSet.from_dict({"keys": usable})
    except (PyJWKSetError, PyJWKError):
        return {}
    return {
        str(k.key_id): k
        for k in jwks.keys
        if k.key_id and k.algorithm_name in ASYMMETRIC and k.public_key_use in (None, "sig")
    }


class KeySet:
    """The current asymmetric verification keys; safe to share across requests."""

    min_refetch_seconds = 10.0

    def __init__(
        self,
        *,
        path: str | None,
        url: str | None,
        refresh_seconds: float,
        fetch: Callable[[str], Awaitable[bytes]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = Path(path) if path else None
        self._url = url
        self._refresh = refresh_seconds
        self._fetch = fetch or _http_get
        self._clock = clock
        self._keys: dict[str, PyJWK] = {}
        self._loaded_at = -1e18
        self._attempted_at = -1e18
        self._file_id: tuple[int, int, int] | None = None
        self._lock = asyncio.Lock()
        self._reloads = 0  # reloads done

    @property
    def configured(self) -> bool:
        return self._path is not None or self._url is not None

    async def start(self) -> None:
        """Load the keys. A missing/invalid file raises; an unreachable URL only warns
        (it is retried on the next token)."""
        if self._path is not None:
            await self._reload()
        elif self._url is not None:
            try:
                await self._reload()
            except (OSError, ValueError, httpx.HTTPError) as exc:
                log.warning("JWKS %s not loaded yet: %s", self._url, exc)

    async def key_for(self, kid: str) -> PyJWK | None:
        """The key named ``kid``, re-reading the set when stale or when ``kid`` is unknown."""
        now = self._clock()
        if now - self._loaded_at >= self._refresh or (
            kid not in self._keys and self._may_refetch(now)
        ):
            try:
                await self._reload(unless_after=self._reloads)
            except (OSError, ValueError, httpx.HTTPError) as exc:
                log.warning("JWKS reload failed, keeping %d keys: %s", len(self._keys), exc)
        return self._keys.get(kid)

    def _may_refetch(self, now: float) -> bool:
        if self._path is not None:
            return self._stat() != self._file_id
        return now - self._attempted_at >= self.min_refetch_seconds

    def _stat(self) -> tuple[int, int, int] | None:
        assert self._path is not None
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def _reload(self, unless_after: int | None = None) -> None:
        """Read the set; with ``unless_after`` (the reloads done when the caller decided
        to reload), not again if one was done since (and, for a file, read the file as
        it is now): the tokens that find the set stale at once, waiting on the lock,
        cause one read, not one each."""
        async with self._lock:
            if (
                unless_after is not None
                and self._reloads > unless_after
                and (self._path is None or self._stat() == self._file_id)
            ):
                return
            self._attempted_at = self._clock()
            if self._path is not None:
                file_id = self._stat()
                raw = await asyncio.to_thread(self._path.read_bytes)
            else:
                assert self._url is not None
                file_id = None
                raw = await self._fetch(self._url)
            keys = parse_jwks(raw)
            self._keys, self._file_id, self._loaded_at = keys, file_id, self._clock()
            self._reloads += 1
            log.info("loaded %d JWKS keys: %s", len(keys), sorted(keys))


async def _http_get(url: str) -> bytes:
    async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as client:
        resp = await client.get(url, headers={"Accept": "application/json"})
        resp.raise_for_status()
        return resp.content


def public_jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    """A public JWK dict for a ``cryptography`` key (tests, tooling)."""
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    algo = RSAAlgorithm if alg == "RS256" else ECAlgorithm
    jwk: dict[str, Any] = orjson.loads(algo.to_jwk(key))
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}
