// The streams page (#/streams, tokens with events:admin): the tenant's log-stream
// destinations from GET /v1/streams with their filters and health — lag in events
// and seconds, last success, last error, dead-letter batches. Read only: the page
// never shows a secret (the API returns none, only `secret_set`) and shows a
// destination's scheme and host, not its path or query, which may carry a token.
// It refreshes itself every 5 seconds while shown.

import { $, h, showAlert, showView } from "./dom.js";
import { api, ApiError, errorText, SignedOut } from "./api.js";
import { fmtSeconds, fmtTime, relTimeEl, timeEl } from "./format.js";
import { hasScope, session } from "./session.js";

const REFRESH_MS = 5000;
const BEHIND_SECONDS = 60; // the oldest undelivered event older than this: "behind"
const KINDS = { webhook: "Webhook", splunk_hec: "Splunk HEC", datadog: "Datadog", syslog: "Syslog (TLS)" };

let generation = 0;
let timer = null;

export function showStreams() {
  showView("streams");
  $("streams-title").focus();
  refresh();
}

function schedule(mine) {
  clearTimeout(timer);
  timer = setTimeout(() => {
    if (mine === generation && document.body.dataset.view === "streams" && session.token) refresh();
  }, REFRESH_MS);
}

async function refresh() {
  const mine = ++generation;
  const status = $("streams-status");
  if (!hasScope("events:admin")) {
    $("streams-body").replaceChildren();
    status.textContent = "";
    showAlert("streams-error", "The streams page needs a token with the events:admin scope.");
    return;
  }
  status.textContent = "Loading…";
  try {
    const body = await (await api("/v1/streams")).json();
    if (mine !== generation) return;
    const streams = body.data || [];
    showAlert("streams-error", "");
    render(streams);
    const failing = streams.filter((s) => health(s).level === "bad").length;
    status.textContent = streams.length
      ? `${streams.length} destination${streams.length === 1 ? "" : "s"} for tenant ${session.tenant || "?"}` +
        `${failing ? ` · ${failing} failing` : ""} · updated ${fmtTime(new Date().toISOString())}, refreshed every ${REFRESH_MS / 1000} s.`
      : "";
    schedule(mine);
  } catch (err) {
    if (err instanceof SignedOut || mine !== generation) return;
    status.textContent = "";
    showAlert("streams-error", err instanceof ApiError && err.status === 403
      ? `Not allowed: ${err.message}`
      : errorText(err));
    schedule(mine);
  }
}

function newer(a, b) {
  return Boolean(a) && (!b || new Date(a).getTime() > new Date(b).getTime());
}

// One word for how delivery is doing, and why.
export function health(s) {
  if (!s.enabled) return { level: "paused", text: "paused", why: "Delivery is paused (enabled: false); the position stays." };
  if (newer(s.last_error_at, s.last_success_at)) {
    return { level: "bad", text: "failing", why: "The latest attempt failed; the worker retries with backoff, then dead-letters the batch." };
  }
  if (s.dead_letter_batches) {
    return { level: "warn", text: "dead letters", why: `Batches gave up on: auditstream streams redrive ${s.id} sends them again.` };
  }
  if ((s.lag_events || 0) > 0 && (s.lag_seconds || 0) > BEHIND_SECONDS) {
    return { level: "warn", text: "behind", why: `The oldest undelivered event waits for more than ${BEHIND_SECONDS} s.` };
  }
  return { level: "ok", text: "healthy", why: "Delivering; nothing waits for long." };
}

// scheme://host[:port], with "/…" when a path or query is left out.
function destination(raw) {
  try {
    const url = new URL(raw);
    const rest = (url.pathname && url.pathname !== "/") || url.search ? "/…" : "";
    return `${url.protocol}//${url.host}${rest}`;
  } catch {
    return "(not shown)";
  }
}

function filtersText(f) {
  const actions = (f && f.actions) || [];
  const outcomes = (f && f.outcomes) || [];
  if (!actions.length && !outcomes.length) return "all events";
  const parts = [];
  if (actions.length) parts.push(`actions: ${actions.join(", ")}`);
  if (outcomes.length) parts.push(`outcomes: ${outcomes.join(", ")}`);
  return parts.join(" · ");
}

function when(iso) {
  return iso ? [timeEl(iso), " ", relTimeEl(iso)] : h("span", { class: "help" }, "never");
}

function row(s) {
  const state = health(s);
  const lag = s.lag_events === null || s.lag_events === undefined
    ? "—"
    : s.lag_events === 0
      ? "up to date"
      : [`${s.lag_events} event${s.lag_events === 1 ? "" : "s"}`, h("br"),
        h("span", { class: "help" }, `oldest waiting ${fmtSeconds(s.lag_seconds)}`)];
  const lastError = s.last_error
    ? [when(s.last_error_at), h("div", { class: "stream-error", title: s.last_error }, s.last_error)]
    : h("span", { class: "help" }, "none");
  const dead = s.dead_letter_batches === null || s.dead_letter_batches === undefined
    ? "—"
    : [`${s.dead_letter_batches} batch${s.dead_letter_batches === 1 ? "" : "es"}`,
      s.dead_lettered ? h("div", { class: "help" }, `${s.dead_lettered} events dead-lettered in all`) : null];
  return h(
    "tr",
    { dataset: { id: s.id }, class: `stream-${state.level}` },
    h("td", { class: "col-stream", "data-label": "Destination" },
      h("div", { class: "stream-name" }, s.name, " ", h("span", { class: "badge crud" }, KINDS[s.kind] || s.kind)),
      h("div", { class: "mono stream-url", title: "The path and query are not shown: they may carry a token." }, destination(s.url)),
      h("div", { class: "help" }, "Filters: ", filtersText(s.filters)),
      h("div", { class: "help mono" }, s.id)),
    h("td", { class: "col-health", "data-label": "Health" },
      h("span", { class: `badge health ${state.level}`, title: state.why }, state.text)),
    h("td", { class: "col-lag", "data-label": "Lag" }, lag),
    h("td", { class: "col-success", "data-label": "Last success" }, when(s.last_success_at)),
    h("td", { class: "col-error", "data-label": "Last error" }, lastError),
    h("td", { class: "col-dead", "data-label": "Dead letters" }, dead),
    h("td", { class: "col-delivered", "data-label": "Delivered" }, String(s.delivered ?? 0),
      h("div", { class: "help" }, `position seq ${s.position ?? 0}`)),
  );
}

function render(streams) {
  const body = $("streams-body");
  if (!streams.length) {
    body.replaceChildren(h("tr", {}, h("td", { class: "empty", colspan: 7 },
      `No streams in tenant ${session.tenant || "?"}. Add one with `, h("code", {}, "auditstream streams add"),
      " or POST /v1/streams (docs/streams.md).")));
    return;
  }
  body.replaceChildren(...streams.map(row));
}

export function wireStreams() {
  $("streams-refresh").addEventListener("click", refresh);
}
