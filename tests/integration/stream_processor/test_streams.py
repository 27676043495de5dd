"""Log streams (issue 17): /v1/streams, the stream worker, real HTTPS receivers on loopback.

Stored events are seeded straight into the real MongoDB with their seq (what the
processor writes); the worker reads them by (tenant, seq). The end-to-end test
at the bottom runs the real processor and API instead.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from quart import Quart

from audit_events.settings import AuditSettings, settings_env
from audit_events.storage import EVENTS_COLLECTION, event_key
from audit_events.stream_secrets import StreamSecrets
from audit_events.streams import STREAM_DEAD_LETTERS_COLLECTION, STREAMS_COLLECTION
from query_api.app import create_app
from stream_processor.streams.worker import Streamer, redrive
from tests.helpers import eventually
from tests.stream_receivers import Receiver, self_signed

pytestmark = pytest.mark.integration
SECRET = "whsec-first-0123456789"
ADMIN = "events:read events:write events:admin"


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path)


@pytest.fixture
def sset(settings: AuditSettings, tls: tuple[Path, Path]) -> AuditSettings:
    return settings.model_copy(
        update={
            "streams_ca_file": str(tls[0]),
            "streams_allow_private_hosts": True,  # the receivers are on loopback
            "streams_poll_seconds": 0.05,
            "streams_retry_base_seconds": 0.05,
            "streams_retry_max_seconds": 0.3,
            "streams_lease_seconds": 2.0,
            "streamer_metrics_port": 0,
        }
    )


@pytest.fixture
async def db(sset: AuditSettings) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(sset.mongo_uri, tz_aware=True)
    yield client[sset.mongo_db]
    await client.close()


@pytest.fixture
async def sapi(sset: AuditSettings) -> AsyncIterator[Quart]:
    app = create_app(sset)
    async with app.test_app():
        yield app


@pytest.fixture
def receivers(tls: tuple[Path, Path]) -> Callable[..., Receiver]:
    started: list[Receiver] = []

    def make(**kw: Any) -> Receiver:
        r = Receiver(tls[0], tls[1], **kw).start()
        started.append(r)
        return r

    yield make  # type: ignore[misc]
    for r in started:
        r.stop()


@pytest.fixture
async def worker(sset: AuditSettings) -> AsyncIterator[Callable[..., Streamer]]:
    tasks: list[tuple[asyncio.Task[None], asyncio.Event]] = []

    def start(settings: AuditSettings | None = None) -> Streamer:
        streamer = Streamer(settings or sset)
        stop = asyncio.Event()
        tasks.append((asyncio.create_task(streamer.run(stop)), stop))
        return streamer

    yield start
    for task, stop in tasks:
        stop.set()
        await asyncio.wait_for(task, 10)


async def seed(
    db: AsyncDatabase[dict[str, Any]], tenant: str, first: int, n: int, **fields: Any
) -> None:
    """``n`` stored events with seq first..first+n-1, as the processor lays them out."""
    now = datetime.now(UTC).replace(microsecond=0)
    docs = []
    for seq in range(first, first + n):
        eid = f"ev-{tenant}-{seq:06d}"
        doc = {
            "_id": event_key(tenant, eid),
            "id": eid,
            "tenant": tenant,
            "action": "user.login",
            "outcome": "success",
            "actor": {"id": f"user-{seq}", "type": "user"},
            "occurred_at": now,
            "received_at": now,
            "seq": seq,
            "content_hash": "0" * 64,
            "hash": "0" * 64,
        }
        doc.update(fields)
        docs.append(doc)
    await db[EVENTS_COLLECTION].insert_many(docs)


def headers(token: Callable[..., str], tenant: str = "acme", scopes: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(tenant, scopes)}"}


async def create(
    sapi: Quart, token: Callable[..., str], tenant: str = "acme", **body: Any
) -> dict[str, Any]:
    body = {"kind": "webhook", "name": "hook", "secret": SECRET, "start": "beginning", **body}
    resp = await sapi.test_client().post("/v1/streams", json=body, headers=headers(token, tenant))
    assert resp.status_code == 201, await resp.get_data(as_text=True)
    out: dict[str, Any] = await resp.get_json()
    return out


async def status(sapi: Quart, token: Callable[..., str], sid: str) -> dict[str, Any]:
    resp = await sapi.test_client().get(f"/v1/streams/{sid}", headers=headers(token))
    assert resp.status_code == 200
    out: dict[str, Any] = await resp.get_json()
    return out


async def test_streams_api_crud_never_returns_secrets(
    sapi: Quart, settings: AuditSettings, token: Callable[..., str], receivers: Any
) -> None:
    client = sapi.test_client()
    rec = receivers()
    st = await create(sapi, token, url=rec.url, filters={"actions": ["invoice.*"]})
    assert st["secret_set"] is True and st["kind"] == "webhook" and st["lag_events"] == 0
    assert st["id"].startswith("st_")
    listed = await client.get("/v1/streams", headers=headers(token))
    assert [s["id"] for s in (await listed.get_json())["data"]] == [st["id"]]
    rotated = await client.put(
        f"/v1/streams/{st['id']}",
        json={"secret": "whsec-second-0123456789", "batch_size": 5},
        headers=headers(token),
    )
    view = await rotated.get_json()
    assert rotated.status_code == 200 and view["batch_size"] == 5
    assert view["previous_secret_valid_until"] is not None
    for resp in (
        listed,
        rotated,
        await client.get(f"/v1/streams/{st['id']}", headers=headers(token)),
    ):
        text = await resp.get_data(as_text=True)
        assert SECRET not in text and "whsec-second" not in text
    # errors: problem+json, never 500
    cases = [
        (client.get(f"/v1/streams/{st['id']}", headers=headers(token, "other")), 404),
        (client.get("/v1/streams", headers=headers(token, scopes="events:read")), 403),
        (client.post("/v1/streams", json={"kind": "ftp"}, headers=headers(token)), 422),
        (client.post("/v1/streams", data=b"{", headers=headers(token)), 400),
        (
            client.post(
                "/v1/streams",
                json={"kind": "webhook", "name": "x", "secret": SECRET, "url": "http://e.com/"},
                headers=headers(token),
            ),
            422,
        ),
        (
            client.put(
                f"/v1/streams/{st['id']}",
                json={"filters": {"actions": ["bad action"]}},
                headers=headers(token),
            ),
            422,
        ),
        (client.get("/v1/streams?bogus=1", headers=headers(token)), 400),
    ]
    for call, expected in cases:
        resp = await call
        assert resp.status_code == expected, await resp.get_data(as_text=True)
        assert resp.content_type == "application/problem+json"
    # loopback destinations are refused unless the deployment allows them
    strict = create_app(settings)
    async with strict.test_app():
        resp = await strict.test_client().post(
            "/v1/streams",
            json={"kind": "webhook", "name": "x", "secret": SECRET, "url": rec.url},
            headers=headers(token),
        )
        assert resp.status_code == 422
        assert "non-public" in (await resp.get_json())["detail"]
    gone = await client.delete(f"/v1/streams/{st['id']}", headers=headers(token))
    assert gone.status_code == 204
    missing = await client.get(f"/v1/streams/{st['id']}", headers=headers(token))
    assert missing.status_code == 404
    spec = await (await client.get("/openapi.json")).get_json()
    assert {"get", "post"} <= set(spec["paths"]["/v1/streams"])
    assert {"get", "put", "delete"} <= set(spec["paths"]["/v1/streams/{stream_id}"])


async def test_webhook_delivers_in_order_signed_with_rotation_and_tombstones(
    sapi: Quart,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    receivers: Any,
    worker: Any,
) -> None:
    rec = receivers(secrets=[SECRET])
    await seed(db, "acme", 1, 250)
    await seed(db, "other", 1, 5)  # another tenant's events never reach acme's stream
    erased_at = datetime.now(UTC)
    await db[EVENTS_COLLECTION].update_one(
        {"_id": event_key("acme", "ev-acme-000007")},
        {
            "$unset": {"actor": ""},
            "$set": {
                "erased": {"event_id": "ctl-1", "by": "admin", "at": erased_at, "reason": "gdpr"}
            },
        },
    )
    st = await create(sapi, token, url=rec.url, batch_size=50)
    worker()

    async def all_in() -> bool:
        return len(rec.events()) >= 250

    await eventually(all_in, 30)
    events = rec.events()
    assert [e["seq"] for e in events] == list(range(1, 251))  # in order, once each
    assert all(e["idempotency_key"] == e["id"] and e["tenant"] == "acme" for e in events)
    assert rec.bad_signatures == 0
    tomb = events[6]
    assert tomb["erased"]["reason"] == "gdpr" and "actor" not in tomb
    assert events[7]["actor"]["id"] == "user-8"
    first = rec.batches[0]["headers"]
    assert first["idempotency-key"] == f"{st['id']}:1-50"
    view = await status(sapi, token, st["id"])
    assert view["position"] == 250 and view["lag_events"] == 0 and view["delivered"] == 250
    assert view["last_success_at"] is not None

    # Rotation: during the overlap both secrets sign, so a receiver still on the
    # old secret and one already on the new one both accept.
    await sapi.test_client().put(
        f"/v1/streams/{st['id']}",
        json={"secret": "whsec-second-0123456789"},
        headers=headers(token),
    )
    await asyncio.sleep(1.2)  # a busy worker re-reads a destination's settings every second
    rec.secrets = ["whsec-second-0123456789"]
    await seed(db, "acme", 251, 10)
    await eventually(lambda: _count(rec, 260), 30)
    rec.secrets = [SECRET]
    await seed(db, "acme", 261, 10)
    await eventually(lambda: _count(rec, 270), 30)
    assert rec.bad_signatures == 0
    sig = rec.batches[-1]["headers"]["x-auditstream-signature"]
    assert sig.count("v1=") == 2
    # A replayed request (old timestamp) is rejected by the receiver's check.
    hdrs, body = rec.requests[0]
    from audit_events.streams import verify_signature

    assert not verify_signature(
        hdrs["x-auditstream-signature"], body, [SECRET], now=time.time() + 3600
    )


async def _count(rec: Receiver, n: int) -> bool:
    return len(rec.events()) >= n


async def test_one_destination_down_the_other_keeps_delivering(
    sapi: Quart,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    receivers: Any,
    worker: Any,
) -> None:
    up = receivers(secrets=[SECRET])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    down_port = sock.getsockname()[1]
    sock.close()  # nothing listens there: connection refused
    a = await create(sapi, token, url=up.url, name="up", batch_size=20)
    b = await create(sapi, token, url=f"https://127.0.0.1:{down_port}/hook", name="down")
    worker()
    await seed(db, "acme", 1, 100)
    await eventually(lambda: _count(up, 100), 30)
    await seed(db, "acme", 101, 100)  # ingestion goes on while b is down
    await eventually(lambda: _count(up, 200), 30)
    down = await status(sapi, token, b["id"])
    assert down["lag_events"] == 200 and down["position"] == 0
    assert down["lag_seconds"] >= 0 and "ConnectError" in (down["last_error"] or "")
    assert (await status(sapi, token, a["id"]))["lag_events"] == 0
    # b comes back: its lag drains, in order
    back = receivers(secrets=[SECRET], port=down_port)
    await eventually(lambda: _count(back, 200), 30)
    assert [e["seq"] for e in back.events()] == list(range(1, 201))
    assert (await status(sapi, token, b["id"]))["lag_events"] == 0


async def test_failing_batch_dead_letters_then_redrive(
    sapi: Quart,
    sset: AuditSettings,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    receivers: Any,
    worker: Any,
) -> None:
    rec = receivers(secrets=[SECRET], status=503)
    st = await create(sapi, token, url=rec.url, batch_size=10)
    await seed(db, "acme", 1, 30)
    worker(sset.model_copy(update={"streams_dead_letter_after_seconds": 0.3}))

    async def dead_lettered() -> bool:
        return (await status(sapi, token, st["id"]))["dead_lettered"] == 30

    await eventually(dead_lettered, 30)
    view = await status(sapi, token, st["id"])
    assert view["position"] == 30 and view["dead_letter_batches"] == 3
    assert view["last_error"].startswith("HTTP 503")
    # Erased while dead-lettered: the redrive must not send its payload.
    await db[EVENTS_COLLECTION].update_one(
        {"_id": event_key("acme", "ev-acme-000012")},
        {"$unset": {"actor": ""}, "$set": {"erased": {"by": "admin", "reason": "gdpr"}}},
    )
    rec.status = 200
    batches, events, error = await redrive(sset, st["id"])
    assert (batches, events, error) == (3, 30, None)
    got = rec.events()
    assert sorted(e["seq"] for e in got) == list(range(1, 31))
    tomb = next(e for e in got if e["seq"] == 12)
    assert "actor" not in tomb and tomb["erased"]["reason"] == "gdpr"
    assert await db[STREAM_DEAD_LETTERS_COLLECTION].count_documents({}) == 0


async def test_splunk_hec_and_datadog_shapes_and_filters(
    sapi: Quart,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    receivers: Any,
    worker: Any,
) -> None:
    splunk, dd = receivers(), receivers()
    await create(
        sapi,
        token,
        kind="splunk_hec",
        name="s",
        secret="hec-token-123",
        url=splunk.url,
        index="audit",
        filters={"actions": ["invoice.*"], "outcomes": ["failure"]},
    )
    await create(
        sapi, token, kind="datadog", name="d", secret="dd-key-12345", url=dd.url, tags=["env:test"]
    )
    await seed(db, "acme", 1, 3, action="invoice.paid", outcome="failure")
    await seed(db, "acme", 4, 3, action="invoice.paid", outcome="success")
    await seed(db, "acme", 7, 1, action="auditstream.event.erased")
    worker()

    async def both() -> bool:
        return (
            len(splunk.batches) >= 1 and sum(len(orjson.loads(b["body"])) for b in dd.batches) >= 7
        )

    await eventually(both, 30)
    h = splunk.batches[0]["headers"]
    assert h["authorization"] == "Splunk hec-token-123"
    lines = [orjson.loads(x) for x in splunk.batches[0]["body"].split(b"\n")]
    # filtered: 3 failures + the control event (always delivered)
    assert [x["event"]["seq"] for x in lines] == [1, 2, 3, 7]
    assert lines[0]["index"] == "audit" and lines[0]["sourcetype"] == "auditstream:event"
    assert lines[0]["fields"]["idempotency_key"] == lines[0]["event"]["id"]
    assert isinstance(lines[0]["time"], float)
    entries = [e for b in dd.batches for e in orjson.loads(b["body"])]
    assert dd.batches[0]["headers"]["dd-api-key"] == "dd-key-12345"
    assert [e["auditstream"]["seq"] for e in entries] == list(range(1, 8))
    assert (
        entries[0]["ddsource"] == "auditstream" and entries[0]["ddtags"] == "tenant:acme,env:test"
    )
    assert entries[0]["idempotency_key"] == entries[0]["auditstream"]["id"]


def _streamer(sset: AuditSettings, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")},
        **settings_env(sset),
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "auditstream", "streamer"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def test_sigkill_streamer_during_delivery_loses_nothing(
    sapi: Quart,
    sset: AuditSettings,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    receivers: Any,
    tmp_path: Path,
) -> None:
    rec = receivers(secrets=[SECRET], delay=0.05)
    total = 600
    st = await create(sapi, token, url=rec.url, batch_size=20)
    await seed(db, "acme", 1, total)
    sset = sset.model_copy(update={"streams_lease_seconds": 1.0})  # a killed lease expires fast
    proc = _streamer(sset, tmp_path / "streamer.log")
    kills = 0
    try:
        for i in range(3):
            seen = len(rec.requests)

            async def delivering(seen: int = seen) -> bool:
                return len(rec.requests) >= seen + 2

            await eventually(delivering, 30, 0.01)  # the worker is mid-stream
            if i == 1:  # anywhere in a batch cycle
                await asyncio.sleep(random.uniform(0.0, 0.15))
            else:  # while the receiver handles a batch: the worker never sees the 200

                async def inside() -> bool:
                    return rec.in_flight > 0

                await eventually(inside, 30, 0.005)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            kills += 1
            proc = _streamer(sset, tmp_path / "streamer.log")
        await eventually(lambda: _unique(rec, total), 60)

        async def saved() -> bool:  # the last 200 reached the receiver before its save
            return (await status(sapi, token, st["id"]))["position"] == total

        await eventually(saved, 30, what="the streamer saves its position")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    seqs = [e["seq"] for e in rec.events()]
    counts = Counter(seqs)
    duplicates = sum(c - 1 for c in counts.values())
    assert set(counts) == set(range(1, total + 1))  # every event at least once
    # in order: each accepted batch continues from the previous or restarts behind it
    for batch in rec.batches:
        b = [e["seq"] for e in orjson.loads(batch["body"])["events"]]
        assert b == list(range(b[0], b[0] + len(b)))
    view = await status(sapi, token, st["id"])
    assert view["position"] == total and view["lag_events"] == 0
    print(
        f"\nSIGKILL x{kills}: {total}/{total} delivered, {duplicates} duplicates, "
        f"{len(rec.requests)} requests"
    )
    assert kills == 3


async def _unique(rec: Receiver, n: int) -> bool:
    return len({e["seq"] for e in rec.events()}) >= n


async def test_metrics_per_destination(
    sapi: Quart,
    sset: AuditSettings,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    receivers: Any,
    worker: Any,
) -> None:
    rec = receivers(secrets=[SECRET])
    st = await create(sapi, token, url=rec.url)
    await seed(db, "acme", 1, 12)
    streamer = worker()
    await eventually(lambda: _count(rec, 12), 30)
    from prometheus_client import generate_latest

    await asyncio.sleep(0.3)
    text = generate_latest(streamer.metrics.registry).decode()
    label = f'{{kind="webhook",stream="{st["id"]}",tenant="acme"}}'
    assert f"auditstream_stream_events_delivered_total{label} 12.0" in text
    assert f"auditstream_stream_lag_events{label} 0.0" in text
    assert "auditstream_stream_last_success_timestamp_seconds" in text
    assert await db[STREAMS_COLLECTION].count_documents({}) == 1


async def test_pipeline_corrections_and_erasures_reach_the_stream_as_events(
    sapi: Quart,
    sset: AuditSettings,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    receivers: Any,
    worker: Any,
    processors: Callable[..., Any],
) -> None:
    """The real processor stores events, a correction and an erasure; the stream
    gets the originals, then the correction and erasure events; a stream created
    afterwards from the beginning gets the erased event as a tombstone."""
    processors()
    client = sapi.test_client()
    live = receivers(secrets=[SECRET])
    # its creation is the tenant's event seq 1 (stream.destination.created): not delivered
    only = {"actions": ["invoice.*"]}
    await create(sapi, token, url=live.url, name="live", filters=only)
    worker()
    batch = [
        {"id": f"p-{i}", "tenant": "acme", "action": "invoice.paid", "actor": {"id": "alice"}}
        for i in range(5)
    ]
    resp = await client.post("/v1/events?wait=true", json={"events": batch}, headers=headers(token))
    assert resp.status_code in (201, 202), await resp.get_data(as_text=True)
    await eventually(lambda: _count(live, 5), 60)
    fix = {"reason": "typo", "set": {"description": "credited"}}
    resp = await client.put("/v1/events/p-1?wait=true", json=fix, headers=headers(token))
    assert resp.status_code == 200, await resp.get_data(as_text=True)
    resp = await client.delete("/v1/events/p-2?wait=true&reason=gdpr", headers=headers(token))
    assert resp.status_code == 204
    await eventually(lambda: _count(live, 7), 60)
    got = live.events()
    assert [e["seq"] for e in got] == list(range(2, 9))
    assert got[2]["actor"]["id"] == "alice"  # delivered before it was erased
    corrected, erased = got[5], got[6]
    assert corrected["action"] == "auditstream.event.corrected"
    assert corrected["targets"][0]["id"] == "p-1"
    assert erased["action"] == "auditstream.event.erased"
    assert erased["targets"][0]["id"] == "p-2"
    late = receivers(secrets=[SECRET])
    await create(sapi, token, url=late.url, name="late", start="beginning", filters=only)
    await eventually(lambda: _count(late, 7), 60)
    tomb = late.events()[2]
    assert tomb["id"] == "p-2" and "actor" not in tomb and tomb["erased"]["reason"] == "gdpr"
    assert "description" not in late.events()[1]  # the original; the fix is event 6
    assert late.events()[5]["metadata"] == corrected["metadata"]


def _cli(sset: AuditSettings, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")},
        **settings_env(sset),
    }
    return subprocess.run(
        [sys.executable, "-m", "auditstream", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_streams_cli(
    sset: AuditSettings, db: AsyncDatabase[dict[str, Any]], receivers: Any
) -> None:
    rec = receivers(secrets=[SECRET])
    await seed(db, "acme", 1, 4)
    add = _cli(
        sset, "streams", "add", "--tenant", "acme", "--kind", "webhook", "--name", "cli",
        "--url", rec.url, "--secret-stdin", "--actions", "user.*", stdin=SECRET + "\n",
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    sid = add.stdout.strip()
    listed = _cli(sset, "streams", "list", "--tenant", "acme")
    assert sid in listed.stdout and "lag 0 events" in listed.stdout  # starts after seq 4
    await seed(db, "acme", 5, 3)
    shown = _cli(sset, "streams", "show", sid)
    view = orjson.loads(shown.stdout)
    assert view["lag_events"] == 3 and view["filters"]["actions"] == ["user.*"]
    assert SECRET not in shown.stdout + listed.stdout
    rotate = _cli(sset, "streams", "update", sid, "--rotate-secret", "--secret-stdin",
                  "--disable", stdin="whsec-rotated-0123456789\n")  # fmt: skip
    assert rotate.returncode == 0, rotate.stderr
    doc = await db[STREAMS_COLLECTION].find_one({"_id": sid})
    assert doc is not None and doc["enabled"] is False
    # stored encrypted (audit_events/stream_secrets.py); the key opens the previous one
    assert StreamSecrets.from_settings(sset).open(doc["previous_secret"]) == SECRET
    assert SECRET not in str(doc)
    bad = _cli(sset, "streams", "update", sid, "--url", "http://example.com/")
    assert bad.returncode == 1 and "https" in bad.stderr
    await db[STREAM_DEAD_LETTERS_COLLECTION].insert_one(
        {"stream_id": sid, "tenant": "acme", "first_seq": 5, "last_seq": 5, "count": 1,
         "at": datetime.now(UTC), "error": "HTTP 500"}
    )  # fmt: skip
    dl = _cli(sset, "streams", "dead-letters", sid)
    assert "seq 5..5" in dl.stdout and "HTTP 500" in dl.stdout
    rec.secrets = ["whsec-rotated-0123456789"]
    redriven = _cli(sset, "streams", "redrive", sid)
    assert redriven.returncode == 0, redriven.stdout + redriven.stderr
    assert "1 batches, 1 events" in redriven.stdout and rec.events()[0]["seq"] == 5
    assert _cli(sset, "streams", "delete", sid).returncode == 0
    assert _cli(sset, "streams", "show", sid).returncode == 1


@pytest.fixture
def rsyslog(tmp_path: Path, tls: tuple[Path, Path]) -> Any:
    """Debian's rsyslogd receiving RFC 5425 (syslog over TLS, ossl driver) into a file."""
    binary = shutil.which("rsyslogd") or (
        "/usr/sbin/rsyslogd" if Path("/usr/sbin/rsyslogd").exists() else None
    )
    if binary is None:
        pytest.skip("rsyslogd is not installed (apt-get install rsyslog rsyslog-openssl)")
    work = tmp_path / "rsyslog"
    work.mkdir()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    out = work / "out.log"
    conf = work / "rsyslog.conf"
    conf.write_text(
        f"""
global(workDirectory="{work}"
       DefaultNetstreamDriver="ossl"
       DefaultNetstreamDriverCAFile="{tls[0]}"
       DefaultNetstreamDriverCertFile="{tls[0]}"
       DefaultNetstreamDriverKeyFile="{tls[1]}")
module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="fields" type="string"
         string="%pri%|%app-name%|%msgid%|%structured-data%|%msg%\\n")
action(type="omfile" file="{out}" template="fields")
"""
    )
    with open(work / "stderr", "wb") as err:
        proc = subprocess.Popen(
            [binary, "-n", "-f", str(conf), "-i", str(work / "pid")],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield port, out
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)


