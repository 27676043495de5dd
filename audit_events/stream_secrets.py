"""Log-stream destination secrets encrypted at rest (issue 17; docs/streams.md).

A destination's secret (webhook HMAC secret, Splunk HEC token, Datadog API
key, S3 secret access key) is stored in MongoDB as ``{"fernet": "<token>"}``,
encrypted with ``cryptography``'s Fernet under ``AUDITSTREAM_STREAMS_SECRET_KEY``.
Only the roles that need the plain value hold that key: the API and the
``auditstream streams`` CLI (they write secrets) and the stream worker (it
signs and authenticates with them). The processor, the archiver and MongoDB's
backups see ciphertext only.

Why Fernet (MultiFernet) and not hand-framed AES-GCM: Fernet is a complete,
versioned recipe (AES-128-CBC + HMAC-SHA256, random IV, authenticated) with
nothing to get wrong (nonces, framing), and MultiFernet does key rotation
itself: encrypt with the current key, decrypt with the current or any retired
key, ``rotate()`` re-encrypts. The secrets are a few dozen bytes read once per
configuration load, so speed does not matter. What Fernet lacks is associated
data: a ciphertext is not bound to its destination, so someone who can write
the ``streams`` collection could copy one destination's secret to another of
theirs; they could equally change its URL, so the store's own access control
is what guards that.

Rotation: put the new key in ``AUDITSTREAM_STREAMS_SECRET_KEY`` and the old one
in ``AUDITSTREAM_STREAMS_SECRET_RETIRED_KEYS`` (comma-separated) for the API,
the CLI and the stream worker; run ``auditstream streams encrypt-secrets``
(re-encrypts every secret under the current key, and encrypts any plaintext
one left from before this module); then drop the retired key.

A plaintext secret (a ``str`` in the document, stored before encryption
existed) is still read, and rewritten encrypted on the destination's next
update or by ``auditstream streams encrypt-secrets``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

if TYPE_CHECKING:
    from audit_events.settings import AuditSettings

KEY_ENV = "AUDITSTREAM_STREAMS_SECRET_KEY"
RETIRED_ENV = "AUDITSTREAM_STREAMS_SECRET_RETIRED_KEYS"
FIELD = "fernet"  # the stored form: {"fernet": "<Fernet token>"}
SECRET_FIELDS = ("secret", "previous_secret")


class SecretKeyError(RuntimeError):
    """No key to encrypt with, or no configured key opens a stored secret."""


def generate_key() -> str:
    """A new key for ``AUDITSTREAM_STREAMS_SECRET_KEY`` (32 random bytes, url-safe base64)."""
    return Fernet.generate_key().decode()


def split_keys(value: str | None) -> list[str]:
    return [k.strip() for k in (value or "").split(",") if k.strip()]


def check_key(value: str) -> str:
    """``value`` if it is a valid Fernet key; ValueError (without the value) otherwise."""
    try:
        Fernet(value.encode())
    except (ValueError, TypeError):
        raise ValueError(
            "must be a Fernet key: 32 bytes in url-safe base64 (`auditstream streams keygen`)"
        ) from None
    return value


class StreamSecrets:
    """Seal and open destination secrets with a current key and retired ones."""

    def __init__(self, current: str | None, retired: Sequence[str] = ()) -> None:
        self._current = Fernet(current.encode()) if current else None
        keys = ([self._current] if self._current else []) + [Fernet(k.encode()) for k in retired]
        self._all = MultiFernet(keys) if keys else None

    @classmethod
    def from_settings(cls, settings: AuditSettings) -> StreamSecrets:
        current = settings.streams_secret_key
        retired = settings.streams_secret_retired_keys
        return cls(
            current.get_secret_value() if current else None,
            split_keys(retired.get_secret_value() if retired else None),
        )

    @property
    def can_seal(self) -> bool:
        return self._current is not None

    def seal(self, plain: str) -> dict[str, str]:
        """The stored form of ``plain`` (encrypted with the current key)."""
        if self._current is None:
            raise SecretKeyError(
                f"{KEY_ENV} is not set: destination secrets are stored encrypted only"
            )
        return {FIELD: self._current.encrypt(plain.encode()).decode()}

    def open(self, stored: Any) -> str | None:
        """The plain secret of a stored value (``None`` stays ``None``)."""
        if stored is None or isinstance(stored, str):
            return stored  # none (syslog), or plaintext stored before encryption
        token = stored.get(FIELD) if isinstance(stored, dict) else None
        if not isinstance(token, str):
            raise SecretKeyError("the stored secret has an unknown form")
        if self._all is None:
            raise SecretKeyError(f"{KEY_ENV} is not set: cannot decrypt the destination's secret")
        try:
            return self._all.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                f"no key in {KEY_ENV} or {RETIRED_ENV} decrypts the destination's secret"
            ) from None

    def is_current(self, stored: Any) -> bool:
        """Whether ``stored`` is absent or already encrypted with the current key."""
        if stored is None:
            return True
        if self._current is None or not isinstance(stored, dict):
            return False
        try:
            self._current.decrypt(str(stored.get(FIELD, "")).encode())
        except InvalidToken:
            return False
        return True

    def reseal(self, stored: Any) -> dict[str, str] | None:
        """``stored`` encrypted with the current key (plaintext or a retired key's)."""
        plain = self.open(stored)
        return None if plain is None else self.seal(plain)

    def opened(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A copy of a stored destination with its secrets in plain (worker memory only).

        SecretKeyError when the current secret cannot be opened; a previous secret
        that cannot be (a lost key) is left out: it only signs during an overlap.
        """
        out = dict(doc)
        out["secret"] = self.open(out.get("secret"))
        if "previous_secret" in out:
            try:
                out["previous_secret"] = self.open(out["previous_secret"])
            except SecretKeyError:
                out["previous_secret"] = None
        return out

    def unreadable(self, doc: dict[str, Any]) -> list[str]:
        """The secret fields of ``doc`` no configured key opens."""
        out = []
        for name in SECRET_FIELDS:
            try:
                self.open(doc.get(name))
            except SecretKeyError:
                out.append(name)
        return out

    def migration(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The ``$set`` re-encrypting a destination's secrets under the current key
        (those no configured key opens are left as they are: see :meth:`unreadable`)."""
        skip = self.unreadable(doc)
        return {
            name: self.reseal(doc[name])
            for name in SECRET_FIELDS
            if doc.get(name) is not None and name not in skip and not self.is_current(doc[name])
        }
