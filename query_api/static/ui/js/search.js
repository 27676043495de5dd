// The search page: the query box and filter panel (both in the URL,
// #/search?…), suggestions from the tenant's data, the result list loaded 50 at
// a time over next_cursor, the keyboard on its rows.

import { $, h, nearViewport, showAlert, showView } from "./dom.js";
import { api, errorText, PAGE_SIZE, SignedOut } from "./api.js";
import { chain } from "./chain.js";
import { prefs, inputToIso, isoToInput, relTimeEl, timeEl, tzLabel } from "./format.js";
import { goToEvent } from "./links.js";
import { session } from "./session.js";
import { corrected, outcomeBadge, stateBadges } from "./event.js";
import { loadTemplates, targetLinks } from "./targets.js";
import { applyQueryTokens, QUERY_KEYS, queryText, quoteToken, rangeMs } from "./query.js";
import { hideHistogram, loadHistogram, wireHistogram } from "./histogram.js";
import { exportAs } from "./export.js";

const FILTERS = ["q", "action", "actor", "actor_type", "target_type", "target_id", "source", "outcome", "crud"];

// The search shown: its URL parameters, the API filters they resolve to, the
// events loaded so far and the cursor of the next page.
export const search = { key: null, params: null, filters: {}, events: [], next: null, loading: false, generation: 0, done: false };
let renderedQuery = ""; // the box's text as last filled from the URL
let reveal = false; // after "Apply filters": scroll the results into view once loaded

// A change (tenant, time zone, sign-out) that makes the shown results stale.
export function invalidateSearch() {
  search.key = null;
}

// The URL of the search shown, to go back to it.
export function searchHash() {
  const p = search.params;
  return `#/search${p && p.toString() ? `?${p}` : ""}`;
}

// ---- suggestions from the tenant's data (GET /v1/suggestions)
const SUGGEST_KEYS = { action: "actions", actor: "actors", target_type: "target_types" };
const FIXED_SUGGESTIONS = { outcome: ["success", "failure", "denied"], crud: ["create", "read", "update", "delete"], since: ["15m", "1h", "24h", "7d", "30d"] };
let suggestionsFor = null;
let suggestionsData = { actions: [], actors: [], target_types: [] };

async function loadSuggestions() {
  if (suggestionsFor === session.tenant) return;
  suggestionsFor = session.tenant;
  loadTemplates().then(() => {
    // Rows already drawn get their links now.
    for (const [i, e] of search.events.entries()) {
      const cell = document.querySelector(`#results-body tr[data-index="${i}"] .col-targets`);
      if (cell && !e.erased) cell.replaceChildren(...targetLinks(e.targets).flat());
    }
  });
  try {
    const body = await (await api("/v1/suggestions")).json();
    if (suggestionsFor !== session.tenant) return;
    suggestionsData = body;
    for (const [key, name] of Object.entries(SUGGEST_KEYS)) {
      $(`list-${key}`).replaceChildren(...(body[name] || []).map((v) => h("option", { value: v })));
    }
    suggestQuery();
  } catch (err) {
    suggestionsFor = null;
    if (!(err instanceof SignedOut)) console.warn("suggestions unavailable", err);
  }
}

// Completions for the box's last token: "act" -> "action:", "action:inv" ->
// "action:invoice.update" (each option is the whole box text, as a datalist needs).
function suggestQuery() {
  const box = $("f-q");
  const text = box.value;
  const cut = text.search(/\S*$/);
  const before = text.slice(0, cut);
  const last = text.slice(cut);
  const options = [];
  const m = /^([a-z_]+):(.*)$/.exec(last);
  if (m) {
    const values = SUGGEST_KEYS[m[1]] ? suggestionsData[SUGGEST_KEYS[m[1]]] || [] : FIXED_SUGGESTIONS[m[1]] || [];
    for (const v of values) if (v.startsWith(m[2])) options.push(`${before}${m[1]}:${quoteToken(v)}`);
  } else if (last) {
    for (const key of QUERY_KEYS) if (key.startsWith(last)) options.push(`${before}${key}:`);
  }
  $("query-suggest").replaceChildren(...options.slice(0, 50).map((v) => h("option", { value: v })));
}

// ---- the form <-> the URL's parameters

function formToParams() {
  const form = $("search-form");
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    if (name === "q") continue;
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  const range = form.elements.range.value;
  if (range === "custom") {
    params.set("range", "custom");
    const since = inputToIso(form.elements.since.value);
    const until = inputToIso(form.elements.until.value);
    if (since) params.set("since", since);
    if (until) params.set("until", until);
  } else if (range) {
    params.set("range", range);
  }
  if (form.elements.order.value === "asc") params.set("order", "asc");
  return applyQueryTokens(params, form.elements.q.value, renderedQuery);
}

