"""Control-event proof (issue 14 item 6) and the idle-checkpoint policy (item 7a): pure logic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pydantic import SecretStr, ValidationError

from audit_events import chain
from audit_events.codec import event_to_document, event_wire_dict
from audit_events.schema import AuditEvent, Limits
from audit_events.settings import AuditSettings
from stream_processor.checkpoints import Checkpointer, idle_period
from stream_processor.control import ControlGate
from stream_processor.decode import decode_batch
from stream_processor.records import Record
from tests.unit.audit_events.test_chain import T0, build

pytestmark = pytest.mark.unit
PRIVATE, PUBLIC = chain.generate_keypair()
OLD_PRIVATE, OLD_PUBLIC = chain.generate_keypair()
KEYS = {chain.key_id(p): chain.load_public_key(p) for p in (PUBLIC, OLD_PUBLIC)}


def control(action: str = chain.ERASED_ACTION, **extra: Any) -> dict[str, Any]:
    event = AuditEvent.model_validate(
        {
            "tenant": "acme",
            "action": action,
            "actor": {"id": "admin1", "type": "admin"},
            "targets": [{"type": "audit_event", "id": "e1"}],
            "description": "gdpr",
            **extra,
        }
    )
    return event_wire_dict(event)


def signed(fields: dict[str, Any], private: str = PRIVATE) -> dict[str, Any]:
    return chain.sign_control(chain.load_private_key(private), fields)


def test_signed_control_events_verify_and_carry_kid_and_sig() -> None:
    erasure = signed(control())
    assert set(erasure["metadata"]["proof"]) == {"kid", "sig"}
    assert erasure["metadata"]["proof"]["kid"] == chain.key_id(PUBLIC)
    assert chain.control_problem(erasure, KEYS) is None
    correction = signed(control(chain.CORRECTED_ACTION, metadata={"set": {"description": "x"}}))
    assert chain.control_problem(correction, KEYS) is None
    assert correction["metadata"]["set"] == {"description": "x"}
    # a rotated-out key still verifies while its public key is listed
    assert chain.control_problem(signed(control(), OLD_PRIVATE), KEYS) is None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"tenant": "globex"}, "signature does not cover"),
        ({"targets": [{"type": "audit_event", "id": "e2"}]}, "signature does not cover"),
        ({"description": "other"}, "signature does not cover"),
        ({"id": "another-id"}, "signature does not cover"),
        ({"action": chain.CORRECTED_ACTION}, "signature does not cover"),
        ({"action": "auditstream.event.purged"}, "unknown action"),
        ({"metadata": {}}, "no proof"),
        ({"metadata": {"proof": {"kid": "ffffffffffffffff", "sig": "AAAA"}}}, "unknown key id"),
        ({"metadata": {"proof": {"kid": "x"}}}, "no proof"),
    ],
)
def test_anything_but_the_signed_event_is_refused(change: dict[str, Any], problem: str) -> None:
    forged = {**signed(control()), **change}
    assert problem in (chain.control_problem(forged, KEYS) or "")


def test_a_bad_signature_of_a_known_key_and_garbage_base64_are_refused() -> None:
    erasure = signed(control())
    kid = erasure["metadata"]["proof"]["kid"]
    for sig in ("AAAA", "not base64!", ""):
        forged = {**erasure, "metadata": {"proof": {"kid": kid, "sig": sig}}}
        assert "signature does not cover" in (chain.control_problem(forged, KEYS) or "")
    assert chain.control_problem(signed(control()), {}) is not None  # no keys: fail closed


def test_sign_control_needs_a_complete_event() -> None:
    with pytest.raises(ValueError, match="id and occurred_at"):
        chain.sign_control(chain.load_private_key(PRIVATE), {"tenant": "a", "action": "x"})


def test_control_keys_from_settings_by_key_id() -> None:
    settings = AuditSettings(
        control_signing_key=SecretStr(PRIVATE), control_public_keys=[OLD_PUBLIC]
    )
    assert set(chain.control_keys(settings)) == {chain.key_id(PUBLIC), chain.key_id(OLD_PUBLIC)}
    assert chain.control_keys(AuditSettings()) == {}
    with pytest.raises(ValidationError, match="control_public_keys"):
        AuditSettings(control_public_keys=["bm90IGEga2V5"])
    with pytest.raises(ValidationError, match="control_signing_key"):
        AuditSettings(control_signing_key=SecretStr("REPLACE-ME"))
    assert AuditSettings(control_signing_key=SecretStr("")).control_signing_key is None


def record(value: dict[str, Any], offset: int = 0) -> Record:
    key = str(value["tenant"]).encode()  # keyed by tenant, as every producer does
    return Record("audit.events", 0, offset, 1_700_000_000_000, key, orjson.dumps(value))


def test_the_gate_dead_letters_forged_control_events_in_decode_batch() -> None:
    plain = {"tenant": "acme", "action": "invoice.update"}
    forged = control()  # no proof
    forged_other = {"tenant": "acme", "action": "auditstream.anything"}
    genuine = signed(control())
    stolen = {**genuine, "tenant": "globex"}
    records = [record(v, i) for i, v in enumerate([plain, forged, forged_other, genuine, stolen])]
    batch = decode_batch(records, Limits(), 256 * 1024, ControlGate(KEYS))
    assert [d["action"] for d in batch.documents] == ["invoice.update", chain.ERASED_ACTION]
    assert [r.offset for r, _ in batch.rejects] == [1, 2, 4]
    assert all(why.startswith("forged control event: ") for _, why in batch.rejects)


class FakeCollection:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    async def replace_one(self, flt: dict[str, Any], doc: dict[str, Any], upsert: bool) -> None:
        self.docs[flt["_id"]] = doc

    async def aggregate(self, pipeline: list[dict[str, Any]]) -> Any:
        """Only ``$group`` by tenant with ``$max`` of seq, as Checkpointer.seed uses it."""
        best: dict[str, int] = {}
        for doc in self.docs.values():
            best[doc["tenant"]] = max(best.get(doc["tenant"], 0), doc["seq"])
        return chain.aiter_list([{"_id": t, "seq": s} for t, s in best.items()])


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def checkpointer(clock: Clock, every_events: int = 1000, every_seconds: float = 60.0) -> Any:
    published: list[tuple[bytes, bytes]] = []

    async def publish(key: bytes, value: bytes) -> None:
        published.append((key, value))

    cp = Checkpointer(
        chain.load_private_key(PRIVATE),
        publish,
        FakeCollection(),  # type: ignore[arg-type]
        every_events=every_events,
        every_seconds=every_seconds,
        clock=clock,
        now=lambda: datetime(2026, 1, 1, tzinfo=UTC),
    )
    return cp, published


def test_due_is_pure_and_driven_by_the_clock_it_is_given() -> None:
    cp, _ = checkpointer(Clock(), every_events=10, every_seconds=60)
    assert cp.due("acme", 1, 0.0)  # never checkpointed: due at once
    cp._last["acme"] = (5, 100.0)
    assert not cp.due("acme", 5, 1e9)  # the head did not move
    assert not cp.due("acme", 6, 159.9)  # moved a little, checkpoint still fresh
    assert cp.due("acme", 6, 160.0)  # moved, and the checkpoint is every_seconds old
    assert cp.due("acme", 15, 100.0)  # moved by every_events
    assert not cp.due("acme", 14, 100.0)


async def test_idle_checkpoints_a_head_that_moved_and_then_stayed_idle() -> None:
    clock = Clock()
    cp, published = checkpointer(clock, every_events=1000, every_seconds=60)
    assert await cp.after_batch({"acme": (1, "a" * 64)}) == 1  # first: due at once
    clock.t += 1
    assert await cp.after_batch({"acme": (3, "b" * 64)}) == 0  # not due: tail of 2
    assert cp.pending() == {"acme": (3, "b" * 64)}
    clock.t += 30
    assert await cp.idle() == 0  # idle, but the last checkpoint is only 31 s old
    clock.t += 29
    assert await cp.idle() == 1  # 60 s: the idle head gets its checkpoint, no new batch needed
    assert cp.pending() == {}
    tenant, value = published[-1]
    assert tenant == b"acme" and orjson.loads(value)["seq"] == 3
    clock.t += 600
    assert await cp.idle() == 0  # nothing moved: nothing to sign


async def test_a_failed_idle_checkpoint_stays_pending_and_is_retried() -> None:
    clock = Clock()
    cp, published = checkpointer(clock, every_seconds=1)
    failing = True

    async def publish(key: bytes, value: bytes) -> None:
        if failing:
            raise OSError("broker down")
        published.append((key, value))

    cp._publish = publish
    assert await cp.after_batch({"acme": (2, "c" * 64)}) == 0
    assert cp.pending() == {"acme": (2, "c" * 64)}
    failing = False
    assert await cp.idle() == 1 and cp.pending() == {}


async def test_seed_adopts_stored_heads_no_checkpoint_covers() -> None:
    """A worker that died before signing left heads unsigned: its successor signs them."""
    clock = Clock()
    cp, published = checkpointer(clock, every_seconds=60)
    assert await cp.after_batch({"acme": (10, "a" * 64), "covered": (7, "d" * 64)}) == 2
    restarted, published = checkpointer(clock, every_seconds=60)
    restarted._coll = cp._coll  # same checkpoints collection, fresh worker memory
    heads = {"acme": (15, "b" * 64), "globex": (3, "c" * 64), "initech": (0, "0" * 64)}
    assert await restarted.seed({**heads, "covered": (7, "d" * 64)}) == 2
    assert restarted.pending() == {"acme": (15, "b" * 64), "globex": (3, "c" * 64)}
    assert await restarted.idle() == 2  # never checkpointed by this worker: due at once
    assert sorted(orjson.loads(v)["seq"] for _, v in published) == [3, 15]
    assert await restarted.seed(heads) == 0  # now covered


def test_idle_period_is_bounded() -> None:
    assert idle_period(60) == 5.0 and idle_period(1) == 0.5 and idle_period(0.01) == 0.05


def test_up_generates_a_dev_control_key_once_and_the_public_keys_for_everyone(
    tmp_path: Any,
) -> None:
    from auditstream.trust_cli import CONTROL_SIGNING_ENV, dev_control_env

    env = dev_control_env(AuditSettings(), tmp_path)
    again = dev_control_env(AuditSettings(), tmp_path)
    assert env == again and (tmp_path / "control_signing_key").stat().st_mode & 0o777 == 0o600
    publics = orjson.loads(env["AUDITSTREAM_CONTROL_PUBLIC_KEYS"])
    own = chain.public_key_b64(chain.load_private_key(env[CONTROL_SIGNING_ENV]))
    assert publics == [own]
    configured = AuditSettings(
        control_signing_key=SecretStr(PRIVATE), control_public_keys=[OLD_PUBLIC]
    )
    env = dev_control_env(configured, tmp_path)
    assert env[CONTROL_SIGNING_ENV] == PRIVATE
    assert orjson.loads(env["AUDITSTREAM_CONTROL_PUBLIC_KEYS"]) == [OLD_PUBLIC, PUBLIC]


# --- verify: erasures, corrections and control events against their proofs ----


def _chain_with_controls() -> list[dict[str, Any]]:
    """e0000..e0004, then an API-signed erasure of e0001 and correction of e0002 (applied)."""
    docs = build(5)
    key = chain.load_private_key(PRIVATE)
    for i, (action, target, extra) in enumerate(
        [
            (chain.ERASED_ACTION, "e0001", {}),
            (chain.CORRECTED_ACTION, "e0002", {"metadata": {"set": {"description": "fixed"}}}),
        ]
    ):
        fields = event_wire_dict(
            AuditEvent.model_validate(
                {
                    "id": f"ctl{i}",
                    "tenant": "acme",
                    "action": action,
                    "targets": [{"type": "audit_event", "id": target}],
                    "description": "why",
                    **extra,
                }
            )
        )
        doc = event_to_document(AuditEvent.model_validate(chain.sign_control(key, fields)), T0)
        chain.seal(doc, len(docs) + 1, docs[-1]["hash"])
        docs.append(doc)
    erased = {"event_id": "ctl0", "by": "admin", "at": T0, "reason": "why"}
    for name in chain.ERASED_FIELDS:
        docs[1].pop(name, None)
    docs[1]["erased"] = erased
    docs[2]["corrections"] = [
        {"event_id": "ctl1", "set": {"description": "fixed"}, "previous": {"description": None}}
    ]
    return docs


async def verify_docs(docs: list[dict[str, Any]], keys: Any = KEYS) -> chain.Report:
    by_id = {chain.event_id_of(d): d for d in docs}

    async def lookup(event_id: str) -> dict[str, Any] | None:
        return by_id.get(event_id)

    return await chain.verify_chain(
        "acme",
        chain.aiter_list(sorted(docs, key=lambda d: d["seq"])),
        [],
        None,
        control_keys=keys,
        controls=lookup,
    )


async def test_authentic_erasures_and_corrections_verify() -> None:
    report = await verify_docs(_chain_with_controls())
    assert (report.ok, report.checked, report.erased, report.corrected) == (True, 7, 1, 1)


async def test_a_hand_made_or_borrowed_erasure_is_reported_with_id_and_seq() -> None:
    docs = _chain_with_controls()
    for name in chain.ERASED_FIELDS:
        docs[3].pop(name, None)
    docs[3]["erased"] = {"event_id": "nothing", "by": "mallory"}
    report = await verify_docs(docs)
    assert (report.ok, report.first_bad_seq, report.first_bad_id, report.reason) == (
        False,
        4,
        "e0003",
        "bad_erasure",
    )
    docs[3]["erased"] = dict(docs[1]["erased"])  # the real erasure of e0001
    report = await verify_docs(docs)
    assert (report.first_bad_id, report.reason) == ("e0003", "bad_erasure")
    assert "which erases 'e0001'" in (report.detail or "")


async def test_a_correction_record_must_match_its_signed_correction() -> None:
    docs = _chain_with_controls()
    docs[2]["corrections"][0]["set"] = {"description": "something else"}
    report = await verify_docs(docs)
    assert (report.first_bad_seq, report.first_bad_id, report.reason) == (
        3,
        "e0002",
        "bad_correction",
    )
    docs = _chain_with_controls()
    docs[4]["corrections"] = [{"event_id": "ctl1", "set": {"description": "fixed"}}]
    assert (await verify_docs(docs)).reason == "bad_correction"  # ctl1 targets e0002


async def test_stored_control_events_need_a_known_key() -> None:
    report = await verify_docs(_chain_with_controls(), keys={})
    assert (report.first_bad_seq, report.reason) == (2, "bad_erasure")  # e0001's erasure
    assert "no control public key" in (report.detail or "")


async def test_received_at_is_in_the_link_and_old_links_still_verify() -> None:
    docs = build(4)
    docs[2]["received_at"] += timedelta(milliseconds=1)
    report = await verify_docs(docs)
    assert (report.first_bad_seq, report.first_bad_id, report.reason) == (3, "e0002", "edited")
    old = build(4)  # sealed before received_at was in the link
    prev = chain.GENESIS
    for doc in old:
        doc["hash"] = prev = chain.link(prev, doc["content_hash"])
    assert (await verify_docs(old)).ok
    old[1]["hash"] = chain.link(old[0]["hash"], old[1]["content_hash"], 0)
    assert (await verify_docs(old)).reason == "edited"
