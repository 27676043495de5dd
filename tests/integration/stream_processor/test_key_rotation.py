"""Checkpoint keys rotate: a chain signed under three successive keys verifies whole.

Events and checkpoints are made under key 1, then 2, then 3 (a processor per
key, as a rolled deployment would run). Verifiers configured with the current
key (3) and the retired ones (1, 2) accept every checkpoint, chosen by its
``key_id``; with the current key alone (the old verifier) the first checkpoint
is a ``bad_checkpoint``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from pymongo.asynchronous.collection import AsyncCollection
from quart.typing import TestClientProtocol as Client

from audit_events import chain
from audit_events.settings import AuditSettings
from audit_events.storage import CHECKPOINTS_COLLECTION
from query_api.state import api_state
from query_api.verify import gather_checkpoints, verify_tenant
from tests.conftest import ProcessorProcess
from tests.helpers import event_body, eventually

pytestmark = pytest.mark.integration
KEYS = [chain.generate_keypair() for _ in range(3)]  # (private, public) of keys 1, 2, 3
(_, PUBLIC_1), (_, PUBLIC_2), (_, PUBLIC_3) = KEYS


@pytest.fixture
def settings(settings: AuditSettings) -> AuditSettings:
    """The verifiers' view after two rotations: key 3 current, keys 1 and 2 retired."""
    return settings.model_copy(
        update={
            "checkpoint_public_key": PUBLIC_3,
            "checkpoint_retired_public_keys": f"{PUBLIC_1},{PUBLIC_2}",
            "checkpoint_every_events": 1,
        }
    )


async def test_a_chain_signed_under_three_keys_verifies_whole(
    client: Client,
    auth: Callable[..., dict[str, str]],
    store: AsyncCollection[dict[str, Any]],
    processors: Callable[..., ProcessorProcess],
    settings: AuditSettings,
) -> None:
    checkpoints = store.database[CHECKPOINTS_COLLECTION]
    total = 0
    for n, (private, public) in enumerate(KEYS, start=1):
        worker = processors(
            AUDITSTREAM_CHECKPOINT_SIGNING_KEY=private,
            AUDITSTREAM_CHECKPOINT_PUBLIC_KEY=public,  # the processor's own key
        )
        events = [event_body(i, id=f"k{n}-{i:03d}") for i in range(5)]
        resp = await client.post("/v1/events", json={"events": events}, headers=auth())
        assert resp.status_code == 202
        total += len(events)
        kid = chain.key_id(public)

        async def signed_by_this_key(total: int = total, kid: str = kid) -> bool:
            head = await checkpoints.find_one({"tenant": "acme", "seq": total})
            return head is not None and head.get("key_id") == kid

        await eventually(signed_by_this_key, timeout=90)
        worker.stop()  # the rotation: the next key's processor takes over

    kids = {cp["key_id"] async for cp in checkpoints.find({"tenant": "acme"})}
    assert kids == {chain.key_id(p) for _, p in KEYS}

    # The API: current key 3 plus retired keys 1 and 2.
    resp = await client.get("/v1/verify", headers=auth())
    body = orjson.loads(await resp.get_data())
    assert resp.status_code == 200
    assert body["ok"] is True, body
    assert body["checked"] == total
    assert body["checkpoints"] >= 3
    assert body["signed"] is True and "warning" not in body
    resp = await client.get("/v1/verify/public-key")
    listed = orjson.loads(await resp.get_data())
    assert listed["key_id"] == chain.key_id(PUBLIC_3)
    assert [k["key_id"] for k in listed["retired"]] == [
        chain.key_id(PUBLIC_1),
        chain.key_id(PUBLIC_2),
    ]

    # The core verifier, with every checkpoint from MongoDB and the Kafka topic.
    cps, sources = await gather_checkpoints(settings, store, "acme")
    assert sources["kafka"] and sources["kafka"] >= 3
    report = await verify_tenant(store, "acme", cps, chain.checkpoint_keys(settings))
    assert report.ok, report
    assert (report.checked, report.head_seq, report.unsigned_tail) == (total, total, 0)

    # What the verifier did before rotation support: the current key only.
    only_current = await verify_tenant(store, "acme", cps, PUBLIC_3)
    assert not only_current.ok
    assert only_current.reason == "bad_checkpoint"
    # A key that was never trusted is named, not just "invalid".
    unknown = await verify_tenant(
        store,
        "acme",
        cps,
        chain.checkpoint_keys(
            settings.model_copy(update={"checkpoint_retired_public_keys": PUBLIC_2})
        ),
    )
    assert not unknown.ok
    assert (
        unknown.detail is not None and "neither the current key nor a retired one" in unknown.detail
    )


async def test_verify_says_when_chains_are_unsigned(
    api: Any,
    auth: Callable[..., dict[str, str]],
    store: AsyncCollection[dict[str, Any]],
    processors: Callable[..., ProcessorProcess],
    settings: AuditSettings,
) -> None:
    """No checkpoint key anywhere (AUDITSTREAM_ALLOW_UNSIGNED_CHAINS): no plain ``ok``."""
    processors()  # no signing key: the conftest allows unsigned chains
    unkeyed = settings.model_copy(
        update={"checkpoint_public_key": None, "checkpoint_retired_public_keys": ""}
    )
    api_state(api).settings = unkeyed
    client = api.test_client()
    events = [event_body(i, id=f"u-{i:03d}") for i in range(3)]
    resp = await client.post("/v1/events", json={"events": events}, headers=auth())
    assert resp.status_code == 202

    async def stored() -> bool:
        return await store.count_documents({"tenant": "acme"}) == 3

    await eventually(stored)
    resp = await client.get("/v1/verify", headers=auth())
    body = orjson.loads(await resp.get_data())
    assert body["ok"] is True and body["checked"] == 3 and body["checkpoints"] == 0
    assert body["signed"] is False
    assert "not signed" in body["warning"] and "cannot be detected" in body["warning"]
