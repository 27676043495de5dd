"""The viewer's streams page (issue 17) and how the API serves the viewer's ES modules.

The streams test runs the real stack: the API served by Hypercorn, the real
stream worker (``Streamer``) delivering to HTTPS receivers on loopback (one that
accepts, one that answers 503), destinations created through ``POST /v1/streams``,
and a real Chromium reading ``#/streams``. Screenshots like test_viewer_items.py
(``AUDITSTREAM_SCREENSHOTS=docs`` refreshes docs/screenshots/streams.png).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, async_playwright, expect
from pymongo.asynchronous.collection import AsyncCollection

from audit_events.settings import AuditSettings
from audit_events.storage import event_key
from query_api.ui import SECURITY_HEADERS, STATIC
from stream_processor.streams.worker import Streamer
from tests.helpers import eventually, served_api
from tests.integration.query_api.test_viewer import (
    CHROMIUM_ARGS,
    chromium_path,
    realistic_events,
    seed_chained,
)
from tests.integration.query_api.test_viewer_items import SCREENSHOTS
from tests.stream_receivers import Receiver, self_signed

pytestmark = pytest.mark.integration

WEBHOOK_SECRET = "whsec-viewer-0123456789abcdef"
HEC_TOKEN = "hec-token-0123456789abcdef"
DD_KEY = "dd-api-key-0123456789abcdef"
URL_TOKEN = "q-token-0123456789"  # in a destination's query string: never shown either
ADMIN = "events:read events:admin"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "viewer-items"  # never docs/


async def test_viewer_modules_are_served_as_javascript_under_the_csp(
    settings: AuditSettings,
) -> None:
    """Every module the page loads (and every module a module imports) is served as
    JavaScript with the viewer's security headers; none is missing from the preloads."""
    module_files = sorted(p.name for p in (STATIC / "js").glob("*.js"))
    assert "main.js" in module_files and "app.js" not in module_files
    async with served_api(settings) as url, httpx.AsyncClient(base_url=url) as http:
        index = await http.get("/ui/")
        assert index.status_code == 200
        html = index.text
        assert '<script type="module" src="js/main.js"></script>' in html
        preloaded = set(re.findall(r'<link rel="modulepreload" href="js/([\w.]+)">', html))
        assert preloaded | {"main.js"} == set(module_files)
        for name in module_files:
            resp = await http.get(f"/ui/js/{name}")
            assert resp.status_code == 200, name
            content_type = resp.headers["content-type"].split(";")[0].strip()
            assert content_type in ("text/javascript", "application/javascript"), (
                name,
                content_type,
            )
            for key, value in SECURITY_HEADERS.items():
                assert resp.headers[key] == value, (name, key)
            for imported in re.findall(r'from "\./([\w.]+)"', resp.text):
                assert imported in module_files, (name, imported)
        assert (await http.get("/ui/app.js")).status_code == 404
        assert (await http.get("/ui/js/..%2F..%2Fui.py")).status_code == 404


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
            "streams_retry_max_seconds": 0.2,
            "streams_dead_letter_after_seconds": 0.5,
            "streams_lease_seconds": 2.0,
            "streamer_metrics_port": 0,
        }
    )


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        await chromium.close()


