"""The viewer's issue-20 items, each driven by a real Chromium against the API.

One server, one browser and one seeded database per module (a new browser
context per test): corrected and erased events (applied by the processor's own
control applier), a tampered chain, an empty tenant. Screenshots go to
``tests/artifacts/viewer-items/``, or with ``AUDITSTREAM_SCREENSHOTS=docs`` to the
``docs/screenshots/`` shown in docs/viewer.md. Needs Chromium like
tests/integration/query_api/test_viewer.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from audit_events.chain import (
    CORRECTED_ACTION,
    ERASED_ACTION,
    control_keys,
    load_private_key,
    sign_control,
)
from audit_events.codec import event_wire_dict
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings
from audit_events.storage import EVENTS_COLLECTION, event_key
from query_api.auth import mint_token
from stream_processor.control import ControlApplier
from tests.conftest import CONTROL_PRIVATE, CONTROL_PUBLIC, Backends
from tests.helpers import served_api
from tests.integration.query_api.test_viewer import (
    CHROMIUM_ARGS,
    chromium_path,
    realistic_events,
    seed_chained,
)

# Its tests share the module's API, seeded store and browser, and none depends on another
# having run: `xdist_group` has no effect with pytest 9 + xdist 3.8, so under xdist each
# worker that gets some of these tests builds its own module stack (slower, still correct).
# The marker stays for when xdist honours it again.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("viewer_items")]

# AUDITSTREAM_SCREENSHOTS=docs refreshes the committed docs/screenshots/; otherwise
# they go to tests/artifacts/viewer-items/ (a test run leaves the tree clean).
_ROOT = Path(__file__).resolve().parents[3]
SCREENSHOTS = (
    _ROOT / "docs" / "screenshots"
    if os.environ.get("AUDITSTREAM_SCREENSHOTS") == "docs"
    else _ROOT / "tests" / "artifacts" / "viewer-items"
)
ADMIN = "admin-dana"


@dataclass
class Seed:
    settings: AuditSettings
    url: str
    acme: str  # realistic events, one corrected, one erased
    tampered: str  # realistic events, one altered after it was sealed
    empty: str  # no events at all
    events: list[dict[str, Any]]
    corrected_id: str
    erased_id: str
    correction_id: str
    erasure_id: str
    bad_id: str
    bad_seq: int

    def token(self, tenant: str | list[str], scopes: str = "events:read") -> str:
        return mint_token(self.settings, subject="viewer", tenant=tenant, scopes=scopes.split())


def control_event(
    tenant: str, action: str, target: str, reason: str, when: datetime, **extra: Any
) -> dict[str, Any]:
    """A signed control event, as PUT/DELETE /v1/events/{id} would publish it."""
    unsigned = AuditEvent.model_validate(
        {
            "id": f"ctl-{uuid.uuid4().hex[:8]}",
            "tenant": tenant,
            "action": action,
            "crud": "u" if action == CORRECTED_ACTION else "d",
            "actor": {"id": ADMIN, "type": "admin"},
            "targets": [{"type": "audit_event", "id": target}],
            "description": reason,
            "occurred_at": when.isoformat(),
            **extra,
        }
    )
    return sign_control(load_private_key(CONTROL_PRIVATE), event_wire_dict(unsigned))


@pytest.fixture(scope="module")
def settings_mod(backends: Backends, tmp_path_factory: pytest.TempPathFactory) -> AuditSettings:
    unique = uuid.uuid4().hex[:10]
    return AuditSettings(
        kafka_bootstrap=backends.kafka,
        mongo_uri=backends.mongo,
        redis_url=backends.redis,
        topic_events=f"audit.events.{unique}",
        topic_dlq=f"audit.events.dlq.{unique}",
        topic_checkpoints=f"audit.checkpoints.{unique}",
        mongo_db=f"t_{unique}",
        jwt_secret=SecretStr("test-secret-0123456789abcdef-" + unique),
        control_signing_key=SecretStr(CONTROL_PRIVATE),
        control_public_keys=[CONTROL_PUBLIC],
        processor_metrics_port=0,
        data_dir=str(tmp_path_factory.mktemp("viewer") / "data"),
        target_url_templates={
            f"acme-{unique}": {"invoice": "https://billing.example/{tenant}/invoices/{id}"},
            "*": {"document": "https://docs.example/d/{id}", "invoice": "https://x.example/{id}"},
        },
    )


@pytest.fixture(scope="module")
async def seed(settings_mod: AuditSettings) -> AsyncIterator[Seed]:
    settings = settings_mod
    unique = settings.mongo_db[2:]
    acme, tampered, empty = f"acme-{unique}", f"globex-{unique}", f"initech-{unique}"
    now = datetime.now(UTC).replace(microsecond=0)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri, tz_aware=True)
    store = mongo[settings.mongo_db][EVENTS_COLLECTION]

    events = realistic_events(acme, now)
    # ev-0001: Bob's update of INV-1042 is corrected (the total was 1260, not 1250);
    # ev-0003: a document share is erased (it named a private person).
    corrected_id = events[1]["id"]
    erased_id = next(e["id"] for e in events if e["action"] == "document.share")
    correction = control_event(
        acme,
        CORRECTED_ACTION,
        corrected_id,
        "Total mistyped by the billing import (ticket FIN-88)",
        now - timedelta(minutes=3),
        metadata={"set": {"changes": {"total": {"old": 1200, "new": 1260}}}},
    )
    erasure = control_event(
        acme,
        ERASED_ACTION,
        erased_id,
        "GDPR art. 17 request #4411",
        now - timedelta(minutes=2),
    )
    await seed_chained(store, [*events, correction, erasure])
    applier = ControlApplier(store, control_keys(settings))
    for control in (correction, erasure):
        doc = await store.find_one({"_id": event_key(acme, control["id"])})
        assert doc is not None
        assert await applier.apply(doc) is not None

    bad = realistic_events(tampered, now)
    await seed_chained(store, bad)
    victim = await store.find_one({"tenant": tampered, "seq": 20})
    assert victim is not None
    await store.update_one({"_id": victim["_id"]}, {"$set": {"description": "nothing to see"}})

    async with served_api(settings) as url:
        yield Seed(
            settings=settings,
            url=url,
            acme=acme,
            tampered=tampered,
            empty=empty,
            events=events,
            corrected_id=corrected_id,
            erased_id=erased_id,
            correction_id=correction["id"],
            erasure_id=erasure["id"],
            bad_id=victim["id"],
            bad_seq=20,
        )
    await mongo.drop_database(settings.mongo_db)
    await mongo.close()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        await chromium.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
    yield ctx
    await ctx.close()


async def sign_in(context: BrowserContext, seed: Seed, token: str, hash: str = "") -> Page:
    """A page of the viewer signed in with ``token`` (pasted, as a user would)."""
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(f"{seed.url}/ui/{hash}")
    await page.get_by_label("Paste a bearer token").fill(token)
    await page.get_by_role("button", name="Use token").click()
    await expect(page.locator("#who")).to_contain_text("viewer")
    return page


async def load_all(page: Page) -> None:
    status = page.locator("#results-status")
    for _ in range(20):
        await expect(status).not_to_contain_text("Searching")
        if "all shown" in (await status.text_content() or ""):
            return
        await page.locator("#sentinel").scroll_into_view_if_needed()
        await asyncio.sleep(0.2)
    await expect(status).to_contain_text("all shown")


# The width a datetime-local field needs for "03/01/2026, 12:34:56 PM" in its own
# font, with its padding and the picker icon, and the width it has.
FITS = """el => {
  const cs = getComputedStyle(el);
  const ctx = document.createElement("canvas").getContext("2d");
  ctx.font = `${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
  const text = ctx.measureText("03/01/2026, 12:34:56 PM").width;
  return [text + parseFloat(cs.paddingLeft) + parseFloat(cs.paddingRight) + 24, el.clientWidth];
}"""


def row(page: Page, event_id: str) -> Any:
    return page.locator(f'#results-body tr[data-id="{event_id}"]')


async def test_outcome_row_shows_the_operation_not_object_text(
    seed: Seed, context: BrowserContext
) -> None:
    """Item 10: the dialog's Outcome row was 'success ,[object HTMLSpanElement]'."""
    page = await sign_in(context, seed, seed.token(seed.acme))
    newest = max(seed.events, key=lambda e: e["occurred_at"])
    assert newest["crud"] == "r"
    first = page.locator("#results-body tr[data-index='0']")  # the newest event
    await expect(first).to_contain_text(newest["description"])
    await first.locator(".col-time").click()
    outcome = page.locator("#event-summary dt:text-is('Outcome') + dd")
    await expect(outcome).to_have_text("success read")
    await expect(outcome.locator(".badge.crud")).to_have_text("read")
    assert page.errors == []  # type: ignore[attr-defined]


async def test_corrected_and_erased_events_are_marked_everywhere(
    seed: Seed, context: BrowserContext
) -> None:
    """Item 11: badges in the list and timeline, who/why and links in the dialog, tombstones."""
    page = await sign_in(context, seed, seed.token(seed.acme))
    await load_all(page)

    # The list: the corrected event is badged, the erased one is a tombstone in place,
    # the control events read as a correction and an erasure of their event.
    await expect(row(page, seed.corrected_id).locator(".badge.corrected")).to_have_text("corrected")
    tomb = row(page, seed.erased_id)
    await expect(tomb).to_have_class("tombstone")
    await expect(tomb.locator(".badge.erased")).to_be_visible()
    await expect(tomb.locator(".col-desc")).to_have_text(
        f"Erased by {ADMIN}: GDPR art. 17 request #4411"
    )
    erasure = row(page, seed.erasure_id)
    await expect(erasure.locator(".badge.control")).to_have_text("erasure")
    await expect(erasure.get_by_role("link", name=f"event {seed.erased_id}")).to_be_visible()
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(SCREENSHOTS / "corrections-list.png"))

    # The dialog of the corrected event: who, when, why, which fields, and the link.
    await row(page, seed.corrected_id).locator(".col-time").click()
    notes = page.locator("#event-notes")
    await expect(notes.locator(".corrected-note")).to_contain_text(f"Corrected by {ADMIN} at")
    await expect(notes.locator(".corrected-note")).to_contain_text("ticket FIN-88")
    await expect(notes.locator(".corrected-note code")).to_have_text("changes")
    # The corrected value is what the dialog shows.
    await expect(page.locator("#event-changes tr").filter(has_text="total")).to_contain_text("1260")
    await page.locator("#event-dialog").screenshot(path=str(SCREENSHOTS / "event-corrected.png"))
    await notes.get_by_role("link", name="Open the correction").click()
    await expect(page.locator("#event-title")).to_contain_text(CORRECTED_ACTION)
    await expect(page.locator("#event-summary dt:text-is('Corrected event') + dd")).to_have_text(
        seed.corrected_id
    )
    await page.keyboard.press("Escape")
    await expect(page).to_have_url(f"{seed.url}/ui/#/search")

    # The erased event's own URL: a tombstone dialog (the API answers 410 with who/why).
    await page.goto(f"{seed.url}/ui/#/event/{seed.erased_id}")
    await expect(page.locator("#event-title")).to_contain_text("Erased event")
    await expect(page.locator(".erased-note")).to_contain_text(f"Erased by {ADMIN} at")
    await expect(page.locator(".erased-note")).to_contain_text("GDPR art. 17 request #4411")
    await page.locator("#event-dialog").screenshot(path=str(SCREENSHOTS / "event-erased.png"))
    await page.keyboard.press("Escape")
    await expect(page).to_have_url(f"{seed.url}/ui/#/search")

    # The timeline of the corrected invoice badges the corrected entry.
    await page.goto(f"{seed.url}/ui/#/history/invoice/INV-1042")
    entry = page.locator(f'#timeline > li[data-id="{seed.corrected_id}"]')
    await expect(entry.locator(".badge.corrected")).to_have_text("corrected")
    assert page.errors == []  # type: ignore[attr-defined]


async def test_broken_chain_leads_to_the_tampered_event(
    seed: Seed, context: BrowserContext
) -> None:
    """Item 12: the broken badge shows seq, links to the event, whose dialog is flagged."""
    page = await sign_in(context, seed, seed.token(seed.tampered))
    await expect(page.locator("#chain")).to_have_class("chain bad")
    await expect(page.locator("#chain-text")).to_have_text(f"Chain broken at seq {seed.bad_seq}")
    link = page.locator("#chain-link")
    await expect(link).to_have_text(f"Open event {seed.bad_id}")
    await page.screenshot(path=str(SCREENSHOTS / "chain-broken.png"))
    await link.click()
    await expect(page).to_have_url(f"{seed.url}/ui/#/event/{seed.bad_id}")
    note = page.locator("#event-notes .tampered-note")
    await expect(note).to_contain_text("This event fails chain verification")
    await expect(note).to_contain_text(f"seq {seed.bad_seq}")
    await expect(page.locator("#event-summary")).to_contain_text(f"seq {seed.bad_seq}")
    await page.locator("#event-dialog").screenshot(path=str(SCREENSHOTS / "event-tampered.png"))
    await page.keyboard.press("Escape")
    await load_all(page)
    await expect(row(page, seed.bad_id).locator(".badge.tampered")).to_be_visible()
    assert page.errors == []  # type: ignore[attr-defined]


async def test_tenants_endpoint_lists_what_a_token_may_read(seed: Seed) -> None:
    """Item 14: GET /v1/tenants for list and '*' tokens."""
    async with httpx.AsyncClient(base_url=seed.url) as http:

        async def tenants(token: str) -> Any:
            resp = await http.get("/v1/tenants", headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 200, resp.text
            return resp.json()

        listed = await tenants(seed.token([seed.tampered, seed.acme]))
        assert listed == {"data": sorted([seed.acme, seed.tampered]), "all_tenants": False}
        assert (await tenants(seed.token(seed.acme))) == {"data": [seed.acme], "all_tenants": False}
        every = await tenants(seed.token("*"))
        assert every["all_tenants"] is True
        assert {seed.acme, seed.tampered} <= set(every["data"])
        assert seed.empty not in every["data"]
        resp = await http.get("/v1/tenants")
        assert resp.status_code == 401
        resp = await http.get(
            "/v1/tenants",
            params={"x": "1"},
            headers={"Authorization": f"Bearer {seed.token(seed.acme)}"},
        )
        assert resp.status_code == 400


async def test_tenant_picker_and_honest_empty_states(
    seed: Seed, context: BrowserContext, browser: Browser
) -> None:
    """Item 14: pick a tenant; an empty tenant is not 'verified'; no events vs no match."""
    page = await sign_in(context, seed, seed.token([seed.acme, seed.empty]))
    select = page.locator("#tenant-select")
    await expect(select.locator("option")).to_have_text(sorted([seed.acme, seed.empty]))
    await select.select_option(seed.acme)
    await expect(page.locator("#chain-text")).to_have_text(
        f"Chain verified · {len(seed.events) + 2} events"
    )
    # A filter that matches nothing in a tenant that has events.
    await page.get_by_label("Search text").fill("action:nothing.here")
    await page.get_by_role("button", name="Search", exact=True).click()
    await expect(page.locator("#results-status")).to_have_text("No events match these filters.")
    await expect(page.locator("#results-body")).to_contain_text("Clear the filters")
    # The empty tenant: neither green nor "verified", and "no events yet".
    await page.goto(f"{seed.url}/ui/#/search")
    await select.select_option(seed.empty)
    chain = page.locator("#chain")
    await expect(page.locator("#chain-text")).to_have_text(f"No events in tenant {seed.empty}")
    await expect(chain).to_have_class("chain empty")
    await expect(page.locator("#results-status")).to_have_text(
        f"No events yet in tenant {seed.empty}: nothing has been recorded for it."
    )
    await page.screenshot(path=str(SCREENSHOTS / "empty-tenant.png"))

    # A '*' token types a tenant, with the tenants that have events suggested
    # (another browser: this one's open tab would hand its session over).
    other = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        star = await sign_in(other, seed, seed.token("*"))
        options = star.locator("#tenant-list option")
        await expect(options.first).to_be_attached()
        values = await options.evaluate_all("els => els.map(e => e.value)")
        assert {seed.acme, seed.tampered} <= set(values)
    finally:
        await other.close()


async def test_every_event_has_a_url_and_the_session_follows_to_new_tabs(
    seed: Seed, context: BrowserContext, browser: Browser
) -> None:
    """Item 13: #/event/<id> opens that event; a new tab of a signed-in viewer is signed in."""
    page = await sign_in(context, seed, seed.token(seed.acme))
    target = max(seed.events, key=lambda e: e["occurred_at"])["id"]
    await row(page, target).locator(".col-time").click()
    await expect(page).to_have_url(f"{seed.url}/ui/#/event/{target}")
    href = await page.locator("#event-permalink").get_attribute("href")
    assert href == f"#/event/{target}"
    await page.keyboard.press("Escape")
    await expect(page).to_have_url(f"{seed.url}/ui/#/search")

    # A new tab (as a middle-click opens one): signed in from the open tab, no prompt.
    tab = await context.new_page()
    await tab.goto(f"{seed.url}/ui/#/event/{target}")
    await expect(tab.locator("#event-dialog")).to_be_visible()
    await expect(tab.locator("#event-json")).to_contain_text(f'"id": "{target}"')
    await expect(tab.locator("#who")).to_contain_text("viewer")
    # A middle-click on a target chip: the new tab opens that history, signed in.
    await tab.keyboard.press("Escape")
    async with context.expect_page() as new_page:
        await tab.get_by_role("link", name="invoice Acme Corp · March").first.click(button="middle")
    history = await new_page.value
    await expect(history.get_by_role("heading", level=1)).to_contain_text("invoice INV-1042")

    # Signing out in one tab signs out the others.
    await page.get_by_role("button", name="Sign out").click()
    await expect(tab.get_by_role("heading", name="Sign in to the audit log")).to_be_visible()
    await expect(history.get_by_role("heading", name="Sign in to the audit log")).to_be_visible()

    # Another browser (no open, signed-in tab): the link asks for a sign-in, then opens.
    other = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        fresh = await other.new_page()
        await fresh.goto(f"{seed.url}/ui/#/event/{target}")
        await expect(fresh.get_by_role("heading", name="Sign in to the audit log")).to_be_visible()
        await fresh.get_by_label("Paste a bearer token").fill(seed.token(seed.acme))
        await fresh.get_by_role("button", name="Use token").click()
        await expect(fresh.locator("#event-json")).to_contain_text(f'"id": "{target}"')
    finally:
        await other.close()


async def test_smaller_bugs(seed: Seed, context: BrowserContext) -> None:
    """Item 16: results in view after Apply filters; datetime fields fit; history keeps its name."""
    page = await sign_in(context, seed, seed.token(seed.acme))
    await expect(page.locator("#results-body tr[data-index]")).to_have_count(50)
    # Custom range at 1280 px: the datetime fields show their whole value (the
    # text's width in the field's font, its padding and the picker icon fit).
    await page.get_by_label("Time range").select_option("custom")
    since = page.get_by_label("From")
    await since.fill("2026-03-01T12:34:56")
    need, width = await since.evaluate(FITS)
    assert need <= width, (need, width)
    await since.screenshot(path=str(SCREENSHOTS / "datetime-field.png"))
    # Apply filters (at the bottom of the tall sidebar, scrolled to): the results'
    # status and first row are entirely on screen.
    await page.set_viewport_size({"width": 1280, "height": 720})
    await page.get_by_label("Action").fill("invoice.*")
    await page.get_by_label("Time range").select_option("24h")
    await page.get_by_label("Time range").select_option("custom")
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page.locator("#results-status")).to_contain_text("matching events")
    await expect(page.locator("#results-status")).to_be_in_viewport(ratio=1)
    await expect(page.locator("#results-body tr[data-index]").first).to_be_in_viewport(ratio=1)

    # The history title keeps the object's name after "State after".
    await page.set_viewport_size({"width": 1280, "height": 900})
    await page.goto(f"{seed.url}/ui/#/history/invoice/INV-1042")
    title = page.get_by_role("heading", level=1)
    await expect(title).to_have_text("History of invoice INV-1042 · Acme Corp · March")
    await page.locator("#timeline > li").nth(2).get_by_role("button", name="State after").click()
    await expect(page.locator("#state-summary")).to_contain_text("As of")
    await expect(title).to_have_text("History of invoice INV-1042 · Acme Corp · March")


async def test_search_box_query_syntax(seed: Seed, context: BrowserContext) -> None:
    """Item 15: actor:… action:… outcome:… since:… and free words in one box."""
    page = await sign_in(context, seed, seed.token(seed.acme))
    box = page.get_by_label("Search text")
    await box.fill("actor:svc-billing action:report.* outcome:failure since:7d revenue")
    await box.press("Enter")
    expected = [
        e
        for e in seed.events
        if e["action"].startswith("report.")
        and e.get("outcome") == "failure"
        and e["actor"]["id"] == "svc-billing"
    ]
    await expect(page.locator("#results-status")).to_have_text(
        f"{len(expected)} matching events, all shown."
    )
    url = page.url.replace("%2A", "*")
    for part in (
        "actor=svc-billing",
        "action=report.*",
        "outcome=failure",
        "range=7d",
        "q=revenue",
    ):
        assert part in url, url
    # The filter panel shows the same filters; the box keeps the query.
    await expect(page.get_by_label("Action")).to_have_value("report.*")
    await expect(page.get_by_label("Outcome")).to_have_value("failure")
    await expect(box).to_have_value(
        "action:report.* actor:svc-billing outcome:failure since:7d revenue"
    )
    await page.screenshot(path=str(SCREENSHOTS / "query-syntax.png"))
    # Removing a token from the box removes that filter.
    await box.fill("action:report.* since:7d revenue")
    await box.press("Enter")
    await expect(page.get_by_label("Outcome")).to_have_value("")
    n = sum(1 for e in seed.events if e["action"].startswith("report."))
    await expect(page.locator("#results-status")).to_contain_text(f"{min(n, 50)}")
    # An unknown time is refused in the page, not sent.
    await box.fill("since:yesterday")
    await box.press("Enter")
    await expect(page.locator("#search-error")).to_contain_text("since: expects a time")


async def test_api_docs_render_without_internet(seed: Seed, context: BrowserContext) -> None:
    """Item 6: /docs draws Swagger UI with every other origin unreachable."""
    page = await context.new_page()
    outside: list[str] = []

    async def only_local(route: Any) -> None:
        if route.request.url.startswith(seed.url):
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort()

    await page.route("**/*", only_local)
    await page.goto(f"{seed.url}/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("auditstream")
    await expect(page.locator(".opblock-summary-path").first).to_be_visible()
    assert outside == []
    async with httpx.AsyncClient(base_url=seed.url) as http:
        for path in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
            resp = await http.get(path)
            assert resp.status_code == 200 and len(resp.content) > 100_000, path
        assert (await http.get("/docs/assets/index.html")).status_code == 404
        assert (await http.get("/docs/assets/..%2Fcore.py")).status_code == 404
        assert (await http.get("/redocs")).status_code == 404  # CDN-only: off


async def test_suggestions_and_relative_times(seed: Seed, context: BrowserContext) -> None:
    """Item 15: completions from the tenant's data; relative times, exact time and zone on hover."""
    async with httpx.AsyncClient(base_url=seed.url) as http:
        resp = await http.get(
            "/v1/suggestions", headers={"Authorization": f"Bearer {seed.token(seed.acme)}"}
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
    assert {"invoice.create", "report.export", CORRECTED_ACTION} <= set(body["actions"])
    assert {"u-alice", "svc-billing", ADMIN} <= set(body["actors"])
    assert {"invoice", "document", "audit_event"} <= set(body["target_types"])

    page = await sign_in(context, seed, seed.token(seed.acme))
    box = page.get_by_label("Search text")
    await box.fill("outcome:failure action:inv")
    options = page.locator("#query-suggest option")
    await expect(options.first).to_be_attached()
    values = await options.evaluate_all("els => els.map(e => e.value)")
    assert values == [
        "outcome:failure action:invoice.create",
        "outcome:failure action:invoice.pay",
        "outcome:failure action:invoice.send",
        "outcome:failure action:invoice.update",
    ]
    await box.fill("act")
    await expect(options).to_have_count(3)
    values = await options.evaluate_all("els => els.map(e => e.value)")
    assert values == ["action:", "actor:", "actor_type:"]
    await expect(page.locator("#list-actor option[value='u-alice']")).to_be_attached()

    first = page.locator("#results-body tr[data-index='0'] .col-time")
    await expect(first.locator(".rel-time")).to_have_text(re.compile(r"^\d+ minutes? ago$"))
    title = await first.locator("time").get_attribute("title")
    assert title is not None and " UTC · " in title, title


async def test_histogram_shows_volume_and_narrows_the_range_when_dragged(
    seed: Seed, context: BrowserContext
) -> None:
    """Item 15: a volume-over-time chart above the results; dragging sets since/until."""
    async with httpx.AsyncClient(base_url=seed.url) as http:
        auth = {"Authorization": f"Bearer {seed.token(seed.acme)}"}
        resp = await http.get("/v1/histogram", params={"buckets": "10"}, headers=auth)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert len(body["counts"]) == 10 and body["total"] == sum(body["counts"])
        assert body["total"] == len(seed.events) + 2 - 1  # + 2 control events - 1 erased
        bad = await http.get("/v1/histogram", params={"buckets": "0"}, headers=auth)
        assert bad.status_code == 400

    page = await sign_in(context, seed, seed.token(seed.acme))
    chart = page.locator("#histogram")
    await expect(chart.locator(".bar")).to_have_count(60)
    await expect(page.locator("#hist-total")).to_contain_text(f"{len(seed.events) + 2} events")
    await expect(page.locator("#chain-text")).to_contain_text("Chain verified")
    # Nothing is wider than the results column at 1280 px.
    wrap = await page.locator(".table-wrap").evaluate("el => [el.scrollWidth, el.clientWidth]")
    assert wrap[0] <= wrap[1], wrap
    await page.screenshot(path=str(SCREENSHOTS / "histogram.png"))
    box = await chart.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    await page.mouse.move(box["x"] + box["width"] * 0.5, y)
    await page.mouse.down()
    await page.mouse.move(box["x"] + box["width"] * 0.7, y, steps=5)
    await page.mouse.up()
    await expect(page).to_have_url(re.compile(r"range=custom&since=.*&until="))
    await expect(page.locator("#results-status")).to_contain_text("matching event")
    hash_params = dict(
        p.split("=", 1) for p in page.url.split("?", 1)[1].replace("%3A", ":").split("&")
    )
    since = datetime.fromisoformat(hash_params["since"])
    until = datetime.fromisoformat(hash_params["until"])
    inside = [e for e in seed.events if since <= datetime.fromisoformat(e["occurred_at"]) < until]
    assert 0 < len(inside) < len(seed.events)
    await expect(page.locator("#results-status")).to_have_text(
        re.compile(rf"^{len(inside)}( matching events?, all shown| matching event)")
    )
    await expect(page.get_by_label("Time range")).to_have_value("custom")


async def test_event_side_panel_keeps_the_list_visible(seed: Seed, context: BrowserContext) -> None:
    """Item 15: at desktop widths the event opens beside the list, not over it."""
    page = await sign_in(context, seed, seed.token(seed.acme))
    rows = page.locator("#results-body tr[data-index]")
    await rows.nth(1).locator(".col-time").click()
    panel = page.locator("#event-dialog")
    await expect(panel).to_have_class(re.compile(r"\bside\b"))
    await expect(rows.nth(1)).to_have_class(re.compile(r"\bselected\b"))
    # The list is not covered: the next row is what is under its centre, clickable.
    box = await rows.nth(2).bounding_box()
    panel_box = await panel.bounding_box()
    assert box is not None and panel_box is not None
    assert box["x"] + box["width"] <= panel_box["x"] + 1, (box, panel_box)
    await rows.nth(2).locator(".col-time").click()
    second = await rows.nth(2).get_attribute("data-id")
    await expect(page.locator("#event-json")).to_contain_text(f'"id": "{second}"')
    await expect(page).to_have_url(re.compile(rf"#/event/{second}$"))
    await expect(page.locator("#chain-text")).to_contain_text("Chain verified")
    await page.screenshot(path=str(SCREENSHOTS / "event-panel.png"))
    await page.keyboard.press("Escape")
    await expect(panel).to_be_hidden()
    await expect(page.locator("#filters")).to_be_visible()


async def test_targets_link_to_the_application(seed: Seed, context: BrowserContext) -> None:
    """Item 15: a per-tenant URL template links a target to the application's own page."""
    async with httpx.AsyncClient(base_url=seed.url) as http:
        resp = await http.get(
            "/v1/target-links", headers={"Authorization": f"Bearer {seed.token(seed.acme)}"}
        )
    assert resp.json() == {
        "templates": {
            "document": "https://docs.example/d/{id}",
            "invoice": "https://billing.example/{tenant}/invoices/{id}",
        }
    }
    page = await sign_in(context, seed, seed.token(seed.acme))
    await page.goto(f"{seed.url}/ui/#/search?target_id=INV-1042")
    link = page.get_by_role("link", name="Open invoice INV-1042 in the application").first
    await expect(link).to_have_attribute(
        "href", f"https://billing.example/{seed.acme}/invoices/INV-1042"
    )
    await expect(link).to_have_attribute("rel", "noopener noreferrer")
    # Types without a template (customer) have no such link.
    await expect(
        page.get_by_role("link", name="Open customer C-77 in the application")
    ).to_have_count(0)