async def test_syslog_tls_to_rsyslog(
    sapi: Quart,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    worker: Any,
    rsyslog: Any,
) -> None:
    port, out = rsyslog
    client = sapi.test_client()
    resp = await client.post(
        "/v1/streams",
        json={"kind": "syslog", "name": "rs", "url": f"syslog+tls://127.0.0.1:{port}",
              "start": "beginning", "batch_size": 7},
        headers=headers(token),
    )  # fmt: skip
    assert resp.status_code == 201, await resp.get_data(as_text=True)
    await seed(db, "acme", 1, 20, description='quote " and ] bracket')
    await db[EVENTS_COLLECTION].update_one({"seq": 3}, {"$set": {"outcome": "failure"}})
    worker()

    async def lines_in() -> bool:
        return out.exists() and len(out.read_text().splitlines()) >= 20

    await eventually(lines_in, 30)
    rows = [line.split("|", 4) for line in out.read_text().splitlines()]
    assert [r[0] for r in rows[:4]] == ["110", "110", "108", "110"]  # audit.info / audit.warning
    assert {r[1] for r in rows} == {"auditstream"} and {r[2] for r in rows} == {"user.login"}
    assert rows[0][3] == '[auditstream@32473 tenant="acme" id="ev-acme-000001" seq="1"]'
    events = [orjson.loads(r[4].lstrip("\ufeff").strip()) for r in rows]
    assert [e["seq"] for e in events] == list(range(1, 21))
    assert events[0]["description"] == 'quote " and ] bracket'
    with pytest.raises(AssertionError):  # a webhook URL is no syslog URL
        await create(sapi, token, kind="syslog", name="x", url="https://example.com/")


