"""``auditstream reindex-search`` against SecantusDB: events stored before the search
tokens (issue 18) get them, so the token-indexed list reads find them again; only
``search`` changes (chains verify, hashes unchanged); resumable and idempotent."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from werkzeug.datastructures import MultiDict

from audit_events.chain import (
    CORRECTED_ACTION,
    ERASED_FIELDS,
    GENESIS,
    aiter_list,
    seal,
    verify_chain,
)
from audit_events.codec import document_search_terms, event_to_document
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings, settings_env
from audit_events.storage import EVENT_INDEXES, REINDEX_SEARCH_COLLECTION
from auditstream.reindex_search import ReindexResult, reindex
from query_api.listing import read_page
from query_api.query import mongo_filter, parse_list_query, sort_spec
from stream_processor.chain import ensure_chain_index
from stream_processor.control import corrections_of

pytestmark = pytest.mark.integration

T0 = datetime(2026, 2, 1, tzinfo=UTC)
TOKEN = ("*", "c:", "a:", "t:")


def old_shape(tenant: str, n: int) -> list[dict[str, Any]]:
    """``n`` chained events of ``tenant`` as the version before the tokens stored them:
    ``search`` = the words only; an erased event without ``search``; an erased
    correction (keeps its target), another correction; a corrected event."""
    docs, prev = [], GENESIS
    for i in range(1, n + 1):
        corr = i in (4, 6)
        event = AuditEvent(
            id=f"{tenant}-{i}",
            tenant=tenant,
            action=CORRECTED_ACTION if corr else ("invoice.update", "user.login")[i % 2],
            occurred_at=T0 + timedelta(seconds=i // 2),
            actor={"id": ("alice", "bob")[i % 3 == 0], "type": "user", "name": "Al Ice"},
            targets=[
                {"type": "audit_event", "id": f"{tenant}-2"}
                if corr
                else {"type": "invoice", "id": str(i % 4), "name": f"Invoice {i}"}
            ],
            description=f"number {i}",
        )
        doc = event_to_document(event, T0 + timedelta(seconds=i, milliseconds=5))
        doc["search"] = [w for w in doc["search"] if not w.startswith(TOKEN)]
        prev = seal(doc, i, prev)
        docs.append(doc)
    docs[1]["corrections"] = [
        {"event_id": "ctl-1", "by": "admin", "at": T0, "reason": "r", "set": {"description": "x"}}
    ]
    for erased, keep in ((docs[2], ()), (docs[3], ("targets",))):
        for name in ERASED_FIELDS:
            if name not in keep:
                erased.pop(name, None)
        erased["erased"] = {"event_id": "ctl-2", "by": "admin", "at": T0, "reason": "gdpr"}
    return docs


FILTERS: list[dict[str, str]] = [
    {},
    {"actor": "alice"},
    {"action": "invoice.update"},
    {"action": CORRECTED_ACTION, "include_erased": "true"},
    {"action": "invoice.*"},
    {"target_id": "1"},
    {"target_type": "audit_event", "target_id": "acme-2", "include_erased": "true"},
    {"q": "number"},
    {"q": "alice invoice"},
    {"outcome": "success"},
    {"include_erased": "true"},
]


async def pages(
    store: AsyncCollection[dict[str, Any]], params: dict[str, str], windowed: bool
) -> list[str]:
    params = dict(params)
    include_erased = params.pop("include_erased", "false") == "true"
    query = parse_list_query(MultiDict({**params, "limit": "1000"}))
    if windowed:
        docs = await read_page(store, "acme", query, include_erased)
    else:
        where = mongo_filter("acme", query)
        if include_erased:
            where.pop("erased")
        docs = await store.find(where).sort(sort_spec(query.order)).to_list()
    return [d["_id"] for d in docs]


class Stop(Exception):
    pass


async def test_reindex_search_finds_old_events_resumes_and_is_idempotent(
    store: AsyncCollection[dict[str, Any]], settings: AuditSettings
) -> None:
    old = old_shape("acme", 23) + old_shape("globex", 5)
    await store.create_indexes([IndexModel(k, name=n) for n, k in EVENT_INDEXES])
    await ensure_chain_index(store)
    await store.insert_many([dict(d) for d in old])
    # Without their tokens the list reads (one index: tenant_search_time) miss them.
    assert await pages(store, {}, windowed=True) == []
    assert await pages(store, {}, windowed=False)
    # An erasure finds the corrections of its event in either shape (MongoDB reads the
    # tenant_search_time range of their word; SecantusDB scans: its planner wants
    # the filter's every field in the index).
    corrections = corrections_of("acme", "acme-2")
    assert [d["_id"] async for d in store.find(corrections)] == ["acme/acme-6"]

    journal = store.database[REINDEX_SEARCH_COLLECTION]

    def stop_after_two_steps(done: ReindexResult) -> None:
        if done.scanned >= 10:
            raise Stop

    with pytest.raises(Stop):
        await reindex(store, journal, batch_size=5, on_progress=stop_after_two_steps)
    state = await journal.find_one({"_id": store.name})
    assert state is not None and not state["done"] and state["after"] is not None
    result = await reindex(store, journal, batch_size=5)
    assert result.resumed_after == state["after"]
    assert result.scanned == len(old) - 10 and result.updated == len(old) - 10

    docs = {d["_id"]: d async for d in store.find({})}
    for before in old:
        after = docs[before["_id"]]
        assert after["search"] == document_search_terms(after)
        assert {k: v for k, v in after.items() if k != "search"} == {
            k: v for k, v in before.items() if k != "search"
        }  # seq, hashes, corrections, erasure: unchanged
    assert "*" in docs["acme/acme-3"]["search"] and "number" not in docs["acme/acme-3"]["search"]
    assert "t:acme-2" in docs["acme/acme-4"]["search"]  # the erased correction's target
    assert [d["_id"] async for d in store.find(corrections)] == ["acme/acme-6"]
    for tenant in ("acme", "globex"):
        chain = await store.find({"tenant": tenant}).sort([("seq", 1)]).to_list()
        report = await verify_chain(tenant, aiter_list(chain), [], None)
        assert report.ok and report.checked == len(chain), report

    # Every filter: the token-indexed read answers what the plain field query answers.
    for params in FILTERS:
        expected = await pages(store, params, windowed=False)
        assert await pages(store, params, windowed=True) == expected, params
        assert expected, params

    # A new pass (a finished one is not resumed) changes nothing; so does the command.
    again = await reindex(store, journal)
    assert (again.resumed_after, again.scanned, again.updated) == (None, len(old), 0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")}
    env.update(settings_env(settings))
    env["AUDITSTREAM_JWT_SECRET"] = "unused-by-reindex-search-0123456789abcdef"
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "auditstream", "reindex-search"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"scanned {len(old)} event(s), updated 0" in run.stdout


async def test_replay_since_copies_old_events_with_todays_search(
    store: AsyncCollection[dict[str, Any]], settings: AuditSettings
) -> None:
    """``auditstream replay --since`` copies the events received before ``since`` from
    the live store: they get today's ``search`` (tokens), whatever shape they had."""
    from stream_processor.replay.rebuild import Replayer

    old = old_shape("acme", 6)
    await store.insert_many([dict(d) for d in old])
    target = store.database["events_replay_copy_test"]
    replayer = Replayer(settings, batch_size=4)
    await replayer._copy_before(store, target, datetime.now(UTC))
    copied = {d["_id"]: d async for d in target.find({})}
    assert sorted(copied) == sorted(d["_id"] for d in old)
    for before in old:
        after = copied[before["_id"]]
        assert after["search"] == document_search_terms(before) and "*" in after["search"]
        assert {k: v for k, v in after.items() if k != "search"} == {
            k: v for k, v in before.items() if k != "search"
        }


async def test_an_erasure_between_read_and_write_wins(
    store: AsyncCollection[dict[str, Any]],
) -> None:
    """A document erased after the pass read it keeps its tombstone's ``search``: the
    pass writes only if ``search`` and the erasure state are still what it read."""
    from auditstream.reindex_search import FIELDS, _step

    old = old_shape("acme", 6)[4:]  # two events, not erased
    await store.insert_many([dict(d) for d in old])
    read = await store.find({}, FIELDS).sort([("_id", 1)]).to_list()
    tombstone = ["*", "c:" + old[0]["action"]]
    await store.update_one(
        {"_id": old[0]["_id"]},
        {"$set": {"erased": {"by": "x"}, "search": tombstone}, "$unset": {"description": ""}},
    )
    result = ReindexResult()
    journal = store.database[REINDEX_SEARCH_COLLECTION]
    await _step(store, journal, {"_id": store.name}, read, result, None)
    assert (result.scanned, result.updated) == (2, 1)
    docs = {d["_id"]: d async for d in store.find({})}
    assert docs[old[0]["_id"]]["search"] == tombstone
    assert docs[old[1]["_id"]]["search"] == document_search_terms(old[1])
