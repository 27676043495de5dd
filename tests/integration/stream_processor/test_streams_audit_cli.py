"""``auditstream streams add/update/delete/redrive`` leave each change in the tenant's
trail as ``/v1/streams`` does (actor ``cli:<user>``, never a secret), publish nothing
for a refused change, and ``add`` keeps the tenant's limit of destinations with the
API's slots, also when several run at once."""

from __future__ import annotations

import asyncio
import getpass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from audit_events.settings import AuditSettings
from audit_events.stream_secrets import StreamSecrets
from audit_events.streams import (
    MAX_STREAMS_PER_TENANT,
    STREAM_DEAD_LETTERS_COLLECTION,
    STREAMS_COLLECTION,
    StreamCreate,
    insert_in_a_slot,
    new_stream_document,
)
from audit_events.topic_admin import ensure_topics
from tests.integration.query_api.test_streams_audited import trail
from tests.integration.stream_processor import test_streams as base
from tests.integration.stream_processor.test_streams import SECRET, _cli, seed

pytestmark = pytest.mark.integration
PREFIX = "stream.destination."
# the log-stream tests' fixtures: loopback receivers behind TLS, private hosts allowed
tls, sset, db, receivers = base.tls, base.sset, base.db, base.receivers


def add_args(url: str, name: str = "cli") -> tuple[str, ...]:
    return ("streams", "add", "--tenant", "acme", "--kind", "webhook", "--name", name,
            "--url", url, "--secret-stdin")  # fmt: skip


async def test_cli_destination_changes_are_audited(
    sset: AuditSettings, db: AsyncDatabase[dict[str, Any]], receivers: Any
) -> None:
    await ensure_topics(sset)
    rec = receivers(secrets=[SECRET])
    await seed(db, "acme", 1, 2)
    added = _cli(sset, *add_args(rec.url + "?api_key=k1&v=2"), stdin=SECRET + "\n")
    assert added.returncode == 0, added.stderr
    sid = added.stdout.strip()
    # refused: nothing published
    assert _cli(sset, "streams", "update", "st_nope", "--name", "x").returncode == 1
    assert _cli(sset, "streams", "delete", "st_nope").returncode == 1
    assert _cli(sset, "streams", "redrive", "st_nope").returncode == 1
    bad = _cli(sset, "streams", "update", sid, "--url", "http://example.com/")
    assert bad.returncode == 1
    renamed = _cli(sset, "streams", "update", sid, "--name", "cli-2", "--disable")
    assert renamed.returncode == 0, renamed.stderr
    rotated = _cli(sset, "streams", "update", sid, "--rotate-secret", "--secret-stdin",
                   stdin="whsec-rotated-0123456789\n")  # fmt: skip
    assert rotated.returncode == 0, rotated.stderr
    nothing = _cli(sset, "streams", "redrive", sid)  # no dead letters: no change
    assert nothing.returncode == 0, nothing.stderr
    await db[STREAM_DEAD_LETTERS_COLLECTION].insert_one(
        {"stream_id": sid, "tenant": "acme", "first_seq": 2, "last_seq": 2, "count": 1,
         "at": datetime.now(UTC), "error": "HTTP 500"}
    )  # fmt: skip
    rec.secrets = ["whsec-rotated-0123456789"]
    redriven = _cli(sset, "streams", "redrive", sid)
    assert redriven.returncode == 0, redriven.stdout + redriven.stderr
    deleted = _cli(sset, "streams", "delete", sid)
    assert deleted.returncode == 0, deleted.stderr

    events = await trail(sset)
    assert [e["action"] for e in events] == [
        PREFIX + "created",
        PREFIX + "updated",
        PREFIX + "secret_rotated",
        PREFIX + "redriven",
        PREFIX + "deleted",
    ]
    for e in events:
        assert e["tenant"] == "acme"
        assert e["actor"] == {"id": f"cli:{getpass.getuser()}", "type": "admin"}
        assert e["source"] == {"service": "auditstream-cli"}
        assert e["targets"][0]["type"] == "stream_destination"
        assert e["targets"][0]["id"] == sid
        text = orjson.dumps(e).decode()
        assert SECRET not in text and "whsec-rotated" not in text and "k1" not in text
    created, updated, secret_rotated, redrive_ev, _ = events
    assert created["metadata"]["url"] == rec.url + "?api_key=REDACTED&v=2"
    assert created["metadata"]["position"] == 2
    assert updated["changes"] == {
        "name": {"old": "cli", "new": "cli-2"},
        "enabled": {"old": True, "new": False},
    }
    assert secret_rotated["metadata"]["changed"] == ["secret"]
    assert redrive_ev["metadata"] == {"batches": 1, "events": 1, "error": None}
    doc = await db[STREAMS_COLLECTION].find_one({"_id": sid})
    assert doc is None


async def test_cli_change_without_kafka_is_saved_and_says_it_is_not_audited(
    sset: AuditSettings, db: AsyncDatabase[dict[str, Any]]
) -> None:
    await ensure_topics(sset)
    added = _cli(sset, *add_args("https://127.0.0.1:9/hook"), stdin=SECRET + "\n")
    assert added.returncode == 0, added.stderr
    sid = added.stdout.strip()
    down = sset.model_copy(update={"kafka_bootstrap": "127.0.0.1:9"})
    renamed = _cli(down, "streams", "update", sid, "--name", "n2")
    assert renamed.returncode == 1, renamed
    assert "not published" in renamed.stderr and "stream.destination.updated" in renamed.stderr
    doc = await db[STREAMS_COLLECTION].find_one({"_id": sid})
    assert doc is not None and doc["name"] == "n2"


async def test_cli_add_keeps_the_tenants_limit_with_the_apis_slots(
    sset: AuditSettings, db: AsyncDatabase[dict[str, Any]]
) -> None:
    """The tenant has limit - 2 destinations; 4 ``streams add`` at once: 2 succeed, 2
    exit 1 with one line naming the limit; nothing is published for those."""
    await ensure_topics(sset)
    box = StreamSecrets.from_settings(sset)
    for i in range(MAX_STREAMS_PER_TENANT - 2):
        body = StreamCreate(kind="webhook", name=f"s{i}", url="https://127.0.0.1:9/", secret=SECRET)
        doc = new_stream_document(
            "acme", body, head_seq=0, by="test", stream_id=f"st_{i}", now=datetime.now(UTC), box=box
        )
        await insert_in_a_slot(db[STREAMS_COLLECTION], doc)
    runs = await asyncio.gather(
        *(
            asyncio.to_thread(
                _cli, sset, *add_args("https://127.0.0.1:9/", f"c{i}"), stdin=SECRET + "\n"
            )
            for i in range(4)
        )
    )
    codes = sorted(r.returncode for r in runs)
    assert codes == [0, 0, 1, 1], [(r.returncode, r.stderr) for r in runs]
    for r in runs:
        if r.returncode:
            assert (
                r.stderr.strip() == f"Error: a tenant has at most {MAX_STREAMS_PER_TENANT} streams"
            )
    assert await db[STREAMS_COLLECTION].count_documents({"tenant": "acme"}) == (
        MAX_STREAMS_PER_TENANT
    )
    slots = await db[STREAMS_COLLECTION].distinct("slot", {"tenant": "acme"})
    assert sorted(slots) == list(range(MAX_STREAMS_PER_TENANT))
    assert len(await trail(sset)) == 2