async def test_a_broken_destination_reports_its_error_and_others_deliver(
    sapi: Quart,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    receivers: Any,
    worker: Any,
) -> None:
    rec = receivers(secrets=[SECRET])
    good = await create(sapi, token, url=rec.url)
    # e.g. written by a newer version, or edited by hand: the worker cannot build it
    await db[STREAMS_COLLECTION].insert_one(
        {"_id": "st_broken", "tenant": "acme", "kind": "pigeon", "name": "x", "url": rec.url,
         "secret": SECRET, "enabled": True, "position": 0, "created_at": datetime.now(UTC)}
    )  # fmt: skip
    await seed(db, "acme", 1, 5)
    worker()
    await eventually(lambda: _count(rec, 5), 30)

    async def reported() -> bool:
        doc = await db[STREAMS_COLLECTION].find_one({"_id": "st_broken"})
        return bool(doc and "pigeon" in (doc.get("last_error") or ""))

    await eventually(reported, 10)
    assert (await status(sapi, token, good["id"]))["position"] == 5


async def test_previous_secret_is_dropped_after_the_overlap(
    sapi: Quart,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    receivers: Any,
    worker: Any,
) -> None:
    rec = receivers(secrets=[SECRET])
    st = await create(sapi, token, url=rec.url)
    await db[STREAMS_COLLECTION].update_one(
        {"_id": st["id"]},
        {
            "$set": {
                "previous_secret": "old-secret-1234",
                "previous_secret_until": datetime.now(UTC),
            }
        },
    )
    worker()

    async def dropped() -> bool:
        doc = await db[STREAMS_COLLECTION].find_one({"_id": st["id"]})
        return doc is not None and "previous_secret" not in doc

    await eventually(dropped, 10)


