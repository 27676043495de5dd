"""Keys and signed checkpoints.

A checkpoint signs ``{tenant, seq, hash, time}`` (canonical JSON) with Ed25519;
verifiers trust public keys by key id (the current one and retired ones).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit_events.codec import canonical_json
from audit_events.settings import AuditSettings, SettingsError


def generate_keypair() -> tuple[str, str]:
    """A new Ed25519 key pair as (private, public), each base64 of the raw 32 bytes."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(private).decode(), public_key_b64(key)


def load_private_key(b64: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(b64))


def load_public_key(b64: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64))


def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def key_id(public_b64: str) -> str:
    """Short fingerprint of a public key, stored beside each signature."""
    return hashlib.sha256(base64.b64decode(public_b64)).hexdigest()[:16]


def _checkpoint_payload(tenant: str, seq: int, hash_: str, time: str) -> bytes:
    return canonical_json({"tenant": tenant, "seq": seq, "hash": hash_, "time": time})


def sign_checkpoint(
    key: Ed25519PrivateKey, tenant: str, seq: int, hash_: str, now: datetime
) -> dict[str, Any]:
    """A signed checkpoint of ``tenant``'s chain head (JSON-ready dict)."""
    time = now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    signature = key.sign(_checkpoint_payload(tenant, seq, hash_, time))
    return {
        "tenant": tenant,
        "seq": seq,
        "hash": hash_,
        "time": time,
        "signature": base64.b64encode(signature).decode(),
        "key_id": key_id(public_key_b64(key)),
    }


def checkpoint_valid(key: Ed25519PublicKey, checkpoint: dict[str, Any]) -> bool:
    """True when ``checkpoint``'s signature covers its tenant, seq, hash and time."""
    try:
        payload = _checkpoint_payload(
            str(checkpoint["tenant"]),
            int(checkpoint["seq"]),
            str(checkpoint["hash"]),
            str(checkpoint["time"]),
        )
        key.verify(base64.b64decode(checkpoint["signature"]), payload)
    except (KeyError, TypeError, ValueError, InvalidSignature):
        return False
    return True


#: What a verifier trusts: public keys by key id (the current one and retired
#: ones, so checkpoints signed before a rotation keep verifying), one key, or none.
TrustedKeys = Mapping[str, Ed25519PublicKey] | Ed25519PublicKey | None


def key_ring(keys: TrustedKeys) -> dict[str, Ed25519PublicKey]:
    """``keys`` as ``{key_id: public key}``."""
    if keys is None:
        return {}
    if isinstance(keys, Ed25519PublicKey):
        raw = keys.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {key_id(base64.b64encode(raw).decode()): keys}
    return dict(keys)


def checkpoint_problem(
    keys: Mapping[str, Ed25519PublicKey], checkpoint: dict[str, Any]
) -> str | None:
    """Why ``checkpoint`` is not validly signed by one of ``keys``, or None.

    The key is chosen by the checkpoint's ``key_id`` (not covered by the
    signature: it only picks the key; a wrong one cannot make a forgery verify).
    A checkpoint without a key id is tried against every trusted key.
    """
    if not keys:
        return "no public key to check it"
    kid = checkpoint.get("key_id")
    if isinstance(kid, str):
        key = keys.get(kid)
        if key is None:
            return (
                f"signed by key id {kid[:64]!r}, which is neither the current key nor a"
                " retired one (AUDITSTREAM_CHECKPOINT_RETIRED_PUBLIC_KEYS)"
            )
        candidates = [key]
    else:
        candidates = list(keys.values())
    if any(checkpoint_valid(key, checkpoint) for key in candidates):
        return None
    return "its signature is invalid"


def public_key_of(settings: AuditSettings) -> str | None:
    """The configured public key, or the one derived from the signing key."""
    if settings.checkpoint_public_key:
        return settings.checkpoint_public_key
    if settings.checkpoint_signing_key is not None:
        return public_key_b64(load_private_key(settings.checkpoint_signing_key.get_secret_value()))
    return None


def retired_public_keys(settings: AuditSettings) -> list[str]:
    """``AUDITSTREAM_CHECKPOINT_RETIRED_PUBLIC_KEYS`` as a list of base64 keys."""
    return [k for k in settings.checkpoint_retired_public_keys.split(",") if k]


def checkpoint_keys(settings: AuditSettings) -> dict[str, Ed25519PublicKey]:
    """Every public key checkpoints may be signed with, by key id: the current one
    (:func:`public_key_of`) and the retired ones. Empty when none is configured."""
    current = public_key_of(settings)
    publics = [*([current] if current else []), *retired_public_keys(settings)]
    out: dict[str, Ed25519PublicKey] = {}
    for public in publics:
        try:
            out[key_id(public)] = load_public_key(public)
        except ValueError as exc:
            raise SettingsError(
                f"invalid setting AUDITSTREAM_CHECKPOINT_PUBLIC_KEY: {exc}"
            ) from None
    return out
