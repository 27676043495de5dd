// A target's history (#/history/<type>/<id>?order=…&as_of=…): the timeline of
// its events with field diffs, and its state as of a time (GET
// /v1/targets/{type}/{id}/history, ?as_of= for the fold).

import { $, h, nearViewport, showAlert, showView } from "./dom.js";
import { api, errorText, PAGE_SIZE, SignedOut } from "./api.js";
import { fmtTime, fmtValue, inputToIso, isoToInput, prefs, timeEl, tzLabel } from "./format.js";
import { goToEvent, historyHref, parseHash } from "./links.js";
import { session } from "./session.js";
import { changesTable, corrected, CRUD, outcomeBadge, stateBadges } from "./event.js";

// The history shown: which object, its order, the events loaded so far.
export const history = { key: null, type: null, id: null, order: "asc", name: null, events: [], next: null, loading: false, generation: 0, done: false };

// A change (tenant, time zone, sign-out) that makes the shown history stale.
export function invalidateHistory() {
  history.key = null;
}

function ceilToMinute(date) {
  return new Date(Math.ceil(date.getTime() / 60e3) * 60e3);
}

function title(type, id, name) {
  $("history-title").replaceChildren("History of ", h("span", { class: "mono" }, `${type} ${id}`), name ? ` · ${name}` : "");
}

export function showHistory(type, id, params) {
  showView("history");
  for (const el of document.querySelectorAll(".tz-hint")) el.textContent = tzLabel();
  const order = params.get("order") === "desc" ? "desc" : "asc";
  const asOf = params.get("as_of") || "";
  const key = `${type}\u0000${id}\u0000${order}\u0000${session.tenant}\u0000${prefs.utc}`;
  // The object's name (from its events) stays when only as_of or the view changes.
  title(type, id, key === history.key ? history.name : null);
  document.title = `${type} ${id} · history · auditstream`;
  $("history-order").value = order;
  $("asof").value = isoToInput(asOf);
  if (key !== history.key) {
    Object.assign(history, { key, type, id, order, name: null, events: [], next: null, loading: false, done: false, generation: history.generation + 1 });
    $("timeline").replaceChildren();
    showAlert("history-error", "");
    loadHistory();
    $("history-title").focus(); // a new page for screen readers: start at its heading
  }
  loadState(type, id, asOf);
}

async function loadHistory() {
  const s = history;
  if (s.loading || s.done) return;
  s.loading = true;
  const generation = s.generation;
  $("history-status").textContent = "Loading…";
  try {
    const path = `/v1/targets/${encodeURIComponent(s.type)}/${encodeURIComponent(s.id)}/history`;
    const resp = await api(path, { order: s.order, limit: PAGE_SIZE, cursor: s.next });
    const body = await resp.json();
    if (generation !== history.generation) return;
    s.events.push(...body.data);
    s.next = body.next_cursor;
    s.done = !body.next_cursor;
    $("timeline").append(...body.data.map(timelineItem));
    const n = s.events.length;
    $("history-status").textContent = n === 0
      ? "No events recorded for this object."
      : `${n} event${n === 1 ? "" : "s"}${s.done ? "" : " so far · scroll for more"}.`;
    $("history-more").hidden = s.done;
    const named = s.events.flatMap((e) => e.targets || []).find((t) => t.type === s.type && t.id === s.id && t.name);
    if (named) {
      s.name = named.name;
      title(s.type, s.id, named.name);
    }
  } catch (err) {
    if (err instanceof SignedOut) return;
    if (generation === history.generation) {
      showAlert("history-error", errorText(err));
      $("history-status").textContent = "";
    }
  } finally {
    if (generation === history.generation) {
      s.loading = false;
      if (!s.done && s.events.length && nearViewport($("history-sentinel"))) loadHistory();
    }
  }
}