# --- S3 destination: NDJSON objects in a bucket (moto's S3-API server on loopback) ----


@pytest.fixture
def s3() -> Any:
    from tests.s3server import MotoS3

    server = MotoS3()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def s3api(sset: AuditSettings) -> AsyncIterator[Quart]:
    app = create_app(sset.model_copy(update={"streams_allow_http": True}))  # moto: http
    async with app.test_app():
        yield app


def _s3_objects(s3: Any, bucket: str, prefix: str) -> list[tuple[str, list[dict[str, Any]]]]:
    from audit_events.objectstore import ObjectStore

    store = ObjectStore(s3.location(bucket, prefix))
    keys = store.list_keys()
    return [(k, [orjson.loads(line) for line in store.get(k).splitlines()]) for k in keys]


async def test_s3_destination_writes_ndjson_objects_and_survives_the_store_down(
    s3api: Quart,
    sset: AuditSettings,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    receivers: Any,
    worker: Any,
    s3: Any,
) -> None:
    from tests.s3server import ACCESS_KEY, SECRET_KEY

    client = s3api.test_client()
    bucket = s3.bucket("stream")
    url = f"s3+http://127.0.0.1:{s3.port}/{bucket}/audit/logs"
    good = {"kind": "s3", "name": "lake", "url": url, "start": "beginning"}
    creds = {"access_key_id": ACCESS_KEY, "secret": SECRET_KEY}
    # POST /v1/streams validates the S3 fields: 422 with the reason, never 500
    for bad, why in (
        ({**good, **creds, "url": f"s3+http://127.0.0.1:{s3.port}/No_Such/x"}, "bucket"),
        ({**good, **creds, "url": "s3://bucket-name/a/../b"}, "prefix"),
        ({**good, **creds, "url": f"s3+http://u:p@127.0.0.1:{s3.port}/{bucket}"}, "credentials"),
        ({**good, "secret": SECRET_KEY}, "access_key_id"),
        ({**good, "access_key_id": ACCESS_KEY}, "secret"),
        ({**good, **creds, "region": "EU WEST"}, "region"),
        ({**good, **creds, "access_key_id": "bad key!"}, "access_key_id"),
    ):
        resp = await client.post("/v1/streams", json=bad, headers=headers(token))
        text = await resp.get_data(as_text=True)
        assert resp.status_code == 422 and why in text, (bad, text)
        assert SECRET_KEY not in text
    resp = await client.post(
        "/v1/streams", json={**good, **creds, "batch_size": 25}, headers=headers(token)
    )
    assert resp.status_code == 201, await resp.get_data(as_text=True)
    st = await resp.get_json()
    assert st["kind"] == "s3" and st["access_key_id"] == ACCESS_KEY and st["secret_set"]
    assert SECRET_KEY not in orjson.dumps(st).decode()
    # a webhook beside it: the store going down must not hold it back
    rec = receivers(secrets=[SECRET])
    await create(s3api, token, url=rec.url, name="hook")

    worker()
    await seed(db, "acme", 1, 100)
    await eventually(lambda: sum(len(v) for _, v in _s3_objects(s3, bucket, "audit/logs")) >= 100)
    objects = _s3_objects(s3, bucket, "audit/logs")
    assert [k for k, _ in objects] == [
        f"acme/{a:012d}-{a + 24:012d}.ndjson" for a in (1, 26, 51, 76)
    ]
    events = [e for _, v in objects for e in v]
    assert [e["seq"] for e in events] == list(range(1, 101))
    head = s3.client().head_object(Bucket=bucket, Key=f"audit/logs/{objects[0][0]}")
    assert head["ContentType"] == "application/x-ndjson"
    assert all(e["idempotency_key"] == e["id"] for e in events)

    s3.stop()  # the object store goes down: its lag grows, the webhook goes on
    await seed(db, "acme", 101, 50)
    await eventually(lambda: _count(rec, 150), 30)

    async def failing() -> bool:
        view = await status(s3api, token, st["id"])
        return bool(view["last_error"]) and view["lag_events"] == 50

    await eventually(failing, 30)
    view = await status(s3api, token, st["id"])
    assert "ObjectStoreError" in view["last_error"] and SECRET_KEY not in view["last_error"]
    assert view["position"] == 100 and view["dead_lettered"] == 0
    s3.start()  # back: the lag drains, in order, every event once at least

    async def drained() -> bool:
        return (await status(s3api, token, st["id"]))["lag_events"] == 0

    await eventually(drained, 30)
    events = [e for _, v in _s3_objects(s3, bucket, "audit/logs") for e in v]
    assert [e["seq"] for e in events] == list(range(1, 151))


