"""Destination secrets at rest: sealing, opening, rotation, migration (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from audit_events.settings import AuditSettings
from audit_events.stream_secrets import SecretKeyError, StreamSecrets, generate_key
from audit_events.streams import StreamCreate, StreamFields, new_stream_document, stream_changes

pytestmark = pytest.mark.unit
NOW = datetime(2026, 1, 1, tzinfo=UTC)
FIRST, SECOND = "whsec-first-1234", "whsec-second-1234"


def test_sealed_secret_is_not_the_plain_one_and_opens_again() -> None:
    box = StreamSecrets(generate_key())
    sealed = box.seal("whsec-abc")
    assert set(sealed) == {"fernet"} and "whsec-abc" not in sealed["fernet"]
    assert box.open(sealed) == "whsec-abc"
    assert box.seal("whsec-abc") != sealed  # random IV: equal secrets do not look equal


def test_plaintext_from_before_is_read_and_migrated() -> None:
    box = StreamSecrets(generate_key())
    doc = {"secret": "plain", "previous_secret": "older"}
    assert box.opened(doc) == doc
    changes = box.migration(doc)
    assert set(changes) == {"secret", "previous_secret"}
    assert box.open(changes["secret"]) == "plain" and box.is_current(changes["secret"])
    assert box.migration({**doc, **changes}) == {}


def test_rotation_retired_key_opens_and_is_reencrypted() -> None:
    old, new = generate_key(), generate_key()
    sealed = StreamSecrets(old).seal("s3cret")
    rotated = StreamSecrets(new, [old])
    assert rotated.open(sealed) == "s3cret" and not rotated.is_current(sealed)
    resealed = rotated.migration({"secret": sealed})["secret"]
    assert StreamSecrets(new).open(resealed) == "s3cret"
    with pytest.raises(SecretKeyError, match="decrypts"):
        StreamSecrets(old).open(resealed)


def test_without_a_key_nothing_is_sealed_or_opened() -> None:
    box = StreamSecrets(None)
    assert not box.can_seal and box.open("legacy") == "legacy" and box.open(None) is None
    with pytest.raises(SecretKeyError, match="AUDITSTREAM_STREAMS_SECRET_KEY"):
        box.seal("x")
    with pytest.raises(SecretKeyError):
        box.open(StreamSecrets(generate_key()).seal("x"))


def test_documents_hold_only_sealed_secrets_and_updates_migrate() -> None:
    box = StreamSecrets(generate_key())
    body = StreamCreate(kind="webhook", name="h", url="https://e.com/h", secret=FIRST)
    doc = new_stream_document("acme", body, head_seq=0, by="t", stream_id="st_1", now=NOW, box=box)
    assert FIRST not in str(doc) and box.open(doc["secret"]) == FIRST
    same = stream_changes(doc, StreamFields(secret=FIRST), overlap_seconds=60, now=NOW, box=box)
    assert same == {}  # the same secret again is no rotation
    rot = stream_changes(doc, StreamFields(secret=SECOND), overlap_seconds=60, now=NOW, box=box)
    assert box.open(rot["secret"]) == SECOND and box.open(rot["previous_secret"]) == FIRST
    assert "whsec" not in str(rot)
    legacy = {**doc, "secret": FIRST}
    other = stream_changes(legacy, StreamFields(batch_size=5), overlap_seconds=60, now=NOW, box=box)
    assert other["batch_size"] == 5 and box.open(other["secret"]) == FIRST


def test_settings_check_the_keys_and_blank_means_unset() -> None:
    key = generate_key()
    s = AuditSettings(streams_secret_key=key, streams_secret_retired_keys=f"{generate_key()},")
    assert StreamSecrets.from_settings(s).can_seal
    assert AuditSettings(streams_secret_key="").streams_secret_key is None
    with pytest.raises(ValidationError, match="Fernet key"):
        AuditSettings(streams_secret_key="not-a-key")
    assert key not in repr(s)


def test_up_generates_and_keeps_a_development_key(tmp_path: Path) -> None:
    from auditstream.streams_cli import dev_streams_env

    first = dev_streams_env(AuditSettings(), tmp_path)["AUDITSTREAM_STREAMS_SECRET_KEY"]
    assert StreamSecrets(first).can_seal  # a valid Fernet key
    assert (tmp_path / "streams_secret_key").stat().st_mode & 0o777 == 0o600
    assert dev_streams_env(AuditSettings(), tmp_path)["AUDITSTREAM_STREAMS_SECRET_KEY"] == first
    own = generate_key()
    configured = AuditSettings(streams_secret_key=own)
    assert dev_streams_env(configured, tmp_path)["AUDITSTREAM_STREAMS_SECRET_KEY"] == own


def test_a_secret_under_a_lost_key_can_be_replaced_and_blocks_nothing_else() -> None:
    lost = StreamSecrets(generate_key()).seal(FIRST)
    box = StreamSecrets(generate_key())
    doc = {"_id": "st_1", "kind": "webhook", "secret": lost, "previous_secret": lost}
    assert box.unreadable(doc) == ["secret", "previous_secret"]
    assert box.migration(doc) == {}  # left for the operator (the CLI names it)
    renamed = stream_changes(doc, StreamFields(name="n"), overlap_seconds=60, now=NOW, box=box)
    assert renamed == {"name": "n"}
    new = stream_changes(doc, StreamFields(secret=SECOND), overlap_seconds=60, now=NOW, box=box)
    assert box.open(new["secret"]) == SECOND and new["previous_secret"] is None
    with pytest.raises(SecretKeyError):
        box.opened(doc)  # the worker cannot deliver: it says so in last_error
    readable = {**doc, "secret": box.seal(FIRST)}
    assert box.opened(readable)["previous_secret"] is None  # only an overlap courtesy