function paramsToForm(params) {
  const form = $("search-form");
  for (const name of FILTERS) form.elements[name].value = params.get(name) || "";
  const range = params.get("range") || "";
  if (range && ![...form.elements.range.options].some((o) => o.value === range)) {
    form.elements.range.add(h("option", { value: range }, `Last ${range}`), form.elements.range.options.length - 1);
  }
  form.elements.range.value = range;
  renderedQuery = queryText(params);
  form.elements.q.value = renderedQuery;
  form.elements.since.value = isoToInput(params.get("since"));
  form.elements.until.value = isoToInput(params.get("until"));
  form.elements.order.value = params.get("order") === "asc" ? "asc" : "desc";
  syncRange();
  const active = [...FILTERS.filter((n) => n !== "q" && params.get(n)), params.get("range") ? "range" : null].filter(Boolean);
  $("filter-count").textContent = active.length ? `(${active.length} active)` : "";
}

function syncRange() {
  const custom = $("f-range").value === "custom";
  for (const el of document.querySelectorAll(".range-custom")) el.hidden = !custom;
}

// The API query of the hash's parameters: relative ranges resolve now.
function apiFilters(params) {
  const out = {};
  for (const name of FILTERS) if (params.get(name)) out[name] = params.get(name);
  const range = params.get("range");
  if (range && rangeMs(range)) out.since = new Date(Date.now() - rangeMs(range)).toISOString();
  if (range === "custom") {
    if (params.get("since")) out.since = params.get("since");
    if (params.get("until")) out.until = params.get("until");
  }
  if (params.get("order") === "asc") out.order = "asc";
  return out;
}

// ---- the results

export function showSearch(params) {
  showView("search");
  loadSuggestions();
  for (const el of document.querySelectorAll(".tz-hint")) el.textContent = tzLabel();
  const key = `${params.toString()}|${session.tenant}|${prefs.utc}`;
  if (key === search.key) return; // back from a history: keep results and scroll
  paramsToForm(params);
  Object.assign(search, { key, params, filters: apiFilters(params), events: [], next: null, loading: false, generation: search.generation + 1, done: false });
  $("results-body").replaceChildren();
  hideHistogram();
  $("load-more").hidden = true;
  showAlert("search-error", "");
  loadResults();
}

async function loadResults() {
  const s = search;
  if (s.loading || s.done) return;
  s.loading = true;
  const generation = s.generation;
  const current = () => generation === search.generation; // a newer search replaced this one
  $("load-more").disabled = true;
  $("results-status").textContent = s.events.length ? `Showing ${s.events.length} events · loading more…` : "Searching…";
  try {
    // Erased events stay in place as tombstones (the export leaves them out).
    const resp = await api("/v1/events", { ...s.filters, include_erased: "true", limit: PAGE_SIZE, cursor: s.next });
    const body = await resp.json();
    if (!current()) return;
    const start = s.events.length;
    if (start === 0) loadHistogram(s.filters, current);
    s.events.push(...body.data);
    s.next = body.next_cursor;
    s.done = !body.next_cursor;
    appendRows(body.data, start);
    const n = s.events.length;
    $("results-status").textContent = n === 0
      ? emptyText()
      : s.done ? `${n} matching event${n === 1 ? "" : "s"}, all shown.` : `Showing ${n} events · scroll for more.`;
    $("load-more").hidden = s.done;
    if (reveal) {
      reveal = false;
      revealResults();
    }
  } catch (err) {
    if (err instanceof SignedOut) return;
    if (current()) {
      showAlert("search-error", errorText(err));
      $("results-status").textContent = "";
    }
  } finally {
    if (current()) {
      s.loading = false;
      $("load-more").disabled = false;
      if (!s.done && s.events.length && nearViewport($("sentinel"))) loadResults();
    }
  }
}

// Filters narrowed nothing down, or the tenant has nothing yet: say which.
function isFiltered() {
  return Object.keys(search.filters || {}).some((k) => k !== "order");
}

function emptyText() {
  return isFiltered()
    ? "No events match these filters."
    : `No events yet in tenant ${session.tenant || "?"}: nothing has been recorded for it.`;
}

// After "Apply filters" the results may sit below the fold (a narrow window,
// the filters on top): bring their first row into view.
function revealResults() {
  const area = $("results-status");
  const rect = area.getBoundingClientRect();
  if (rect.top < 0 || rect.bottom > window.innerHeight) area.scrollIntoView({ block: "start" });
}