function timelineItem(e) {
  const actor = e.actor || {};
  const changes = e.changes && Object.keys(e.changes).length ? changesTable(e.changes) : h("p", { class: "nochange" }, "No field changes recorded.");
  const index = history.events.indexOf(e);
  return h(
    "li",
    { class: `outcome-${e.outcome || "success"}${corrected(e) ? " corrected" : ""}`, dataset: { id: e.id } },
    h("div", { class: "tl-head" },
      timeEl(e.occurred_at),
      h("span", { class: "tl-action" }, e.action),
      outcomeBadge(e.outcome),
      stateBadges(e),
      e.crud ? h("span", { class: "badge crud" }, CRUD[e.crud] || e.crud) : null,
      h("span", {}, "by ", h("strong", {}, actor.name || actor.id || "unknown")),
      h("span", { class: "tl-open" },
        h("button", { type: "button", class: "btn btn-quiet btn-small", dataset: { asof: e.occurred_at }, "aria-label": `State after ${e.action} at ${e.occurred_at}` }, "State after"),
        h("button", { type: "button", class: "btn btn-quiet btn-small", dataset: { open: index }, "aria-label": `Open event ${e.id}` }, "Open event")),
    ),
    e.description ? h("p", { class: "tl-desc" }, e.description) : null,
    changes,
  );
}

async function loadState(type, id, asOfIso) {
  const when = asOfIso || ceilToMinute(new Date()).toISOString();
  $("state-summary").textContent = "Loading…";
  try {
    const path = `/v1/targets/${encodeURIComponent(type)}/${encodeURIComponent(id)}/history`;
    const body = await (await api(path, { as_of: when })).json();
    const fields = Object.entries(body.fields || {});
    const rows = fields.map(([name, f]) => h(
      "tr",
      { class: f.event_id === body.last_event_id && !f.inferred ? "recent" : "" },
      h("th", { scope: "row" }, name),
      h("td", { class: "value" }, fmtValue(f.value)),
      h("td", {},
        h("a", { href: "#", dataset: { event: f.event_id }, title: f.event_id }, fmtTime(f.occurred_at)),
        f.inferred ? h("div", { class: "inferred" }, "inferred from the next change") : null),
    ));
    $("state-body").replaceChildren(...rows);
    $("state-table").hidden = rows.length === 0;
    const label = asOfIso ? `As of ${fmtTime(body.as_of)}` : "Current state";
    const parts = [`${label}: ${body.events_applied} event${body.events_applied === 1 ? "" : "s"} applied`];
    if (body.events_skipped) parts.push(`${body.events_skipped} failed/denied ignored`);
    if (body.deleted) parts.push("the object was deleted");
    if (!rows.length) parts.push("no field values known");
    $("state-summary").textContent = `${parts.join(" · ")}.` + (rows.length ? " Highlighted: set by the latest event." : "");
  } catch (err) {
    if (!(err instanceof SignedOut)) $("state-summary").textContent = errorText(err);
  }
}

function setHistoryParams(changes) {
  const { params } = parseHash();
  for (const [k, v] of Object.entries(changes)) {
    if (v) params.set(k, v);
    else params.delete(k);
  }
  window.location.hash = historyHref(history.type, history.id, params);
}

// The page's controls. backToSearch(): the URL of the search it came from.
export function wireHistory(backToSearch) {
  $("back-to-search").addEventListener("click", (event) => {
    event.preventDefault();
    window.location.hash = backToSearch();
  });
  $("history-order").addEventListener("change", (e) => setHistoryParams({ order: e.target.value === "desc" ? "desc" : "" }));
  $("asof-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setHistoryParams({ as_of: inputToIso($("asof").value) });
  });
  $("asof-now").addEventListener("click", () => setHistoryParams({ as_of: "" }));
  $("history-more").addEventListener("click", loadHistory);
  $("timeline").addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.dataset.open !== undefined) goToEvent(history.events[Number(button.dataset.open)].id);
    if (button.dataset.asof) setHistoryParams({ as_of: button.dataset.asof });
  });
  $("state-body").addEventListener("click", (event) => {
    const link = event.target.closest("a[data-event]");
    if (!link) return;
    event.preventDefault();
    goToEvent(link.dataset.event);
  });
}

// More of the timeline when its end comes near (the sentinel).
export function loadMoreHistory() {
  if (document.body.dataset.view === "history" && history.events.length) loadHistory();
}
