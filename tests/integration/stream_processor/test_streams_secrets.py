"""Destination secrets encrypted at rest (issue 17; audit_events/stream_secrets.py).

The MongoDB documents are read raw (BSON bytes of every collection of the test
database): a webhook secret, a Splunk HEC token or a Datadog key never appears
there, while the real stream worker still signs and authenticates with them
(a loopback HTTPS receiver checks the HMAC signature). Plaintext secrets stored
before encryption still deliver and are rewritten encrypted on update or by
``auditstream streams encrypt-secrets``; a key rotation keeps delivering.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from bson.raw_bson import RawBSONDocument
from cryptography.fernet import Fernet
from pydantic import SecretStr
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from quart import Quart

from audit_events.settings import AuditSettings
from audit_events.stream_secrets import StreamSecrets
from audit_events.streams import STREAMS_COLLECTION
from query_api.app import create_app
from stream_processor.streams.worker import Streamer
from tests.helpers import eventually
from tests.integration.stream_processor.test_streams import (  # the fixtures of the stream tests
    _cli,
    _count,
    create,
    db,
    headers,
    receivers,
    sapi,
    seed,
    sset,
    tls,
    worker,
)

pytestmark = pytest.mark.integration
__all__ = ["db", "receivers", "sapi", "sset", "tls", "worker"]
SECRET = "whsec-first-0123456789"
ROTATED = "whsec-rotated-0123456789"
HEC_TOKEN = "hec-token-5f0e8c1a"
DD_KEY = "dd-api-key-77c2a9e4"


async def raw_bytes(sset: AuditSettings) -> bytes:
    """Every document of every collection of the database, as stored (BSON)."""
    client: AsyncMongoClient[RawBSONDocument] = AsyncMongoClient(
        sset.mongo_uri, document_class=RawBSONDocument
    )
    try:
        db = client[sset.mongo_db]
        out = b""
        for name in await db.list_collection_names():
            async for doc in db[name].find({}):
                out += doc.raw
        return out
    finally:
        await client.close()


def legacy(sid: str, url: str, secret: str, **fields: Any) -> dict[str, Any]:
    """A destination as stored before encryption at rest: the secret in plain."""
    return {"_id": sid, "tenant": "acme", "kind": "webhook", "name": sid, "url": url,
            "secret": secret, "enabled": True, "batch_size": 100, "position": 0,
            "delivered": 0, "dead_lettered": 0, "created_at": datetime.now(UTC),
            **fields}  # fmt: skip


async def test_secrets_never_stored_in_plain_and_deliveries_still_verify(
    sapi: Quart,
    sset: AuditSettings,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    receivers: Any,
    worker: Any,
) -> None:
    rec = receivers(secrets=[SECRET])
    other = receivers()  # Splunk / Datadog shapes: no signature to check
    hook = await create(sapi, token, url=rec.url)
    await create(sapi, token, kind="splunk_hec", name="s", url=other.url, secret=HEC_TOKEN)
    await create(sapi, token, kind="datadog", name="d", url=other.url, secret=DD_KEY)
    await seed(db, "acme", 1, 5)
    stored = await raw_bytes(sset)
    for plain in (SECRET, HEC_TOKEN, DD_KEY):
        assert plain.encode() not in stored, plain
    doc = await db[STREAMS_COLLECTION].find_one({"_id": hook["id"]})
    assert doc is not None and set(doc["secret"]) == {"fernet"}
    worker()
    await eventually(lambda: _count(rec, 5), 30)

    async def both() -> bool:
        return len(other.requests) >= 2

    await eventually(both, 30)
    assert rec.bad_signatures == 0  # signed with the secret the database never saw in plain
    auths = {h.get("authorization") or h.get("dd-api-key") for h, _ in other.requests}
    assert auths >= {f"Splunk {HEC_TOKEN}", DD_KEY}
    # Rotation through the API: the new and the previous secret are both encrypted,
    # and both sign during the overlap.
    resp = await sapi.test_client().put(
        f"/v1/streams/{hook['id']}", json={"secret": ROTATED}, headers=headers(token)
    )
    assert resp.status_code == 200
    stored = await raw_bytes(sset)
    assert SECRET.encode() not in stored and ROTATED.encode() not in stored
    rec.secrets = [ROTATED]
    await seed(db, "acme", 6, 2)
    await eventually(lambda: _count(rec, 7), 30)
    rec.secrets = [SECRET]
    await seed(db, "acme", 8, 1)
    await eventually(lambda: _count(rec, 8), 30)  # accepted = signature verified


async def test_api_without_the_key_refuses_to_store_a_secret(
    sset: AuditSettings, token: Callable[..., str], receivers: Any
) -> None:
    app = create_app(sset.model_copy(update={"streams_secret_key": None}))
    async with app.test_app():
        resp = await app.test_client().post(
            "/v1/streams",
            json={"kind": "webhook", "name": "h", "url": receivers().url, "secret": SECRET},
            headers=headers(token),
        )
        assert resp.status_code == 503
        assert resp.content_type == "application/problem+json"
        assert SECRET not in await resp.get_data(as_text=True)


async def test_plaintext_secrets_still_deliver_and_are_rewritten_encrypted(
    sapi: Quart,
    sset: AuditSettings,
    db: AsyncDatabase[dict[str, Any]],
    token: Callable[..., str],
    receivers: Any,
    worker: Any,
) -> None:
    rec = receivers(secrets=[SECRET])
    for sid in ("st_old1", "st_old2"):
        await db[STREAMS_COLLECTION].insert_one(legacy(sid, rec.url, SECRET))
    await seed(db, "acme", 1, 3)
    worker()
    await eventually(lambda: _count(rec, 6), 30)  # both deliver, signed, from plain
    assert rec.bad_signatures == 0
    # Rewritten on the next update (of any field) ...
    resp = await sapi.test_client().put(
        "/v1/streams/st_old1", json={"batch_size": 50}, headers=headers(token)
    )
    assert resp.status_code == 200
    doc = await db[STREAMS_COLLECTION].find_one({"_id": "st_old1"})
    assert doc is not None and set(doc["secret"]) == {"fernet"}
    # ... or by the migration command, for the rest.
    done = _cli(sset, "streams", "encrypt-secrets")
    assert done.returncode == 0, done.stderr
    assert "1 re-encrypted, 1 already under the current key" in done.stdout
    assert SECRET.encode() not in await raw_bytes(sset)
    await seed(db, "acme", 4, 1)
    await eventually(lambda: _count(rec, 8), 30)
    assert rec.bad_signatures == 0


async def test_key_rotation_keeps_delivering_and_reencrypts(
    sset: AuditSettings,
    db: AsyncDatabase[dict[str, Any]],
    receivers: Any,
    worker: Any,
) -> None:
    rec = receivers(secrets=[SECRET])
    old = sset.streams_secret_key
    assert old is not None
    sealed_old = StreamSecrets(old.get_secret_value()).seal(SECRET)
    await db[STREAMS_COLLECTION].insert_one(legacy("st_rot", rec.url, "x") | {"secret": sealed_old})
    new = Fernet.generate_key().decode()
    rotated = sset.model_copy(
        update={"streams_secret_key": SecretStr(new), "streams_secret_retired_keys": old}
    )
    await seed(db, "acme", 1, 2)
    stop = asyncio.Event()  # new key current, old key retired: still opens
    task = asyncio.create_task(Streamer(rotated).run(stop))
    await eventually(lambda: _count(rec, 2), 30)
    stop.set()
    await asyncio.wait_for(task, 10)
    done = _cli(rotated, "streams", "encrypt-secrets")
    assert done.returncode == 0 and "1 re-encrypted" in done.stdout, done.stdout + done.stderr
    doc = await db[STREAMS_COLLECTION].find_one({"_id": "st_rot"})
    assert doc is not None and doc["secret"] != sealed_old
    assert StreamSecrets(new).open(doc["secret"]) == SECRET  # the new key alone opens it
    again = _cli(rotated, "streams", "encrypt-secrets")
    assert "0 re-encrypted, 1 already under the current key" in again.stdout
    # Once re-encrypted, a worker holding only the old key cannot open it: it says
    # so in the destination's status and delivers nothing.
    await seed(db, "acme", 3, 1)
    worker(sset)

    async def reported() -> bool:
        d = await db[STREAMS_COLLECTION].find_one({"_id": "st_rot"})
        return bool(d and "decrypts" in (d.get("last_error") or ""))

    await eventually(reported, 20)
    assert len(rec.events()) == 2
