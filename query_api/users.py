"""Users (password grant) and service accounts (client_credentials) in MongoDB.

One document per account, ``_id`` = the login name; secrets are argon2id hashes
(``argon2-cffi``), never stored or logged in clear. Used by ``POST /v1/token``
and by ``auditstream users``. Every query compares names with ``$eq``.

Each account has a ``token_version`` (0 when absent), carried by the tokens
``POST /v1/token`` mints; disabling the account or rotating its secret
increments it, so the API refuses the tokens issued before (query_api/auth.py).
"""

from __future__ import annotations

import asyncio
import enum
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from query_api.auth import SCOPES

Kind = Literal["user", "service"]
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@\-]{0,127}$")
TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
_HASHER = PasswordHasher()
# Verified when the name is unknown, so a miss costs as much as a wrong password.
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))


class AccountError(ValueError):
    """Invalid account data, or a name that is taken; the message says which."""


class Login(enum.Enum):
    OK = "ok"
    BAD_CREDENTIALS = "bad_credentials"  # unknown name or wrong secret, indistinguishable
    DISABLED = "disabled"


@dataclass(frozen=True)
class Account:
    name: str
    kind: Kind
    tenant: str | list[str]  # one tenant, several, or "*"
    scopes: list[str]
    disabled: bool
    created_at: datetime | None = None
    token_version: int = 0

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Account:
        return cls(
            name=doc["_id"],
            kind=doc["kind"],
            tenant=doc["tenant"],
            scopes=list(doc.get("scopes", [])),
            disabled=bool(doc.get("disabled", False)),
            created_at=doc.get("created_at"),
            token_version=int(doc.get("token_version", 0)),
        )


def validate_account(name: str, tenant: str | list[str], scopes: list[str]) -> None:
    """Raise :class:`AccountError` for a bad name, tenant claim or scope."""
    if not NAME.match(name):
        raise AccountError(f"name {name!r} must match {NAME.pattern}")
    tenants = [tenant] if isinstance(tenant, str) else tenant
    if not tenants or (tenant != "*" and not all(TENANT.match(t) for t in tenants)):
        raise AccountError("tenant must be '*', a tenant name or a list of tenant names")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise AccountError(f"scopes must be a non-empty subset of {', '.join(SCOPES)}")


def new_client_secret() -> str:
    return secrets.token_urlsafe(32)


class UserStore:
    """Accounts in one MongoDB collection; every method may raise PyMongo errors."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self._coll = collection

    async def add(
        self, name: str, kind: Kind, secret: str, tenant: str | list[str], scopes: list[str]
    ) -> Account:
        """Create an account; :class:`AccountError` if invalid or the name is taken."""
        validate_account(name, tenant, scopes)
        if len(secret) < 8:
            raise AccountError("password/secret must be at least 8 characters")
        secret_hash = await asyncio.to_thread(_HASHER.hash, secret)
        doc = {
            "_id": name,
            "kind": kind,
            "secret_hash": secret_hash,
            "tenant": tenant,
            "scopes": scopes,
            "disabled": False,
            "created_at": datetime.now(UTC),
            "token_version": 0,
        }
        try:
            await self._coll.insert_one(doc)
        except DuplicateKeyError:
            raise AccountError(f"account {name!r} already exists") from None
        return Account.from_document(doc)

    async def list(self) -> list[Account]:
        docs = await self._coll.find({}, {"secret_hash": 0}).sort("_id", 1).to_list()
        return [Account.from_document(d) for d in docs]

    async def disable(self, name: str) -> bool:
        """Disable ``name`` and revoke its tokens; False when there is no such account."""
        result = await self._coll.update_one(
            {"_id": {"$eq": name}},
            {
                "$set": {"disabled": True, "disabled_at": datetime.now(UTC)},
                "$inc": {"token_version": 1},
            },
        )
        return result.matched_count == 1

    async def rotate_secret(self, name: str, secret: str) -> Account | None:
        """Replace ``name``'s secret and revoke its tokens; None when there is no such account."""
        if len(secret) < 8:
            raise AccountError("password/secret must be at least 8 characters")
        secret_hash = await asyncio.to_thread(_HASHER.hash, secret)
        doc = await self._coll.find_one_and_update(
            {"_id": {"$eq": name}},
            {
                "$set": {"secret_hash": secret_hash, "secret_rotated_at": datetime.now(UTC)},
                "$inc": {"token_version": 1},
            },
            projection={"secret_hash": 0},
            return_document=ReturnDocument.AFTER,
        )
        return None if doc is None else Account.from_document(doc)

    async def token_state(self, name: str) -> tuple[bool, int] | None:
        """``(disabled, token_version)`` of account ``name``, or None when there is none."""
        doc = await self._coll.find_one({"_id": {"$eq": name}}, {"disabled": 1, "token_version": 1})
        if doc is None:
            return None
        return bool(doc.get("disabled", False)), int(doc.get("token_version", 0))

    async def login(self, name: str, secret: str, kind: Kind) -> tuple[Login, Account | None]:
        """Check ``name``/``secret`` for an account of ``kind`` (constant-ish time)."""
        doc = None
        if NAME.match(name):
            doc = await self._coll.find_one({"_id": {"$eq": name}, "kind": {"$eq": kind}})
        stored = doc["secret_hash"] if doc else _DUMMY_HASH
        ok = await asyncio.to_thread(_verify, stored, secret)
        if doc is None or not ok:
            return Login.BAD_CREDENTIALS, None
        account = Account.from_document(doc)
        if account.disabled:
            return Login.DISABLED, account
        if _HASHER.check_needs_rehash(stored):
            new_hash = await asyncio.to_thread(_HASHER.hash, secret)
            # Only if the hash is still the one checked: a rotation meanwhile must win.
            await self._coll.update_one(
                {"_id": {"$eq": name}, "secret_hash": {"$eq": stored}},
                {"$set": {"secret_hash": new_hash}},
            )
        return Login.OK, account


def _verify(stored: str, secret: str) -> bool:
    try:
        return _HASHER.verify(stored, secret)
    except (VerificationError, InvalidHashError):
        return False
