// auditstream viewer: plain JavaScript modules, no build step, no dependencies.
// This module routes the URL's hash to a page and wires the pages together;
// each page lives in its own module (search, history, event, streams).

import { $, observe, showView } from "./dom.js";
import { setUtc, prefs } from "./format.js";
import { parseHash } from "./links.js";
import { events as sessionEvents, restore, session, setTenant, signInWithPassword, signInWithToken, signOut } from "./session.js";
import { checkChain, events as chainEvents } from "./chain.js";
import { invalidateSearch, loadMoreResults, markTampered, search, searchHash, showSearch, wireSearch } from "./search.js";
import { history, invalidateHistory, loadMoreHistory, showHistory, wireHistory } from "./history.js";
import { openEventById, wireDialog } from "./event.js";
import { showStreams, wireStreams } from "./streams.js";

let lastViewHash = "#/search"; // the page under an event's dialog

function route() {
  if (!session.token) {
    showView("signin");
    return;
  }
  const { parts, params } = parseHash();
  if (parts[0] === "event" && parts.length === 2) {
    // An event's own URL: its details over the view it was opened from (the
    // search, when the link was opened in a new tab).
    if (params.get("tenant") && session.tenants !== null && params.get("tenant") !== session.tenant) {
      setTenant(params.get("tenant"), { reroute: false });
    }
    if (document.body.dataset.view !== "search" && document.body.dataset.view !== "history") {
      const last = parseHash(lastViewHash);
      if (last.parts[0] === "history" && last.parts.length === 3) showHistory(last.parts[1], last.parts[2], last.params);
      else showSearch(last.params);
    }
    openEventById(parts[1], [...history.events, ...search.events]);
    return;
  }
  lastViewHash = window.location.hash || "#/search";
  const dialog = $("event-dialog");
  if (dialog.open) dialog.close();
  if (parts[0] === "history" && parts.length === 3) showHistory(parts[1], parts[2], params);
  else if (parts[0] === "streams" && parts.length === 1) showStreams();
  else showSearch(params);
}

function stale() {
  invalidateSearch();
  invalidateHistory();
}

function init() {
  sessionEvents.addEventListener("signed-in", () => checkChain());
  sessionEvents.addEventListener("tenant", (event) => {
    stale();
    checkChain();
    if (event.detail.reroute) route();
  });
  sessionEvents.addEventListener("signed-out", stale);
  chainEvents.addEventListener("broken", (event) => markTampered(event.detail.id));

  $("password-form").addEventListener("submit", async (event) => {
    if (await signInWithPassword(event)) route();
  });
  $("token-form").addEventListener("submit", (event) => {
    if (signInWithToken(event)) route();
  });
  $("sign-out").addEventListener("click", () => { signOut("You signed out."); window.location.hash = ""; });
  $("chain").addEventListener("click", checkChain);
  $("tenant-select").addEventListener("change", (e) => setTenant(e.target.value));
  $("tenant-input").addEventListener("change", (e) => setTenant(e.target.value));
  const utc = $("utc");
  utc.checked = prefs.utc;
  utc.addEventListener("change", () => {
    setUtc(utc.checked);
    stale();
    route();
  });

  wireSearch(route);
  wireHistory(searchHash);
  wireStreams();
  const dialog = $("event-dialog");
  wireDialog(() => {
    // Back to the view under the dialog; the event's entry is replaced, so the
    // back button does not reopen it.
    if (parseHash().parts[0] === "event") window.location.replace(lastViewHash);
  });

  document.addEventListener("keydown", (event) => {
    // The side panel is not modal: Escape closes it from anywhere on the page.
    if (event.key === "Escape" && dialog.open && dialog.classList.contains("side")) {
      event.preventDefault();
      dialog.close();
      return;
    }
    const typing = event.target.closest("input, textarea, select, [contenteditable]");
    if (event.key === "/" && !typing && !dialog.open && document.body.dataset.view === "search") {
      event.preventDefault();
      $("f-q").focus();
    }
  });

  observe("sentinel", loadMoreResults);
  observe("history-sentinel", loadMoreHistory);
  window.addEventListener("hashchange", route);

  // This tab's saved session, or one an open tab hands over, or the sign-in.
  restore().then(route);
}

init();