async def test_s3_destination_dead_letters_then_redrive(
    s3api: Quart,
    sset: AuditSettings,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    worker: Any,
    s3: Any,
) -> None:
    from tests.s3server import ACCESS_KEY, SECRET_KEY

    bucket = s3.bucket("dead")
    st = await create(
        s3api,
        token,
        kind="s3",
        url=f"s3+http://127.0.0.1:{s3.port}/{bucket}",
        access_key_id=ACCESS_KEY,
        secret=SECRET_KEY,
        batch_size=10,
    )
    s3.stop()
    await seed(db, "acme", 1, 30)
    worker(sset.model_copy(update={"streams_dead_letter_after_seconds": 0.3}))

    async def dead_lettered() -> bool:
        return (await status(s3api, token, st["id"]))["dead_lettered"] == 30

    await eventually(dead_lettered, 30)
    assert (await status(s3api, token, st["id"]))["dead_letter_batches"] == 3
    s3.start()
    batches, events, error = await redrive(sset, st["id"])
    assert (batches, events, error) == (3, 30, None)
    got = [e for _, v in _s3_objects(s3, bucket, "") for e in v]
    assert [e["seq"] for e in got] == list(range(1, 31))
    assert await db[STREAM_DEAD_LETTERS_COLLECTION].count_documents({}) == 0