async def test_streams_page_shows_destinations_and_their_health(
    sset: AuditSettings,
    tls: tuple[Path, Path],
    browser: Browser,
    store: AsyncCollection[dict[str, Any]],
    token: Callable[..., str],
    unique: str,
) -> None:
    tenant = f"streams-{unique}"
    events = realistic_events(tenant, datetime.now(UTC).replace(microsecond=0))
    await seed_chained(store, events)
    good = Receiver(tls[0], tls[1], secrets=[WEBHOOK_SECRET]).start()
    down = Receiver(tls[0], tls[1], status=503).start()
    streamer = Streamer(sset)
    stop = asyncio.Event()
    worker: asyncio.Task[None] | None = None
    admin = {"Authorization": f"Bearer {token(tenant, ADMIN)}"}
    try:
        async with served_api(sset) as url, httpx.AsyncClient(base_url=url, headers=admin) as http:

            async def create(**body: Any) -> dict[str, Any]:
                resp = await http.post("/v1/streams", json={"start": "beginning", **body})
                assert resp.status_code == 201, resp.text
                out: dict[str, Any] = resp.json()
                return out

            siem = await create(
                kind="webhook",
                name="siem",
                url=good.url,
                secret=WEBHOOK_SECRET,
                batch_size=50,
                filters={"actions": ["invoice.*", "user.login"]},
            )
            splunk = await create(
                kind="splunk_hec",
                name="splunk",
                url=f"https://127.0.0.1:{down.port}/services/collector/event?channel={URL_TOKEN}",
                secret=HEC_TOKEN,
                batch_size=50,
            )
            paused = await create(
                kind="datadog",
                name="datadog-eu",
                url=f"https://127.0.0.1:{down.port}/api/v2/logs",
                secret=DD_KEY,
                enabled=False,
                filters={"outcomes": ["failure", "denied"]},
            )
            worker = asyncio.create_task(streamer.run(stop))

            async def settled() -> bool:
                data = {s["id"]: s for s in (await http.get("/v1/streams")).json()["data"]}
                return (
                    data[siem["id"]]["lag_events"] == 0
                    and data[siem["id"]]["last_success_at"] is not None
                    and data[splunk["id"]]["lag_events"] == 0
                    and data[splunk["id"]]["dead_letter_batches"] == 3
                )

            await eventually(settled, 30, 0.1)

            context = await browser.new_context(
                viewport={"width": 1280, "height": 900}, timezone_id="UTC"
            )
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{url}/ui/")
            await page.get_by_label("Paste a bearer token").fill(token(tenant, ADMIN))
            await page.get_by_role("button", name="Use token").click()
            await page.get_by_role("link", name="Streams").click()
            await expect(page).to_have_url(f"{url}/ui/#/streams")
            await expect(page.get_by_role("heading", name="Log streams")).to_be_visible()
            rows = page.locator("#streams-body tr")
            await expect(rows).to_have_count(3)
            await expect(page.locator("#streams-status")).to_contain_text(
                f"3 destinations for tenant {tenant} · 1 failing"
            )

            ok = page.locator(f'#streams-body tr[data-id="{siem["id"]}"]')
            await expect(ok.locator(".stream-name")).to_have_text("siem Webhook")
            await expect(ok.locator(".badge.health")).to_have_text("healthy")
            await expect(ok.locator(".col-stream")).to_contain_text(
                "Filters: actions: invoice.*, user.login"
            )
            await expect(ok.locator(".stream-url")).to_have_text(f"https://127.0.0.1:{good.port}/…")
            await expect(ok.locator(".col-lag")).to_have_text("up to date")
            await expect(ok.locator(".col-success time")).to_be_visible()
            await expect(ok.locator(".col-error")).to_have_text("none")
            await expect(ok.locator(".col-dead")).to_have_text("0 batches")
            delivered = sum(
                1
                for e in events
                if e["action"].startswith("invoice.") or e["action"] == "user.login"
            )
            await expect(ok.locator(".col-delivered")).to_contain_text(str(delivered))

            failing = page.locator(f'#streams-body tr[data-id="{splunk["id"]}"]')
            await expect(failing.locator(".stream-name")).to_have_text("splunk Splunk HEC")
            await expect(failing.locator(".badge.health")).to_have_text("failing")
            await expect(failing.locator(".col-success")).to_have_text("never")
            await expect(failing.locator(".stream-error")).to_contain_text("503")
            await expect(failing.locator(".col-dead")).to_contain_text("3 batches")
            await expect(failing.locator(".col-dead")).to_contain_text(
                f"{len(events)} events dead-lettered in all"
            )

            off = page.locator(f'#streams-body tr[data-id="{paused["id"]}"]')
            await expect(off.locator(".badge.health")).to_have_text("paused")
            await expect(off.locator(".col-stream")).to_contain_text(
                "Filters: outcomes: failure, denied"
            )
            await expect(off.locator(".col-lag")).to_contain_text(f"{len(events)} events")
            await expect(off.locator(".col-lag")).to_contain_text(
                re.compile(r"oldest waiting \d+ h")
            )

            # Never a secret, nor a destination's path or query string.
            text = await page.locator("body").inner_text()
            html = await page.content()
            for secret in (WEBHOOK_SECRET, HEC_TOKEN, DD_KEY, URL_TOKEN, "/services/collector"):
                assert secret not in text and secret not in html, secret
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await expect(page.locator("#chain-text")).to_have_text(
                f"Chain verified · {len(events)} events"
            )
            await page.screenshot(path=str(SCREENSHOTS / "streams.png"))
            # Narrow screens: one card per destination, nothing wider than the page.
            await page.set_viewport_size({"width": 390, "height": 844})
            await expect(ok.locator(".badge.health")).to_be_visible()
            width = await page.evaluate("[document.body.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], width
            await page.screenshot(path=str(ARTIFACTS / "streams-narrow.png"))
            await page.set_viewport_size({"width": 1280, "height": 900})

            # The page follows the worker: a recovered receiver turns "failing" into
            # "healthy" on the next refresh, without a reload.
            down.status = 200
            last = await store.find_one({"tenant": tenant, "seq": len(events)})
            assert last is not None
            late = {**last, "_id": event_key(tenant, "ev-late"), "id": "ev-late"}
            await store.insert_one(
                {**late, "seq": len(events) + 1, "received_at": datetime.now(UTC)}
            )
            await expect(failing.locator(".badge.health")).to_have_text(
                "dead letters", timeout=20_000
            )
            await expect(failing.locator(".col-success time")).to_be_visible()

            # A token without events:admin has no Streams link, and the page says why.
            reader = await browser.new_context(viewport={"width": 1280, "height": 900})
            plain = await reader.new_page()
            await plain.goto(f"{url}/ui/#/streams")
            await plain.get_by_label("Paste a bearer token").fill(token(tenant, "events:read"))
            await plain.get_by_role("button", name="Use token").click()
            await expect(plain.locator("#streams-error")).to_have_text(
                "The streams page needs a token with the events:admin scope."
            )
            await expect(plain.get_by_role("link", name="Streams")).to_have_count(0)
            await reader.close()
            await context.close()
            assert errors == []
    finally:
        stop.set()
        if worker is not None:
            await asyncio.wait_for(worker, 10)
        good.stop()
        down.stop()
