"""The web viewer end to end: a real Chromium drives /ui against the API served by Hypercorn.

Sign in with a username and password (and, in a second tab, with a pasted token),
search, scroll for more, open an event, follow a target's history, look at its
state as of an earlier time, export CSV and NDJSON. Screenshots land in
``tests/artifacts/viewer/``. Needs Chromium (Debian ``chromium``); without it the
test fails with instructions, unless ``AUDITSTREAM_SKIP_BROWSER=1``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Download,
    Page,
    async_playwright,
    expect,
)
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from audit_events.chain import GENESIS, seal
from audit_events.codec import event_to_document
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings
from audit_events.storage import USERS_COLLECTION
from query_api.export import CSV_COLUMNS
from query_api.users import UserStore
from tests.helpers import served_api

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "viewer"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct horse battery"


def chromium_path() -> str:
    """The Chromium to drive; fails (never skips silently) when it is missing."""
    path = os.environ.get("AUDITSTREAM_CHROMIUM", "/usr/bin/chromium")
    if Path(path).is_file() or shutil.which(path):
        return path
    if os.environ.get("AUDITSTREAM_SKIP_BROWSER") == "1":
        pytest.skip("AUDITSTREAM_SKIP_BROWSER=1: browser test skipped on request")
    pytest.fail(
        f"Chromium not found at {path}. Install it (`apt-get install -y chromium`; .ci/run "
        "does this), point AUDITSTREAM_CHROMIUM at a Chromium binary, or set "
        "AUDITSTREAM_SKIP_BROWSER=1 to skip the browser test deliberately."
    )


@pytest.fixture
async def base_url(settings: AuditSettings) -> AsyncIterator[str]:
    """The API served by Hypercorn on a free port, in this test's event loop."""
    async with served_api(settings) as url:
        yield url


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        await chromium.close()


def realistic_events(tenant: str, now: datetime) -> list[dict[str, Any]]:
    """A day in a small SaaS: invoices edited, users signing in, a role change denied."""
    people = [
        {"id": "u-alice", "type": "user", "name": "Alice Martin"},
        {"id": "u-bob", "type": "user", "name": "Bob Chen"},
        {"id": "u-chidi", "type": "user", "name": "Chidi Okafor"},
        {"id": "svc-billing", "type": "service", "name": "billing-worker"},
    ]
    invoice = {"type": "invoice", "id": "INV-1042", "name": "Acme Corp · March"}
    events: list[dict[str, Any]] = []

    def add(minutes_ago: float, **fields: Any) -> None:
        n = len(events)
        events.append(
            {
                "id": f"ev-{n:04d}",
                "tenant": tenant,
                "occurred_at": (now - timedelta(minutes=minutes_ago)).isoformat(),
                "source": {"service": fields.pop("service", "billing"), "version": "2.4.1"},
                "context": {"ip": f"10.0.3.{n % 200}", "request_id": f"req-{n:05d}"},
                **fields,
            }
        )

    history = [
        ("invoice.create", "c", people[0], {"status": (None, "draft"), "total": (None, 1200)}),
        ("invoice.update", "u", people[1], {"total": (1200, 1250), "due": (None, "2026-04-01")}),
        ("invoice.update", "u", people[0], {"currency": ("USD", "EUR")}),
        ("invoice.send", "u", people[3], {"status": ("draft", "sent")}),
        ("invoice.pay", "u", people[3], {"status": ("sent", "paid"), "paid_total": (0, 1250)}),
    ]
    for k, (action, crud, actor, changes) in enumerate(history):
        add(
            600 - k * 120,
            action=action,
            crud=crud,
            actor=actor,
            targets=[invoice, {"type": "customer", "id": "C-77", "name": "Acme Corp"}],
            description=f"{action.split('.')[1].capitalize()} invoice INV-1042",
            changes={f: {"old": old, "new": new} for f, (old, new) in changes.items()},
        )
    add(
        330,
        action="invoice.update",
        crud="u",
        outcome="denied",
        actor=people[2],
        targets=[invoice],
        description="Tried to change the total of a sent invoice",
        changes={"total": {"old": 1250, "new": 99}},
    )
    add(
        45,
        action="user.role.grant",
        crud="u",
        outcome="denied",
        actor=people[2],
        targets=[{"type": "user", "id": "u-chidi", "name": "Chidi Okafor"}],
        description='=HYPERLINK("http://evil.example","click")',
        changes={"role": {"old": "viewer", "new": "admin"}},
        service="identity",
    )
    for i in range(113):
        actor = people[i % 3]
        kind = i % 4
        if kind == 0:
            add(
                i * 7 + 1,
                action="user.login",
                crud="r",
                actor=actor,
                service="identity",
                targets=[{"type": "user", "id": actor["id"], "name": actor["name"]}],
                description=f"{actor['name']} signed in",
            )
        elif kind == 1:
            doc = {"type": "document", "id": f"DOC-{300 + i}", "name": f"Contract {300 + i}.pdf"}
            add(
                i * 7 + 2,
                action="document.share",
                crud="u",
                actor=actor,
                service="docs",
                targets=[doc],
                description=f"Shared {doc['name']} with finance",
                changes={"shared_with": {"old": [], "new": ["finance"]}},
            )
        elif kind == 2:
            inv = {"type": "invoice", "id": f"INV-{1100 + i}"}
            add(
                i * 7 + 3,
                action="invoice.update",
                crud="u",
                actor=actor,
                targets=[inv],
                description=f"Adjusted line items on {inv['id']}",
                changes={"total": {"old": 100 + i, "new": 110 + i}},
            )
        else:
            add(
                i * 7 + 4,
                action="report.export",
                crud="r",
                actor=people[3],
                service="reports",
                outcome="failure" if i % 8 == 3 else "success",
                targets=[{"type": "report", "id": f"R-{i}", "name": "Monthly revenue"}],
                description="Monthly revenue report export",
            )
    return events