async def test_sigkill_streamer_during_s3_delivery_loses_nothing(
    s3api: Quart,
    sset: AuditSettings,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    tmp_path: Path,
    s3: Any,
) -> None:
    """SIGKILL the worker three times while it PUTs objects: every event reaches the
    bucket at least once, in seq order by key; a batch re-sent lands on its own key."""
    from tests.s3server import ACCESS_KEY, SECRET_KEY

    bucket, total = s3.bucket("kill"), 1500
    st = await create(
        s3api,
        token,
        kind="s3",
        url=f"s3+http://127.0.0.1:{s3.port}/{bucket}/k",
        access_key_id=ACCESS_KEY,
        secret=SECRET_KEY,
        batch_size=10,
    )
    await seed(db, "acme", 1, total)
    sset = sset.model_copy(update={"streams_lease_seconds": 1.0})
    proc = _streamer(sset, tmp_path / "streamer.log")
    kills = 0

    def objects() -> int:
        return len(_s3_objects(s3, bucket, "k"))

    try:
        for _ in range(3):
            seen = objects()
            await eventually(lambda seen=seen: objects() >= seen + 3, 30, 0.01)
            await asyncio.sleep(random.uniform(0.0, 0.1))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            kills += 1
            proc = _streamer(sset, tmp_path / "streamer.log")

        async def caught_up() -> bool:
            return (await status(s3api, token, st["id"]))["lag_events"] == 0

        await eventually(caught_up, 90)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    got = _s3_objects(s3, bucket, "k")
    seqs = [e["seq"] for _, v in got for e in v]
    counts = Counter(seqs)
    assert set(counts) == set(range(1, total + 1))  # every event at least once
    for _, v in got:  # each object is one contiguous batch
        b = [e["seq"] for e in v]
        assert b == list(range(b[0], b[0] + len(b)))
    assert kills == 3
    print(
        f"\nSIGKILL x{kills}: {total}/{total} in {len(got)} objects, "
        f"{sum(c - 1 for c in counts.values())} events in two objects"
    )


