"""``POST /v1/events?wait=true`` on the real stack (Tansu, a processor worker,
SecantusDB, Redis): the worker's announcement names the events it stored with their
content hashes, so the API answers 201 without reading MongoDB at all — it used to
read the tenant's masking rules, look once before waiting and once per wake-up —
and the events are read right after the answer."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent

from audit_events.settings import AuditSettings
from query_api.app import create_app
from query_api.state import api_state
from query_api.store import MongoEventStore
from tests.conftest import ProcessorProcess
from tests.helpers import LiveApi, QueryCounter, bearer, eventually, make_event

pytestmark = pytest.mark.integration


class Reads(CommandListener):
    """``find`` commands the API sends, by collection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.finds: Counter[str] = Counter()

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name == "find":
            with self._lock:
                self.finds[str(event.command.get("find"))] += 1

    def succeeded(self, event: object) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


@pytest.fixture
def counted(settings: AuditSettings) -> Iterator[tuple[LiveApi, Reads]]:
    from auditstream.embedded import free_port

    reads = Reads()
    app = create_app(settings, mongo_listeners=[reads])
    api = LiveApi(app, f"http://127.0.0.1:{free_port()}", QueryCounter(), settings).start()
    yield api, reads
    api.stop()


async def test_a_waited_event_is_answered_from_the_announcement_without_reading_the_store(
    processors: Callable[..., ProcessorProcess],
    counted: tuple[LiveApi, Reads],
    settings: AuditSettings,
) -> None:
    live, reads = counted
    processors()
    auth = bearer(settings)
    async with httpx.AsyncClient(base_url=live.url, timeout=60.0) as http:

        async def warm() -> bool:  # the group formed and the worker stores
            body = make_event(100).model_dump(mode="json")
            resp = await http.post("/v1/events?wait=true", json=body, headers=auth)
            return resp.status_code == 201

        await eventually(warm, 120, 0.5, what="the worker stores a waited event")
        waits = live.services.waits
        assert waits is not None and waits.subscribed
        waits.fallback_seconds = 60.0  # no fallback look: only announcements answer
        for _ in range(2):  # a page cached before the writes: the next read must miss it
            cached = await http.get("/v1/events?limit=10", headers=auth)
        assert cached.headers["X-Cache"] == "hit"
        store = api_state(live.app).store
        assert isinstance(store, MongoEventStore)
        settled: list[list[dict[str, object]]] = []

        async def settle(documents: list[dict[str, object]]) -> None:
            settled.append(documents)

        store._settle = settle
        reads.finds.clear()
        answers = []
        for n in (1, 2):
            body = make_event(n).model_dump(mode="json")
            resp = await http.post("/v1/events?wait=true", json=body, headers=auth)
            answers.append((resp.status_code, resp.json()["status"]))
        batch = {"events": [make_event(n).model_dump(mode="json") for n in (3, 4)]}
        resp = await http.post("/v1/events?wait=true", content=orjson.dumps(batch), headers=auth)
        answers.append((resp.status_code, resp.json()["status"]))
        finds = dict(reads.finds)
        assert answers == [(201, "stored")] * 3
        assert finds == {}, "confirmed by the announcements alone"
        # and without a settle of the cache: the announcement follows the processor's
        # bump of the events' scopes (one Redis round trip less per request)
        assert settled == []
        # read your writes: the next read has them (the page cached before was passed)
        page = await http.get("/v1/events?limit=10", headers=auth)
        assert page.headers["X-Cache"] == "miss"
        ids = [e["id"] for e in page.json()["data"]]
        assert {"acme-000001", "acme-000002", "acme-000003", "acme-000004"} <= set(ids)