async def seed_chained(
    store: AsyncCollection[dict[str, Any]], events: list[dict[str, Any]]
) -> None:
    """Store ``events`` as the processor would: in arrival order, sealed into the chain."""
    docs = []
    for raw in events:
        event = AuditEvent.model_validate(raw)
        docs.append(event_to_document(event, event.occurred_at + timedelta(seconds=1)))
    docs.sort(key=lambda d: (d["occurred_at"], d["_id"]))
    prev = GENESIS
    for seq, doc in enumerate(docs, start=1):
        prev = seal(doc, seq, prev)
    await store.insert_many(docs)


async def read_download(download: Download) -> bytes:
    return await asyncio.to_thread(Path(await download.path()).read_bytes)


async def wait_rows(page: Page, at_least: int) -> int:
    rows = page.locator("#results-body tr[data-index]")
    await expect(rows.nth(at_least - 1)).to_be_attached()
    return await rows.count()


async def test_viewer_end_to_end(
    base_url: str,
    browser: Browser,
    settings: AuditSettings,
    store: AsyncCollection[dict[str, Any]],
    token: Callable[..., str],
    unique: str,
) -> None:
    tenant = f"view-{unique}"
    now = datetime.now(UTC).replace(microsecond=0)
    events = realistic_events(tenant, now)
    await seed_chained(store, events)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
    try:
        users = UserStore(mongo[settings.mongo_db][USERS_COLLECTION])
        await users.add("alice", "user", PASSWORD, tenant, ["events:read"])
    finally:
        await mongo.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    context = await browser.new_context(
        viewport={"width": 1280, "height": 900}, accept_downloads=True, timezone_id="UTC"
    )
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    def on_console(msg: ConsoleMessage) -> None:
        # Chromium logs every non-2xx fetch as a console error; those are expected
        # (e.g. /v1/verify absent) and shown in the page. Anything else is a bug.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            problems.append(f"console: {msg.text}")

    page.on("console", on_console)

    # --- sign in with username and password
    await page.goto(f"{base_url}/ui")
    await expect(page.get_by_role("heading", name="Sign in to the audit log")).to_be_visible()
    await page.get_by_label("Username").fill("alice")
    await page.get_by_label("Password", exact=True).fill("wrong password")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#signin-error")).to_contain_text("Sign-in failed")
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#who")).to_contain_text("alice")
    await expect(page.locator("#chain-text")).to_have_text(f"Chain verified · {len(events)} events")

    # --- newest first, 50 per page, infinite scroll over next_cursor
    assert await wait_rows(page, 50) == 50
    first = page.locator("#results-body tr[data-index]").first
    await expect(first.locator(".col-action")).to_have_text(events[-1]["action"])
    await page.locator("#sentinel").scroll_into_view_if_needed()
    assert await wait_rows(page, 100) >= 100
    await page.locator("#sentinel").scroll_into_view_if_needed()
    await expect(page.locator("#results-status")).to_have_text(
        f"{len(events)} matching events, all shown."
    )

    # --- search with filters: invoice actions of the last 24 hours
    await page.get_by_label("Action").fill("invoice.*")
    await page.get_by_label("Time range").select_option("24h")
    await page.get_by_label("Search text").fill("invoice")
    await page.get_by_role("button", name="Search", exact=True).click()
    expected = [e for e in events if e["action"].startswith("invoice.")]
    await expect(page.locator("#results-status")).to_have_text(
        f"{len(expected)} matching events, all shown."
    )
    assert "action=invoice.*" in page.url.replace("%2A", "*")
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(ARTIFACTS / "search-results.png"))

    # --- open an event with the keyboard; its full JSON is shown
    await first.focus()
    await page.keyboard.press("ArrowDown")
    await page.keyboard.press("Enter")
    dialog = page.locator("#event-dialog")
    await expect(dialog).to_be_visible()
    second_id = sorted(expected, key=lambda e: e["occurred_at"], reverse=True)[1]["id"]
    await expect(page.locator("#event-json")).to_contain_text(f'"id": "{second_id}"')
    await expect(page.locator("#event-json")).to_contain_text(f'"tenant": "{tenant}"')
    await dialog.screenshot(path=str(ARTIFACTS / "event.png"))
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()

    # --- exports carry the bearer token and the current filters
    async with page.expect_download() as csv_download:
        await page.get_by_role("button", name="Export CSV").click()
    download = await csv_download.value
    assert download.suggested_filename.startswith(f"auditstream-{tenant}-")
    csv_text = (await read_download(download)).decode()
    rows = list(csv.reader(io.StringIO(csv_text, newline="")))
    assert rows[0] == list(CSV_COLUMNS)
    assert sorted(r[0] for r in rows[1:]) == sorted(e["id"] for e in expected)
    async with page.expect_download() as nd_download:
        await page.get_by_role("button", name="Export NDJSON").click()
    lines = (await read_download(await nd_download.value)).splitlines()
    assert {orjson.loads(line)["id"] for line in lines} == {e["id"] for e in expected}

    # --- the invoice's history: timeline with diffs, and its state as of a time
    await page.get_by_role("link", name="invoice Acme Corp · March").first.click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("invoice INV-1042")
    timeline = page.locator("#timeline > li")
    await expect(timeline).to_have_count(6)
    await expect(timeline.first.locator(".tl-action")).to_have_text("invoice.create")
    await expect(timeline.nth(1).locator("mark.field-name")).to_have_text(["due", "total"])
    await expect(page.locator("#state-body tr")).to_have_count(5)
    await expect(page.locator("#state-body tr.recent th")).to_have_text(["paid_total", "status"])
    await expect(page.locator("#state-summary")).to_contain_text("1 failed/denied ignored")
    # State right after the currency change (the third event).
    await timeline.nth(2).get_by_role("button", name="State after").click()
    await expect(page.locator("#state-summary")).to_contain_text("3 events applied")
    state_rows = page.locator("#state-body tr")
    # paid_total is first changed later (0 -> 1250): its value then is inferred.
    await expect(state_rows.locator("th")).to_have_text(
        ["currency", "due", "paid_total", "status", "total"]
    )
    await expect(state_rows.locator("td.value")).to_have_text(
        ["EUR", "2026-04-01", "0", "draft", "1250"]
    )
    await expect(state_rows.nth(2).locator(".inferred")).to_be_visible()
    await expect(page.locator("#toast")).to_be_hidden(timeout=10_000)  # export notices gone
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(ARTIFACTS / "history.png"))

    # --- back to the search keeps its results; narrow screens stay usable
    await page.get_by_role("link", name="← Back to search").click()
    await expect(page.locator("#results-status")).to_have_text(
        f"{len(expected)} matching events, all shown."
    )
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.reload()  # the token survives in sessionStorage; filters start folded
    await expect(page.locator("#filters")).not_to_have_attribute("open", "")
    await expect(page.locator("#results-status")).to_have_text(
        f"{len(expected)} matching events, all shown."
    )
    await expect(page.get_by_role("button", name="Export CSV")).to_be_visible()
    await page.screenshot(path=str(ARTIFACTS / "search-narrow.png"))

    # --- a pasted token works too (a second tab, nothing shared)
    other = await browser.new_context(viewport={"width": 1280, "height": 800})
    tab = await other.new_page()
    tab.on("pageerror", lambda exc: problems.append(f"page error (token tab): {exc}"))
    await tab.goto(f"{base_url}/ui/")
    await tab.get_by_label("Paste a bearer token").fill(token(tenant, "events:read"))
    await tab.get_by_role("button", name="Use token").click()
    await expect(tab.locator("#results-body tr[data-index]")).to_have_count(50)
    await other.close()
    await context.close()
    assert problems == []