async def test_streamer_probes_mean_what_they_say(sset: AuditSettings) -> None:
    """/healthz follows the scheduling loop (503 once it stops stepping), /readyz
    asks MongoDB, anything else is 404 (the compose and k8s probes use these)."""
    import urllib.error
    import urllib.request

    from stream_processor.health import ProbeServer

    streamer = Streamer(sset.model_copy(update={"processor_liveness_seconds": 2.0}))
    stop = asyncio.Event()
    task = asyncio.create_task(streamer.run(stop))
    probes = ProbeServer(
        "127.0.0.1",
        0,
        streamer.metrics.registry,
        streamer.heartbeat,
        ready=streamer.ready,
        loop=asyncio.get_running_loop(),
    ).start()

    def get(path: str) -> int:
        url = f"http://127.0.0.1:{probes.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    try:

        async def ready() -> bool:
            return await asyncio.to_thread(get, "/readyz") == 200

        await eventually(ready, 10)
        assert await asyncio.to_thread(get, "/healthz") == 200
        assert await asyncio.to_thread(get, "/metrics") == 200
        assert await asyncio.to_thread(get, "/nope") == 404
        stop.set()  # the loop stops stepping: unhealthy within the liveness window
        await asyncio.wait_for(task, 10)

        async def dead() -> bool:
            return await asyncio.to_thread(get, "/healthz") == 503

        await eventually(dead, 5)
    finally:
        stop.set()
        probes.stop()
        await asyncio.wait_for(task, 10)


