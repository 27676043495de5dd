"""Fuzzing the processor's decode step (issue 14): whatever a producer sends, the
worker gets a storable document or a DLQ reason, never an exception.

Arbitrary bytes, near-valid events (valid JSON with hostile values: calendar
edges, deep nesting, big integers, odd keys and strings), keys, headers and
timestamps go through :func:`record_from_message` and :func:`decode`. A document
must be what the write step can store (BSON-encodable, its content hash
computable as ``seal`` does); a reason must be foreseen (not the catch-all
``cannot be processed``) and its DLQ record must fit the limit.
``FUZZ_EXAMPLES`` raises the number of inputs (default 400 per test).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import bson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_events.chain import (
    CONTROL_ACTIONS,
    document_content_hash,
    generate_keypair,
    key_id,
    load_public_key,
)
from audit_events.schema import Limits
from stream_processor.control import ControlGate
from stream_processor.decode import decode_batch
from stream_processor.records import record_from_message
from stream_processor.sinks import dead_letter_key, dead_letter_value

pytestmark = pytest.mark.unit

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "400"))
LIMITS = Limits(max_metadata_bytes=4096, max_metadata_depth=8)
MAX_BYTES = 16 * 1024
DLQ_LIMIT = 64 * 1024
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
TRIED = {"inputs": 0, "documents": 0, "reasons": 0}
_, PUBLIC = generate_keypair()
GATE = ControlGate({key_id(PUBLIC): load_public_key(PUBLIC)})  # forged control events


@dataclass
class Message:  # what Faust hands the agent: anything may be missing or odd
    topic: str
    partition: int
    offset: int
    timestamp: Any
    key: Any
    value: Any
    headers: Any


EDGE_TIMES = [
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "2026-02-30T00:00:00Z",
    "2026-01-01T00:00:00",
    "2026-01-01T00:00:00+24:00",
    "1970-01-01T00:00:00Z",
]
BIG_INTS = st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**40, 2**63 - 1, -(2**63)])
weird_text = st.text(
    st.characters(codec="utf-8", categories=None, exclude_categories=()), max_size=40
) | st.sampled_from(["$where", "a.b", "a\x00b", "", "\u202e", "\ufeff", "x" * 300])
scalars = st.none() | st.booleans() | st.integers() | BIG_INTS | weird_text
scalars |= st.floats(allow_nan=False, allow_infinity=False)


def deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"d": value}
    return value


json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(weird_text, inner, max_size=4),
    max_leaves=20,
) | st.integers(0, 120).map(deep)


def event_fields(tenant: Any, action: Any) -> Any:
    return st.fixed_dictionaries({"tenant": tenant, "action": action}, optional=OPTIONAL_FIELDS)


OPTIONAL_FIELDS = {
    "id": st.just("e1") | weird_text,
    "occurred_at": st.sampled_from(EDGE_TIMES) | weird_text | st.integers(),
    "crud": st.sampled_from(["c", "x"]),
    "actor": st.fixed_dictionaries({"id": weird_text}) | json_values,
    "targets": st.lists(st.fixed_dictionaries({"type": weird_text, "id": weird_text}))
    | json_values,
    "description": weird_text,
    "changes": st.dictionaries(
        weird_text, st.fixed_dictionaries({}, optional={"old": json_values, "new": json_values})
    )
    | json_values,
    "metadata": st.dictionaries(weird_text, json_values, max_size=5) | json_values,
    "context": st.fixed_dictionaries({}, optional={"ip": weird_text}) | json_values,
}
any_event = event_fields(st.just("acme") | weird_text, st.just("a.b") | weird_text)
near_valid_event = event_fields(
    st.sampled_from(["acme", "t-1"]), st.sampled_from(["invoice.update", *CONTROL_ACTIONS])
)


def dumps(value: Any) -> bytes:
    # json (not orjson): integers beyond 64 bits and lone surrogates stay in the bytes
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


values = (
    st.none()
    | st.binary(max_size=2048)
    | any_event.map(dumps)
    | json_values.map(dumps)
    | st.binary(min_size=MAX_BYTES - 8, max_size=MAX_BYTES + 8)
)
timestamps = (
    st.none()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(0, 253402300799).map(float)
    | st.text(max_size=5)
)
keys = st.none() | st.binary(max_size=600) | st.text(max_size=20) | st.integers()
headers = (
    st.none()
    | st.lists(st.tuples(st.text(max_size=20), st.none() | st.binary(max_size=100)), max_size=5)
    | st.dictionaries(st.text(max_size=5), st.binary(max_size=10))
    | st.integers()
    | st.lists(st.integers(), max_size=3)
)


def check(msg: Message) -> None:
    TRIED["inputs"] += 1
    record = record_from_message(msg)
    batch = decode_batch([record], LIMITS, MAX_BYTES, check=GATE)
    assert len(batch.documents) + len(batch.rejects) == 1
    result = batch.rejects[0][1] if batch.rejects else batch.documents[0]
    if isinstance(result, str):
        TRIED["reasons"] += 1
        assert result and not result.startswith("cannot be processed"), result
        letter = dead_letter_value(record, result, max_bytes=DLQ_LIMIT)
        assert len(letter) + len(dead_letter_key(record) or b"") <= DLQ_LIMIT
        return
    TRIED["documents"] += 1
    assert len(bson.encode(result)) < 16 * 1024 * 1024  # what insert_many sends
    # decode's content hash is what seal() would compute from the stored fields
    assert result["content_hash"] == document_content_hash(result)


@FUZZ
@given(values, keys, headers, timestamps)
def test_decode_never_raises_on_arbitrary_records(value: Any, key: Any, hdrs: Any, ts: Any) -> None:
    check(Message("audit.events", 0, 1, ts, key, value, hdrs))


@FUZZ
@given(near_valid_event, st.integers(0, 253402300799999))
def test_near_valid_events_are_storable_documents_or_precise_reasons(
    fields: dict[str, Any], ts_ms: int
) -> None:
    check(Message("audit.events", 0, 1, ts_ms / 1000, b"acme", dumps(fields), None))


def test_zz_report_fuzz_figures() -> None:
    print(f"FIGURES fuzz {TRIED}")
