"""Masking rules (audit_events/masking.py) and the processor's masking step, pure logic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from audit_events.codec import event_to_document
from audit_events.masking import (
    MARKER,
    Masker,
    MaskingError,
    MaskingRule,
    MaskingRules,
    hash_value,
    mask_event,
    new_version,
    parse_path,
    tenant_key,
    truncate_ip,
)
from audit_events.schema import AuditEvent
from stream_processor.masking import MaskedWrite, RuleCache
from stream_processor.records import Batch, Record

pytestmark = pytest.mark.unit

KEY = tenant_key(b"secret", "acme")
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def rules(*pairs: tuple[str, str]) -> MaskingRules:
    return MaskingRules.model_validate({"rules": [{"path": p, "action": a} for p, a in pairs]})


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "e1",
        "tenant": "acme",
        "action": "user.update",
        "actor": {"id": "u1", "type": "user", "name": "Ann Smith"},
        "context": {"ip": "203.0.113.77", "user_agent": "curl"},
        "metadata": {"user": {"email": "ann@example.com"}, "n": 1},
        "changes": {"email": {"old": "ann@example.com", "new": "a@example.org"}},
    }
    return {**base, **fields}


@pytest.mark.parametrize(
    "path",
    [
        "metadata.user.email",
        "metadata.*.email",
        "changes.email",
        "changes.email.old",
        "changes.*",
        "context.ip",
        "actor.name",
        "actor.*",
    ],
)
def test_good_paths_parse(path: str) -> None:
    assert parse_path(path)[0] in {"metadata", "changes", "context", "actor"}


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("payload.x", "must start with"),
        ("metadata", "names no field"),
        ("metadata..x", "bad segment"),
        ("metadata.$where", "bad segment"),
        ("context.email", "context paths"),
        ("actor.name.first", "actor paths"),
        ("changes.email.middle", "changes paths"),
        ("metadata." + ".".join("a" * 10), "more than 10"),
    ],
)
def test_bad_paths_are_refused_with_a_reason(path: str, says: str) -> None:
    with pytest.raises(MaskingError, match=says):
        parse_path(path)
    with pytest.raises(ValidationError):
        MaskingRule(path=path, action="redact")


def test_rules_refuse_unknown_actions_duplicate_paths_and_extra_fields() -> None:
    with pytest.raises(ValidationError):
        MaskingRules.model_validate({"rules": [{"path": "actor.name", "action": "encrypt"}]})
    with pytest.raises(ValidationError, match="more than one rule"):
        rules(("actor.name", "redact"), ("actor.name", "hash"))
    with pytest.raises(ValidationError):
        MaskingRules.model_validate({"rules": [], "extra": 1})


def test_redact_hash_and_truncate_each_field_kind() -> None:
    masker = Masker(
        rules(
            ("metadata.user.email", "hash"),
            ("changes.email", "hash"),
            ("context.ip", "truncate_ip"),
            ("actor.name", "redact"),
        ),
        KEY,
    )
    original = event()
    out = masker.apply(original)
    digest = hash_value(KEY, "ann@example.com")
    assert digest.startswith("hmac:") and len(digest) == 5 + 32
    assert out["metadata"] == {"user": {"email": digest}, "n": 1}
    assert out["changes"]["email"] == {"old": digest, "new": hash_value(KEY, "a@example.org")}
    assert out["context"] == {"ip": "203.0.113.0", "user_agent": "curl"}
    assert out["actor"] == {"id": "u1", "type": "user", "name": MARKER}
    assert original == event()  # the input is never modified
    assert "ann@example.com" not in repr(out)


def test_hash_is_joinable_within_a_tenant_and_differs_across_tenants() -> None:
    other = tenant_key(b"secret", "globex")
    assert hash_value(KEY, "ann@example.com") == hash_value(KEY, "ann@example.com")
    assert hash_value(KEY, "ann@example.com") != hash_value(KEY, "bob@example.com")
    assert hash_value(KEY, "ann@example.com") != hash_value(other, "ann@example.com")
    assert tenant_key("secret", "acme") == KEY  # str and bytes secrets agree
    assert hash_value(KEY, 42) != hash_value(KEY, "42")  # the JSON value, not its text


def test_masking_is_idempotent() -> None:
    masker = Masker(
        rules(("metadata.user", "hash"), ("context.ip", "truncate_ip"), ("actor.id", "redact")),
        KEY,
    )
    once = masker.apply(event())
    assert masker.apply(once) is once  # nothing left to change: the same object


@pytest.mark.parametrize(
    ("value", "out"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("2001:db8:1234:5678::1", "2001:db8:1234::"),
        ("::ffff:203.0.113.77", "::"),
        ("not an ip", MARKER),
        (12, MARKER),
        (["10.1.2.3", "10.1.3.4"], ["10.1.2.0", "10.1.3.0"]),
    ],
)
def test_truncate_ip(value: Any, out: Any) -> None:
    assert truncate_ip(value) == out


def test_wildcards_lists_nulls_and_absent_paths() -> None:
    masker = Masker(rules(("metadata.*.ssn", "redact"), ("metadata.absent.x", "hash")), KEY)
    doc = event(metadata={"a": {"ssn": "1"}, "b": [{"ssn": "2"}, {"ssn": None}], "c": "x"})
    out = masker.apply(doc)
    assert out["metadata"] == {
        "a": {"ssn": MARKER},
        "b": [{"ssn": MARKER}, {"ssn": None}],
        "c": "x",
    }
    untouched = event(metadata={"z": 1})
    assert masker.apply(untouched) is untouched


def test_hash_without_a_key_redacts() -> None:
    out = Masker(rules(("metadata.user.email", "hash")), None).apply(event())
    assert out["metadata"]["user"]["email"] == MARKER


def test_stored_documents_get_search_terms_without_the_masked_actor() -> None:
    ev = AuditEvent.model_validate(event())
    doc = event_to_document(ev, T0)
    assert "smith" in doc["search"]
    out = Masker(rules(("actor.name", "redact")), KEY).apply(doc)
    assert "smith" not in out["search"] and "u1" in out["search"]


def test_the_actor_token_of_a_masked_actor_id_is_the_masked_id() -> None:
    """The ``actor`` filter's index token (``a:<id>``) follows the stored, masked id:
    the unmasked id is nowhere in the index, and ``actor=<masked id>`` finds it."""
    doc = event_to_document(AuditEvent.model_validate(event()), T0)
    assert "a:u1" in doc["search"]
    out = Masker(rules(("actor.id", "hash")), KEY).apply(doc)
    assert out["actor"]["id"] != "u1" and "a:u1" not in out["search"]
    assert "a:" + out["actor"]["id"] in out["search"] and "*" in out["search"]


def test_mask_event_gives_a_valid_event() -> None:
    ev = AuditEvent.model_validate(event())
    masked = mask_event(ev, Masker(rules(("actor.id", "hash"), ("context.ip", "redact")), KEY))
    assert masked.actor is not None and masked.actor.id == hash_value(KEY, "u1")
    assert masked.context is not None and masked.context.ip == MARKER
    assert mask_event(ev, Masker(rules(), KEY)) is ev


# --- the processor's step ----------------------------------------------------


def _doc(n: int, received: datetime, **fields: Any) -> dict[str, Any]:
    return event_to_document(AuditEvent.model_validate(event(id=f"e{n}", **fields)), received)


def _version(n: int, effective: datetime, *pairs: tuple[str, str]) -> dict[str, Any]:
    doc = new_version("acme", rules(*pairs), version=n, now=effective, delay_seconds=0.0, by="test")
    return doc


class Loader:
    def __init__(self, versions: list[dict[str, Any]]) -> None:
        self.versions = versions
        self.calls = 0

    async def __call__(self, tenants: list[str]) -> list[dict[str, Any]]:
        self.calls += 1
        return [v for v in self.versions if v["tenant"] in tenants]


async def test_each_event_is_masked_by_the_version_in_force_at_its_received_time() -> None:
    loader = Loader(
        [
            _version(1, T0, ("context.ip", "redact")),
            _version(2, T0 + timedelta(seconds=10), ("context.ip", "truncate_ip")),
            _version(3, T0 + timedelta(seconds=20)),  # cleared
        ]
    )
    now = [(T0 + timedelta(seconds=30)).timestamp()]
    book = RuleCache(loader, b"secret", cache_seconds=2, delay_seconds=10, clock=lambda: now[0])
    docs = [_doc(i, T0 + timedelta(seconds=s)) for i, s in enumerate([-1, 0, 15, 25])]
    written: list[list[dict[str, Any]]] = []

    async def write(batch: Batch) -> None:
        written.append(batch.documents)

    records = [Record("t", 0, i, 0, b"", b"") for i in range(4)]
    batch = Batch(records=records, accepted=list(zip(records, docs, strict=True)))
    await MaskedWrite(write, book)(batch)
    ips = [d["context"]["ip"] for d in written[0]]
    assert ips == ["203.0.113.77", MARKER, "203.0.113.0", "203.0.113.77"]
    assert [r for r, _ in batch.accepted] == records  # each document stays with its record


async def test_rules_are_cached_and_reloaded_when_old_or_when_an_event_is_newer() -> None:
    loader = Loader([_version(1, T0, ("context.ip", "redact"))])
    now = [T0.timestamp()]
    book = RuleCache(loader, None, cache_seconds=2, delay_seconds=10, clock=lambda: now[0])
    await book.refresh({"acme": int(T0.timestamp() * 1000)})
    await book.refresh({"acme": int(T0.timestamp() * 1000) + 9_000})
    assert loader.calls == 1  # cached: no version saved later can apply before T0 + 10 s
    await book.refresh({"acme": int(T0.timestamp() * 1000) + 10_000})
    assert loader.calls == 2  # an event the cache cannot vouch for: reload
    now[0] += 2
    await book.refresh({"acme": int(T0.timestamp() * 1000)})
    assert loader.calls == 3  # the cache time passed


async def test_control_events_are_not_masked() -> None:
    loader = Loader([_version(1, T0 - timedelta(seconds=1), ("metadata.reason", "redact"))])
    book = RuleCache(loader, None, cache_seconds=2, delay_seconds=10, clock=lambda: 0.0)
    control = _doc(1, T0, action="auditstream.event.erased", metadata={"reason": "gdpr"})
    plain = _doc(2, T0, metadata={"reason": "gdpr"})
    await book.refresh({"acme": int(T0.timestamp() * 1000)})
    out = book.mask([control, plain])
    assert out[0] is control and out[1]["metadata"]["reason"] == MARKER


# --- the SDK ------------------------------------------------------------------


def test_sdk_masking_matches_the_processor_and_the_processor_keeps_it() -> None:
    from producers.masking import ProducerMasking

    spec = [
        {"path": "metadata.user.email", "action": "hash"},
        {"path": "context.ip", "action": "truncate_ip"},
    ]
    by_secret = ProducerMasking.for_tenants({"acme": spec}, secret=b"secret")
    by_key = ProducerMasking.for_tenants({"*": {"rules": spec}}, keys={"acme": KEY.hex()})
    ev = AuditEvent.model_validate(event())
    sdk = by_secret.apply(ev)
    assert by_key.apply(ev) == sdk
    assert sdk.metadata["user"] == {"email": hash_value(KEY, "ann@example.com")}
    assert sdk.context is not None and sdk.context.ip == "203.0.113.0"
    # the processor, with the same rules and key, leaves the SDK's output as it is
    processor = Masker(MaskingRules.model_validate({"rules": spec}), KEY)
    doc = event_to_document(sdk, T0)
    assert processor.apply(doc) is doc
    assert processor.apply(event_to_document(ev, T0))["metadata"] == doc["metadata"]
    other = AuditEvent.model_validate(event(tenant="globex"))
    assert by_secret.apply(other) is other  # no rules for globex


# --- the archive's copy ---------------------------------------------------------


async def test_archived_copy_is_masked_and_replays_to_the_live_document() -> None:
    import orjson

    from audit_events.chain import document_content_hash
    from audit_events.schema import DEFAULT_LIMITS
    from stream_processor.decode import decode
    from stream_processor.masking import RecordMasker

    pairs = [("metadata.user.email", "hash"), ("changes.email", "hash"), ("actor.name", "redact")]
    loader = Loader([_version(1, T0, *pairs)])
    book = RuleCache(loader, b"secret", cache_seconds=2, delay_seconds=10, clock=lambda: 0.0)
    ts = int((T0 + timedelta(seconds=1)).timestamp() * 1000)
    no_id = {k: v for k, v in event().items() if k != "id"}  # id and occurred_at derived
    raw = [
        Record("events", 0, 7, ts, b"acme", orjson.dumps(no_id)),
        Record("events", 0, 8, ts, b"acme", orjson.dumps(event(tenant="globex"))),  # no rules
        Record("events", 0, 9, ts, b"acme", b"not json"),  # dead-lettered: kept as is
        Record("checkpoints", 0, 1, ts, b"acme", orjson.dumps(event())),  # other topic
    ]
    archived = await RecordMasker(book, "events", DEFAULT_LIMITS, 1 << 20)(raw)
    assert archived[1:] == raw[1:]
    assert archived[0].value is not None and b"ann@example.com" not in archived[0].value
    assert b"Ann Smith" not in archived[0].value
    live = decode(raw[0], DEFAULT_LIMITS, 1 << 20)
    replayed = decode(archived[0], DEFAULT_LIMITS, 1 << 20)
    assert isinstance(live, dict) and isinstance(replayed, dict)
    [live_masked] = book.mask([live])
    [replay_masked] = book.mask([replayed])
    assert replay_masked == live_masked
    if "content_hash" in live:  # decode hashed the original: the masked copy is hashed again
        assert live_masked["content_hash"] == document_content_hash(live_masked)
    assert document_content_hash(replay_masked) == document_content_hash(live_masked)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"occurred_at": "2026-03-01T10:00:00.123456+02:00", "description": "naïve café ☕"},
        {"metadata": {"f": 1.5, "big": 2**62, "deep": {"a": [1, {"b": None}]}, "t": True}},
        {"crud": "u", "outcome": "denied", "targets": [{"type": "user", "id": "u2", "name": "Bo"}]},
        {"source": {"service": "billing"}, "changes": {"x": {"new": [1, 2]}}},
    ],
)
def test_the_masked_content_hash_is_the_chains(fields: dict[str, Any]) -> None:
    from audit_events.chain import document_content_hash
    from stream_processor.masking import content_hash_of

    doc = event_to_document(AuditEvent.model_validate(event(**fields)), T0)
    masked = Masker(rules(("actor.name", "hash"), ("metadata.deep", "redact")), KEY).apply(doc)
    for d in (doc, masked):
        assert content_hash_of(d) == document_content_hash(d)


def test_the_producer_masks_what_it_emits_when_configured() -> None:
    from producers import AuditProducer, ProducerConfig
    from producers.masking import ProducerMasking

    masking = ProducerMasking.for_tenants(
        {"*": [{"path": "metadata.user.email", "action": "hash"}]}, secret=b"secret"
    )
    producer = AuditProducer(ProducerConfig(bootstrap="", masking=masking))
    ev = producer.prepare(event())
    assert ev.metadata["user"] == {"email": hash_value(KEY, "ann@example.com")}
    plain = AuditProducer(ProducerConfig(bootstrap="")).prepare(event())
    assert plain.metadata["user"] == {"email": "ann@example.com"}


@pytest.mark.unit
def test_the_archiver_refuses_to_run_without_a_mongo_uri(tmp_path: Any) -> None:
    """Without AUDITSTREAM_MONGO_URI the archiver cannot know a tenant's masking rules:
    it refuses to start rather than archive a copy the tenant asked to have masked."""
    from audit_events.settings import AuditSettings
    from stream_processor.archive.archiver import Archiver
    from stream_processor.archive.masking import ArchiveRules

    settings = AuditSettings(_env_file=None, kafka_bootstrap="k:1")  # type: ignore[call-arg]
    assert settings.mongo_uri is None
    with pytest.raises(Exception, match="AUDITSTREAM_MONGO_URI"):
        ArchiveRules(settings)
    with pytest.raises(Exception, match="AUDITSTREAM_MONGO_URI"):
        Archiver(settings, root=tmp_path)
    with_uri = settings.model_copy(update={"mongo_uri": "mongodb://m:27017"})
    assert ArchiveRules(with_uri).client is None  # no connection until rules are loaded