function appendRows(events, start) {
  const body = $("results-body");
  const rows = events.map((e, i) => {
    const actor = e.actor || {};
    const badges = stateBadges(e);
    const classes = [e.erased ? "tombstone" : "", corrected(e) ? "corrected" : "", e.id === chain.firstBadId ? "tampered" : ""];
    const desc = e.erased
      ? h("span", { class: "tombstone-text" }, `Erased by ${e.erased.by || "?"}: ${e.erased.reason || "no reason given"}`)
      : e.description || "";
    return h(
      "tr",
      {
        tabindex: 0,
        class: classes.filter(Boolean).join(" ") || null,
        dataset: { index: start + i, id: e.id },
        "aria-label": `${e.action} by ${actor.name || actor.id || "unknown"} at ${e.occurred_at}${badges.length ? ` (${badges.map((b) => b.textContent).join(", ")})` : ""}`,
      },
      h("td", { class: "col-time", "data-label": "Time" }, timeEl(e.occurred_at), relTimeEl(e.occurred_at)),
      h("td", { class: "col-action", "data-label": "Action" }, e.action, badges.length ? [" ", ...badges] : null),
      h("td", { class: "col-actor", "data-label": "Actor" },
        actor.id ? [h("span", { class: "actor-name" }, actor.name || actor.id), " ", h("span", { class: "actor-type" }, actor.type || "")] : "—"),
      h("td", { class: "col-targets", "data-label": "Targets" }, e.erased ? "—" : targetLinks(e.targets)),
      h("td", { class: "col-outcome", "data-label": "Outcome" }, outcomeBadge(e.outcome)),
      h("td", { class: "col-desc", "data-label": "Description" }, desc),
    );
  });
  if (start === 0 && rows.length === 0) {
    const cell = h("td", { class: "empty", colspan: 6 }, emptyText());
    if (isFiltered()) cell.append(" ", h("a", { href: "#/search" }, "Clear the filters"));
    body.replaceChildren(h("tr", {}, cell));
    return;
  }
  body.append(...rows);
}

// Mark the event that breaks the chain wherever it is already listed.
export function markTampered(id) {
  if (!id) return;
  search.events.forEach((e, i) => {
    if (e.id !== id) return;
    const row = document.querySelector(`#results-body tr[data-index="${i}"]`);
    if (row && !row.querySelector(".badge.tampered")) {
      row.classList.add("tampered");
      row.querySelector(".col-action").append(" ", ...stateBadges(e).filter((b) => b.classList.contains("tampered")));
    }
  });
}

function onResultsKey(event) {
  const row = event.target.closest("tr[data-index]");
  if (!row || event.target !== row) return;
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    goToEvent(search.events[Number(row.dataset.index)].id);
  } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    event.preventDefault();
    const next = event.key === "ArrowDown" ? row.nextElementSibling : row.previousElementSibling;
    if (next) next.focus();
    else if (event.key === "ArrowDown" && !search.done) loadResults();
  }
}

function onResultsClick(event) {
  if (event.target.closest("a, button")) return;
  const row = event.target.closest("tr[data-index]");
  if (row) goToEvent(search.events[Number(row.dataset.index)].id);
}

// The page's controls. rerun(): show the current URL's search again.
export function wireSearch(rerun) {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    let params;
    try {
      params = formToParams();
    } catch (err) {
      showAlert("search-error", err.message);
      return;
    }
    // "Apply filters" (in the panel): show the results, which may be below the fold.
    const fromPanel = event.submitter && event.submitter.closest(".filter-actions");
    const hash = `#/search${params.toString() ? `?${params}` : ""}`;
    if (window.location.hash === hash) {
      search.key = null;
      rerun();
    } else {
      window.location.hash = hash;
    }
    if (fromPanel) reveal = true;
  });
  $("f-range").addEventListener("change", syncRange);
  $("f-q").addEventListener("input", suggestQuery);
  wireHistogram(() => search.params);
  $("reset").addEventListener("click", () => { window.location.hash = "#/search"; });
  $("results-body").addEventListener("keydown", onResultsKey);
  $("results-body").addEventListener("click", onResultsClick);
  $("load-more").addEventListener("click", loadResults);
  for (const id of ["export-csv", "export-ndjson"]) {
    const button = $(id);
    button.addEventListener("click", () => exportAs(button.dataset.format, button, search.filters));
  }
  if (window.matchMedia("(max-width: 820px)").matches) $("filters").open = false;
}

// More results when the end of the list comes near (the sentinel).
export function loadMoreResults() {
  if (document.body.dataset.view === "search" && search.events.length) loadResults();
}
