"""The tenant chain: content hashes, links, signed checkpoints and verification.

Pure logic shared by the processor (which builds the chain), the API and the
CLI (which verify it) and the offline verifier. No database client here: the
verifier walks any async iterator of stored documents sorted by ``(seq, _id)``.

- :mod:`~audit_events.chain.hashing`: ``content_hash`` = SHA-256 of the
  canonical JSON of the event as received; ``hash`` = SHA-256(previous hash
  bytes ‖ content hash bytes ‖ received_at); the genesis "previous hash" is 32
  zero bytes; :func:`seal` gives a stored document its place.
- :mod:`~audit_events.chain.checkpoints`: Ed25519 keys; a checkpoint signs
  ``{tenant, seq, hash, time}`` (canonical JSON); trusted keys by key id.
- :mod:`~audit_events.chain.control`: corrections and erasures, and the API's
  proof (``metadata.proof``) that it issued them.
- :mod:`~audit_events.chain.verify`: :func:`verify_chain` names the first defect.

The MongoDB-shaped probes of a stored chain (:func:`find_head`,
:func:`seq_probes`, :func:`first_seq_where`) live beside the storage spec in
:mod:`audit_events.store_adapter` and are re-exported here for older imports.
Every name is re-exported here: ``from audit_events.chain import X`` works for all.
"""

from __future__ import annotations

from audit_events.chain.checkpoints import (
    TrustedKeys,
    checkpoint_keys,
    checkpoint_problem,
    checkpoint_valid,
    generate_keypair,
    key_id,
    key_ring,
    load_private_key,
    load_public_key,
    public_key_b64,
    public_key_of,
    retired_public_keys,
    sign_checkpoint,
)
from audit_events.chain.control import (
    CONTROL_ACTIONS,
    CORRECTABLE_FIELDS,
    CORRECTED_ACTION,
    ERASED_ACTION,
    ERASED_FIELDS,
    EXPORTED_ACTION,
    PROOF_FIELD,
    READ_ACTION_PREFIX,
    READ_ACTIONS,
    RESERVED_ACTION_PREFIX,
    SIGNED_ACTIONS,
    VERIFIED_ACTION,
    VIEWED_ACTION,
    control_keys,
    control_payload,
    control_problem,
    is_reserved,
    sign_control,
)
from audit_events.chain.hashing import (
    GENESIS,
    document_content_hash,
    event_fields,
    link,
    links,
    original_view,
    received_ms,
    seal,
)
from audit_events.chain.verify import (
    REASONS,
    ControlLookup,
    Report,
    aiter_list,
    event_id_of,
    verify_chain,
)
from audit_events.store_adapter import Probe, find_head, first_seq_where, seq_probes

__all__ = [
    "CONTROL_ACTIONS",
    "CORRECTABLE_FIELDS",
    "CORRECTED_ACTION",
    "ERASED_ACTION",
    "ERASED_FIELDS",
    "EXPORTED_ACTION",
    "GENESIS",
    "PROOF_FIELD",
    "READ_ACTIONS",
    "READ_ACTION_PREFIX",
    "REASONS",
    "RESERVED_ACTION_PREFIX",
    "SIGNED_ACTIONS",
    "VERIFIED_ACTION",
    "VIEWED_ACTION",
    "ControlLookup",
    "Probe",
    "Report",
    "TrustedKeys",
    "aiter_list",
    "checkpoint_keys",
    "checkpoint_problem",
    "checkpoint_valid",
    "control_keys",
    "control_payload",
    "control_problem",
    "document_content_hash",
    "event_fields",
    "event_id_of",
    "find_head",
    "first_seq_where",
    "generate_keypair",
    "is_reserved",
    "key_id",
    "key_ring",
    "link",
    "links",
    "load_private_key",
    "load_public_key",
    "original_view",
    "public_key_b64",
    "public_key_of",
    "received_ms",
    "retired_public_keys",
    "seal",
    "seq_probes",
    "sign_checkpoint",
    "sign_control",
    "verify_chain",
]
