"""An export with corrections and erasures verifies offline (issue 13 item 6).

Real processor and API: five events, one corrected and one erased through the
log; ``GET /v1/events/export?format=ndjson&include_erased=true`` with the
checkpoints and the public key from the API verifies with
``python -m producers.verify_offline --complete``; the same export without
tombstones is refused with the gap and how to export them; a tampered export is
refused.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from pymongo.asynchronous.collection import AsyncCollection
from quart.typing import TestClientProtocol as Client

from audit_events import chain
from audit_events.settings import AuditSettings
from audit_events.storage import CHECKPOINTS_COLLECTION
from tests.conftest import ProcessorProcess
from tests.helpers import eventually
from tests.integration.stream_processor.test_trust import (
    ADMIN,
    PUBLIC,
    ingest,
    make_events,
    start_processor,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(settings: AuditSettings) -> AuditSettings:
    """Checkpoint after every batch, so the newest event is always signed."""
    return settings.model_copy(
        update={"checkpoint_public_key": PUBLIC, "checkpoint_every_events": 1}
    )


def verify_offline(tmp_path: Path, events: list[dict[str, Any]], *extra: str) -> str:
    """Run the offline verifier CLI on ``events``; its exit status and output."""
    path = tmp_path / "export.ndjson"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "producers.verify_offline",
            "--events",
            str(path),
            "--checkpoints",
            str(tmp_path / "checkpoints.json"),
            "--public-key",
            str(tmp_path / "public.key"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return f"{run.returncode} {run.stdout}{run.stderr}"


async def test_export_with_tombstones_verifies_offline(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    tmp_path: Path,
) -> None:
    start_processor(processors)
    await ingest(client, auth, store, make_events(5, "x"))
    admin = auth(scopes=ADMIN)
    fix = {"reason": "typo", "set": {"description": "credited invoice 1"}}
    resp = await client.put("/v1/events/x-001?wait=true", json=fix, headers=admin)
    assert resp.status_code == 200, await resp.get_data()
    resp = await client.delete("/v1/events/x-002?wait=true&reason=gdpr", headers=admin)
    assert resp.status_code == 204, await resp.get_data()

    async def signed_head() -> bool:
        cp = await store.database[CHECKPOINTS_COLLECTION].find_one({"seq": 7})
        return await store.count_documents({}) == 7 and cp is not None

    await eventually(signed_head, timeout=90)

    async def export(query: str) -> list[dict[str, Any]]:
        resp = await client.get(f"/v1/events/export?format=ndjson{query}", headers=auth())
        assert resp.status_code == 200, await resp.get_data()
        return [orjson.loads(line) for line in (await resp.get_data()).splitlines()]

    full = await export("&include_erased=true&order=asc")
    assert len(full) == 7
    [tomb] = [e for e in full if e.get("erased")]
    assert tomb["id"] == "x-002" and tomb["erased"]["reason"] == "gdpr"
    chained = {"id", "tenant", "seq", "action", "received_at", "content_hash", "hash"}
    assert set(tomb) == chained | {"erased"}
    ids = [e["id"] for e in full]
    assert ids[:5] == [f"x-00{i}" for i in range(5)]  # the tombstone in its place
    cps = await (await client.get("/v1/checkpoints", headers=auth())).get_json()
    key = await (await client.get("/v1/verify/public-key")).get_json()
    (tmp_path / "checkpoints.json").write_bytes(orjson.dumps(cps))
    (tmp_path / "public.key").write_bytes(orjson.dumps(key))  # current + retired keys

    out = verify_offline(tmp_path, full, "--complete")
    print(out)
    assert out.startswith("0 ok  acme: 7 events"), out

    # without include_erased the erased event is a gap, and the verifier says why
    plain = await export("&order=asc")
    assert [e["id"] for e in plain].count("x-002") == 0 and len(plain) == 6
    out = verify_offline(tmp_path, plain, "--complete")
    print(out)
    assert out.startswith("1 BAD acme: first bad seq 3: deleted"), out
    assert "include_erased=true" in out

    # tampering is still caught: an edited event, and an event passed off as erased
    edited = [dict(e) for e in full]
    edited[3]["description"] = "nothing happened"
    out = verify_offline(tmp_path, edited, "--complete")
    assert out.startswith("1 BAD acme: first bad seq 4: edited"), out
    hidden = [dict(e) for e in full]
    hidden[3] = {k: hidden[3][k] for k in tomb if k != "erased"} | {"erased": tomb["erased"]}
    out = verify_offline(tmp_path, hidden, "--complete")
    print(out)
    assert out.startswith("1 BAD acme: first bad seq 4: edited"), out
    assert "not backed by erasure event" in out
    assert chain.ERASED_ACTION in {e["action"] for e in full}