async def test_three_workers_deliver_each_destination_once_in_order(
    sapi: Quart,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    receivers: Any,
    sset: AuditSettings,
) -> None:
    """Three stream workers at once on the same destinations, renamed through the API
    meanwhile: each destination is delivered by one worker at a time (its lease), so
    every receiver gets the tenant's events once each, in seq order."""
    n_dest, n_events = 4, 120
    got = [receivers(secrets=[SECRET]) for _ in range(n_dest)]
    made = [
        await create(sapi, token, url=r.url, name=f"d{i}", batch_size=7) for i, r in enumerate(got)
    ]
    await seed(db, "acme", 1, n_events // 2)
    # A lease far longer than a batch: a duplicate here is two workers at once, not a
    # lease that expired on a busy machine.
    lset = sset.model_copy(update={"streams_lease_seconds": 20.0})
    workers = [Streamer(lset) for _ in range(3)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        # while they deliver: renames through the API, and the rest of the events
        client = sapi.test_client()
        renames = [
            client.put(f"/v1/streams/{d['id']}", json={"name": f"r{i}"}, headers=headers(token))
            for i, d in enumerate(made)
        ]
        answers = await asyncio.gather(*renames, seed(db, "acme", n_events // 2 + 1, n_events // 2))
        assert [a.status_code for a in answers[:n_dest]] == [200] * n_dest

        async def all_delivered() -> bool:
            return all(len(r.events()) >= n_events for r in got)

        await eventually(all_delivered, 60, what="every destination delivered")
        await asyncio.sleep(0.5)  # a duplicate would arrive now
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
    for r in got:
        assert [e["seq"] for e in r.events()] == list(range(1, n_events + 1))
    docs = await db[STREAMS_COLLECTION].find({"tenant": "acme"}).to_list(None)
    assert sorted(d["name"] for d in docs) == [f"r{i}" for i in range(n_dest)]
    assert all(d["position"] == n_events and d["delivered"] == n_events for d in docs), docs


async def test_concurrent_redrives_deliver_each_dead_letter_once(
    sapi: Quart,
    sset: AuditSettings,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    receivers: Any,
) -> None:
    """Three ``auditstream streams redrive`` of one destination at once (two operators):
    each dead-lettered batch is delivered once, counted once, and leaves the list."""
    rec = receivers(secrets=[SECRET])
    st = await create(sapi, token, url=rec.url, batch_size=10)
    await seed(db, "acme", 1, 30)
    now = datetime.now(UTC)
    await db[STREAM_DEAD_LETTERS_COLLECTION].insert_many(
        [
            {
                "stream_id": st["id"],
                "tenant": "acme",
                "first_seq": first,
                "last_seq": first + 9,
                "count": 10,
                "error": "HTTP 503",
                "at": now,
            }
            for first in (1, 11, 21)
        ]
    )
    results = await asyncio.gather(*(redrive(sset, st["id"]) for _ in range(3)))
    assert all(error is None for _, _, error in results), results
    assert sum(b for b, _, _ in results) == 3 and sum(e for _, e, _ in results) == 30, results
    assert sorted(e["seq"] for e in rec.events()) == list(range(1, 31))
    assert (await status(sapi, token, st["id"]))["delivered"] == 30
    assert await db[STREAM_DEAD_LETTERS_COLLECTION].count_documents({}) == 0


async def test_a_destination_deleted_while_its_batch_fails_leaves_no_dead_letters(
    sapi: Quart,
    sset: AuditSettings,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    receivers: Any,
    worker: Any,
) -> None:
    """DELETE /v1/streams/{id} while the worker's last attempt of a batch is under way:
    the batch the worker dead-letters after the DELETE is removed with the destination,
    not left behind in ``stream_dead_letters`` for a destination that no longer exists."""
    rec = receivers(secrets=[SECRET], status=503, delay=0.5)
    st = await create(sapi, token, url=rec.url, batch_size=10)
    await seed(db, "acme", 1, 10)
    streamer = worker(sset.model_copy(update={"streams_dead_letter_after_seconds": 0.0}))
    await eventually(lambda: _in_flight(rec), 30, what="the batch being sent")
    gone = await sapi.test_client().delete(f"/v1/streams/{st['id']}", headers=headers(token))
    assert gone.status_code == 204

    async def dead_lettered() -> bool:  # the worker inserted its dead letter (after the DELETE)
        count = streamer.metrics.registry.get_sample_value(
            "auditstream_stream_events_dead_lettered_total",
            {"stream": st["id"], "tenant": "acme", "kind": "webhook"},
        )
        return bool(count)

    async def no_dead_letters() -> bool:
        found = await db[STREAM_DEAD_LETTERS_COLLECTION].count_documents({"stream_id": st["id"]})
        return found == 0

    # wait for the condition, not for time: on a loaded machine a fixed sleep let the
    # check pass before the worker had dead-lettered anything
    await eventually(dead_lettered, 30, what="the failed batch dead-lettered")
    await eventually(no_dead_letters, 10, what="no dead letters of the deleted destination")


async def _in_flight(rec: Receiver) -> bool:
    return rec.in_flight > 0
