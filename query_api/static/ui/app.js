// auditstream viewer: plain JavaScript, no build step, no dependencies.
// Every value from the API is rendered with textContent (never innerHTML), and the
// page's Content-Security-Policy allows scripts from this origin only.

const TOKEN_KEY = "auditstream.token";
const TENANT_KEY = "auditstream.tenant";
const UTC_KEY = "auditstream.utc";
const PAGE_SIZE = 50;
const FILTERS = ["q", "action", "actor", "actor_type", "target_type", "target_id", "source", "outcome", "crud"];
const RANGES = { "15m": 15 * 60e3, "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
const CRUD = { c: "create", r: "read", u: "update", d: "delete" };
const CORRECTED_ACTION = "auditstream.event.corrected";
const ERASED_ACTION = "auditstream.event.erased";
const CONTROL_TARGET = "audit_event";
const SESSION_CHANNEL = "auditstream.session";
const SIDE_PANEL = window.matchMedia("(min-width: 1100px)");

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  claims: null,
  tenants: null, // null: a single tenant fixed by the token; [] any tenant ("*"); else the list
  tenant: null,
  utc: localStorage.getItem(UTC_KEY) === "1",
  search: { key: null, params: null, events: [], next: null, loading: false, generation: 0 },
  history: { key: null, type: null, id: null, order: "asc", events: [], next: null, loading: false, generation: 0 },
  chain: { ok: null, firstBadId: null, firstBadSeq: null, why: "" },
  lastViewHash: "#/search",
};

class ApiError extends Error {
  constructor(status, detail, body = null) {
    super(detail);
    this.status = status;
    this.body = body;
  }
}
class SignedOut extends Error {}

// ---------------------------------------------------------------- DOM helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function showAlert(id, message) {
  const el = $(id);
  el.textContent = message || "";
  el.hidden = !message;
}

let toastTimer = null;
function toast(message, sticky = false) {
  const el = $("toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toastTimer);
  if (!sticky) toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
}

// ---------------------------------------------------------------- time

function pad(n, w = 2) { return String(n).padStart(w, "0"); }

function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  if (state.utc) return `${iso.slice(0, 10)} ${iso.slice(11, 19)}`;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function zoneName() {
  if (state.utc) return "UTC";
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
  } catch {
    return "local time";
  }
}

// The exact time, in the zone shown, named: the tooltip of every time.
function exactTitle(iso) {
  return `${fmtTime(iso)} ${zoneName()} · ${iso}`;
}

function timeEl(iso) {
  return h("time", { datetime: iso, title: exactTitle(iso) }, fmtTime(iso));
}

const RELATIVE = typeof Intl.RelativeTimeFormat === "function" ? new Intl.RelativeTimeFormat("en", { numeric: "auto" }) : null;

// "5 minutes ago", "yesterday", "3 days ago" (within 30 days), else nothing.
function relTime(iso) {
  const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
  if (!RELATIVE || Number.isNaN(seconds) || Math.abs(seconds) > 30 * 86400) return "";
  const abs = Math.abs(seconds);
  if (abs < 45) return "just now";
  if (abs < 3600) return RELATIVE.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return RELATIVE.format(Math.round(seconds / 3600), "hour");
  return RELATIVE.format(Math.round(seconds / 86400), "day");
}

function relTimeEl(iso) {
  const text = relTime(iso);
  return text ? h("span", { class: "rel-time", title: exactTitle(iso) }, text) : null;
}

// datetime-local value <-> RFC 3339, in local time or UTC as the toggle says.
function inputToIso(value) {
  if (!value) return "";
  const d = new Date(state.utc ? `${value}Z` : value);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

function isoToInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  if (state.utc) return d.toISOString().slice(0, 19);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function tzLabel() { return `(${zoneName()})`; }

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function fmtValue(value) {
  if (value === undefined) return "—";
  if (typeof value === "string") return value;
  return JSON.stringify(value);
}

// ---------------------------------------------------------------- API

function tenantParams() {
  return state.tenants !== null && state.tenant ? { tenant: state.tenant } : {};
}

async function problemBody(resp) {
  try {
    return await resp.json();
  } catch {
    return {};
  }
}

function detailOf(resp, body) {
  return (body && (body.detail || body.error_description || body.error)) || `${resp.status} ${resp.statusText}`;
}

async function problemDetail(resp) {
  return detailOf(resp, await problemBody(resp));
}

async function api(path, params = {}, { accept = "application/json", tenantless = false } = {}) {
  if (!state.token) throw new SignedOut();
  if (!tenantless && state.tenants !== null && !state.tenant) throw new ApiError(400, "Choose a tenant first (top right).");
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries({ ...params, ...(tenantless ? {} : tenantParams()) })) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const resp = await fetch(url, { headers: { Authorization: `Bearer ${state.token}`, Accept: accept } });
  if (resp.status === 401) {
    const detail = await problemDetail(resp);
    signOut(`You were signed out: ${detail}. Sign in again.`);
    throw new SignedOut();
  }
  if (!resp.ok) {
    const body = await problemBody(resp);
    throw new ApiError(resp.status, detailOf(resp, body), body);
  }
  return resp;
}

function errorText(err) {
  if (err instanceof ApiError) return err.message;
  return `Could not reach the server (${err.message || err}).`;
}

// ---------------------------------------------------------------- session

function decodeClaims(token) {
  const parts = token.split(".");
  if (parts.length !== 3) throw new Error("This is not a JWT (expected three dot-separated parts).");
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(Array.from(atob(b64), (c) => `%${c.charCodeAt(0).toString(16).padStart(2, "0")}`).join(""));
    return JSON.parse(json);
  } catch {
    throw new Error("The token's payload could not be read.");
  }
}

function useToken(token, { persist = true } = {}) {
  const claims = decodeClaims(token);
  if (typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) {
    throw new Error("This token has expired.");
  }
  state.token = token;
  state.claims = claims;
  if (persist) sessionStorage.setItem(TOKEN_KEY, token);
  const tenant = claims.tenant;
  if (typeof tenant === "string" && tenant !== "*") {
    state.tenants = null;
    state.tenant = tenant;
  } else {
    state.tenants = Array.isArray(tenant) ? tenant.map(String) : [];
    const saved = localStorage.getItem(TENANT_KEY);
    state.tenant = state.tenants.length
      ? (state.tenants.includes(saved) ? saved : state.tenants[0])
      : (saved || "");
  }
  renderSession();
  checkChain();
  if (state.tenants !== null) loadTenants();
}

// The tenants a multi-tenant token may read (GET /v1/tenants), for the picker.
async function loadTenants() {
  try {
    const body = await (await api("/v1/tenants", {}, { tenantless: true })).json();
    const names = (body.data || []).map(String);
    if (body.all_tenants) {
      $("tenant-list").replaceChildren(...names.map((t) => h("option", { value: t })));
      if (!state.tenant && names.length) setTenant(names[0]);
    } else if (names.length) {
      state.tenants = names;
      if (!names.includes(state.tenant)) {
        setTenant(names[0]);
        return;
      }
      renderSession();
    }
  } catch (err) {
    if (!(err instanceof SignedOut)) toast(`Could not list tenants: ${errorText(err)}`);
  }
}

function renderSession() {
  $("session").hidden = false;
  const c = state.claims || {};
  const who = $("who");
  who.replaceChildren("Signed in as ", h("strong", { text: c.sub || "?" }));
  if (state.tenants === null) who.append(" · tenant ", h("strong", { text: state.tenant }));
  const scopes = typeof c.scope === "string" ? c.scope : "";
  who.title = `scopes: ${scopes || "none"}` + (c.exp ? ` · expires ${new Date(c.exp * 1000).toISOString()}` : "");
  const pick = $("tenant-pick");
  const select = $("tenant-select");
  const input = $("tenant-input");
  pick.hidden = state.tenants === null;
  if (state.tenants && state.tenants.length) {
    select.hidden = false;
    input.hidden = true;
    select.replaceChildren(...state.tenants.map((t) => h("option", { value: t, selected: t === state.tenant }, t)));
  } else if (state.tenants) {
    select.hidden = true;
    input.hidden = false;
    input.value = state.tenant || "";
    input.placeholder = "tenant id";
  }
}

function setTenant(tenant, { reroute = true } = {}) {
  state.tenant = tenant.trim();
  localStorage.setItem(TENANT_KEY, state.tenant);
  state.search.key = null;
  state.history.key = null;
  renderSession();
  checkChain();
  if (reroute) route();
}

function signOut(message, { broadcast = true } = {}) {
  if (broadcast && state.token && session) session.postMessage({ type: "signed-out" });
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.claims = null;
  state.search.key = null;
  state.history.key = null;
  $("session").hidden = true;
  showAlert("signin-error", message || "");
  showView("signin");
}

async function signInWithPassword(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const username = form.username.value.trim();
  const password = form.password.value;
  if (!username || !password) {
    showAlert("signin-error", "Enter your username and password.");
    (username ? form.password : form.username).focus();
    return;
  }
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const resp = await fetch("/v1/token", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
      body: new URLSearchParams({ grant_type: "password", username, password }),
    });
    if (resp.status === 404 || resp.status === 405) {
      throw new Error("Password sign-in is not available on this server. Paste an access token instead.");
    }
    if (!resp.ok) {
      const detail = await problemDetail(resp);
      throw new Error(resp.status === 400 || resp.status === 401 ? `Sign-in failed: ${detail}` : detail);
    }
    const body = await resp.json();
    if (!body.access_token) throw new Error("The server answered without an access token.");
    form.password.value = "";
    useToken(body.access_token);
    showAlert("signin-error", "");
    route();
  } catch (err) {
    showAlert("signin-error", err.message || String(err));
  } finally {
    button.disabled = false;
  }
}

function signInWithToken(event) {
  event.preventDefault();
  const field = event.currentTarget.token;
  const token = field.value.trim().replace(/^Bearer\s+/i, "");
  if (!token) {
    showAlert("signin-error", "Paste a token first.");
    field.focus();
    return;
  }
  try {
    useToken(token);
    field.value = "";
    showAlert("signin-error", "");
    route();
  } catch (err) {
    showAlert("signin-error", err.message || String(err));
    field.focus();
  }
}

// Sessions across tabs. The token stays in memory and this tab's sessionStorage
// (never localStorage, never a cookie). A new tab of the viewer (a middle-click on
// a target chip, a shared event link) asks the open tabs of this origin over a
// BroadcastChannel; a signed-in tab hands its token over. Signing out in one tab
// signs out all of them. Nothing outlives the last open tab.
const session = "BroadcastChannel" in window ? new BroadcastChannel(SESSION_CHANNEL) : null;
let waitingForHandoff = null;

function onSessionMessage(event) {
  const msg = event.data || {};
  if (msg.type === "ask" && state.token) {
    session.postMessage({ type: "token", token: state.token, tenant: state.tenant });
  } else if (msg.type === "token" && waitingForHandoff && typeof msg.token === "string") {
    const done = waitingForHandoff;
    waitingForHandoff = null;
    done(msg);
  } else if (msg.type === "signed-out" && state.token) {
    signOut("You signed out in another tab.", { broadcast: false });
  }
}

function askOtherTabs(timeoutMs = 400) {
  if (!session) return Promise.resolve(null);
  return new Promise((resolve) => {
    waitingForHandoff = resolve;
    session.postMessage({ type: "ask" });
    setTimeout(() => {
      if (waitingForHandoff === resolve) {
        waitingForHandoff = null;
        resolve(null);
      }
    }, timeoutMs);
  });
}

// ---------------------------------------------------------------- chain status

function renderChainLink() {
  const link = $("chain-link");
  const c = state.chain;
  link.hidden = !c.firstBadId;
  if (c.firstBadId) {
    link.href = eventHref(c.firstBadId);
    link.textContent = `Open event ${c.firstBadId}`;
    link.title = `The first event that fails verification (seq ${c.firstBadSeq ?? "?"})`;
  }
}

let chainGeneration = 0;

async function checkChain() {
  const generation = ++chainGeneration; // a newer check (another tenant) wins
  const badge = $("chain");
  const text = $("chain-text");
  badge.className = "chain";
  text.textContent = "Chain: checking…";
  badge.title = "Tenant chain verification: click to check again";
  state.chain = { ok: null, firstBadId: null, firstBadSeq: null, why: "" };
  renderChainLink();
  try {
    const body = await (await api("/v1/verify")).json();
    if (generation !== chainGeneration) return;
    const ok = body.ok === true;
    const checked = Number(body.checked ?? 0);
    state.chain.ok = ok;
    if (ok && checked === 0) {
      // Nothing to verify is not a success: an empty or mistyped tenant looks like this.
      badge.classList.add("empty");
      text.textContent = `No events in tenant ${state.tenant || "?"}`;
      badge.title = "Nothing to verify: this tenant has no stored events. Is the tenant id right? Click to check again.";
      return;
    }
    badge.classList.add(ok ? "ok" : "bad");
    if (ok) {
      text.textContent = `Chain verified · ${checked} event${checked === 1 ? "" : "s"}`;
      const notes = [`head seq ${body.head_seq ?? "?"}`, `${body.checkpoints ?? 0} signed checkpoints`];
      if (body.unsigned_tail) notes.push(`${body.unsigned_tail} events after the latest checkpoint`);
      if (body.erased) notes.push(`${body.erased} redacted`);
      if (body.corrected) notes.push(`${body.corrected} corrected`);
      badge.title = `Verified: ${notes.join(", ")}. Click to check again.`;
    } else {
      text.textContent = body.first_bad_seq ? `Chain broken at seq ${body.first_bad_seq}` : "Chain: verification failed";
      const why = [body.reason, body.detail].filter(Boolean).join(": ") || "Verification failed.";
      badge.title = `${why} Click to check again.`;
      state.chain = { ok: false, firstBadId: body.first_bad_id || null, firstBadSeq: body.first_bad_seq ?? null, why };
      renderChainLink();
      markTampered();
    }
  } catch (err) {
    if (err instanceof SignedOut || generation !== chainGeneration) return;
    if (err instanceof ApiError && (err.status === 404 || err.status === 405 || err.status === 501)) {
      text.textContent = "Chain: not available";
      badge.title = "This server does not offer chain verification (GET /v1/verify).";
    } else {
      text.textContent = "Chain: unknown";
      badge.title = errorText(err);
    }
  }
}

// ---------------------------------------------------------------- routing

function showView(name) {
  for (const view of ["signin", "search", "history"]) $(`view-${view}`).hidden = view !== name;
  document.body.dataset.view = name;
}

function parseHash(hash = window.location.hash) {
  const raw = hash.replace(/^#/, "") || "/search";
  const q = raw.indexOf("?");
  const path = q < 0 ? raw : raw.slice(0, q);
  const params = new URLSearchParams(q < 0 ? "" : raw.slice(q + 1));
  const parts = path.split("/").filter(Boolean).map((p) => decodeURIComponent(p));
  return { parts, params };
}

function route() {
  if (!state.token) {
    showView("signin");
    return;
  }
  const { parts, params } = parseHash();
  if (parts[0] === "event" && parts.length === 2) {
    // An event's own URL: its details over the view it was opened from (the
    // search, when the link was opened in a new tab).
    if (params.get("tenant") && state.tenants !== null && params.get("tenant") !== state.tenant) {
      setTenant(params.get("tenant"), { reroute: false });
    }
    if (document.body.dataset.view !== "search" && document.body.dataset.view !== "history") {
      const last = parseHash(state.lastViewHash);
      if (last.parts[0] === "history" && last.parts.length === 3) showHistory(last.parts[1], last.parts[2], last.params);
      else showSearch(last.params);
    }
    openEventById(parts[1]);
    return;
  }
  state.lastViewHash = window.location.hash || "#/search";
  const dialog = $("event-dialog");
  if (dialog.open) dialog.close();
  if (parts[0] === "history" && parts.length === 3) showHistory(parts[1], parts[2], params);
  else showSearch(params);
}

function eventHref(id) {
  const base = `#/event/${encodeURIComponent(id)}`;
  return state.tenants !== null && state.tenant ? `${base}?tenant=${encodeURIComponent(state.tenant)}` : base;
}

function historyHref(type, id, params) {
  const base = `#/history/${encodeURIComponent(type)}/${encodeURIComponent(id)}`;
  const qs = params ? params.toString() : "";
  return qs ? `${base}?${qs}` : base;
}

// ---------------------------------------------------------------- search

// ---- the search box's query syntax, as GitHub's audit log:
//   actor:alice action:invoice.* outcome:failure since:7d "free words"
// key:value tokens are filters; everything else is free text (q).
const QUERY_KEYS = ["action", "actor", "actor_type", "target_type", "target_id", "source", "outcome", "crud", "since", "until"];
const CRUD_WORDS = { create: "c", read: "r", update: "u", delete: "d" };

function rangeMs(range) {
  if (RANGES[range]) return RANGES[range];
  const m = /^(\d+)([mhdw])$/.exec(range || "");
  if (!m) return null;
  return Number(m[1]) * { m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3 }[m[2]];
}

function parseQuery(text) {
  const filters = {};
  const words = [];
  for (const token of (text || "").match(/(?:[^\s"]+|"[^"]*")+/g) || []) {
    const m = /^([a-z_]+):(.+)$/.exec(token);
    if (m && QUERY_KEYS.includes(m[1])) filters[m[1]] = m[2].replace(/"/g, "");
    else words.push(token.replace(/"/g, ""));
  }
  return { filters, words };
}

function quoteToken(value) {
  return /[\s"]/.test(value) ? `"${value.replace(/"/g, "")}"` : value;
}

// The box's text for the URL's parameters: filters as tokens, then the words.
function queryText(params) {
  const tokens = [];
  for (const key of QUERY_KEYS) {
    if (key === "since" || key === "until") continue;
    if (params.get(key)) tokens.push(`${key}:${quoteToken(params.get(key))}`);
  }
  const range = params.get("range");
  if (range && range !== "custom") tokens.push(`since:${range}`);
  if (range === "custom") {
    for (const key of ["since", "until"]) {
      if (params.get(key)) tokens.push(`${key}:${isoToInput(params.get(key))}`);
    }
  }
  if (params.get("q")) tokens.push(params.get("q"));
  return tokens.join(" ");
}

// Apply the box's key:value tokens the user changed since the box was last filled.
function applyQueryTokens(params, text) {
  const typed = parseQuery(text);
  const before = parseQuery(state.renderedQuery || "").filters;
  for (const key of QUERY_KEYS) {
    const now = typed.filters[key];
    if (now === before[key]) continue; // untouched in the box: the filter panel decides
    if (key === "since" || key === "until") {
      if (!now) {
        if (key === "since" && params.get("range") !== "custom") params.delete("range");
        params.delete(key);
      } else if (key === "since" && rangeMs(now)) {
        params.set("range", now);
        params.delete("since");
        params.delete("until");
      } else {
        const iso = inputToIso(now.length === 10 ? `${now}T00:00:00` : now);
        if (!iso) throw new Error(`${key}: expects a time like 7d, 24h or 2026-03-01, got ${now}`);
        if (params.get("range") && params.get("range") !== "custom") {
          params.delete("range");
        }
        params.set("range", "custom");
        params.set(key, iso);
      }
    } else if (!now) {
      params.delete(key);
    } else {
      params.set(key, key === "crud" ? (CRUD_WORDS[now] || now) : now);
    }
  }
  if (typed.words.length) params.set("q", typed.words.join(" "));
  return params;
}

// ---- suggestions from the tenant's data (GET /v1/suggestions)
const SUGGEST_KEYS = { action: "actions", actor: "actors", target_type: "target_types" };
const FIXED_SUGGESTIONS = { outcome: ["success", "failure", "denied"], crud: ["create", "read", "update", "delete"], since: ["15m", "1h", "24h", "7d", "30d"] };
let suggestionsFor = null;
let suggestionsData = { actions: [], actors: [], target_types: [] };

let targetTemplates = {};

// The application's own page for a target, from the tenant's URL template.
function appUrl(t) {
  const template = targetTemplates[t.type];
  if (!template) return null;
  const url = template
    .replaceAll("{id}", encodeURIComponent(t.id))
    .replaceAll("{type}", encodeURIComponent(t.type))
    .replaceAll("{tenant}", encodeURIComponent(state.tenant || ""));
  return /^https?:\/\//.test(url) ? url : null;
}

async function loadTargetLinks() {
  try {
    const body = await (await api("/v1/target-links")).json();
    targetTemplates = body.templates || {};
    // Rows already drawn get their links now.
    for (const [i, e] of state.search.events.entries()) {
      const cell = document.querySelector(`#results-body tr[data-index="${i}"] .col-targets`);
      if (cell && !e.erased) cell.replaceChildren(...targetLinks(e.targets).flat());
    }
  } catch (err) {
    targetTemplates = {};
  }
}

async function loadSuggestions() {
  if (suggestionsFor === state.tenant) return;
  suggestionsFor = state.tenant;
  targetTemplates = {};
  loadTargetLinks();
  try {
    const body = await (await api("/v1/suggestions")).json();
    if (suggestionsFor !== state.tenant) return;
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
  return applyQueryTokens(params, form.elements.q.value);
}

function paramsToForm(params) {
  const form = $("search-form");
  for (const name of FILTERS) form.elements[name].value = params.get(name) || "";
  const range = params.get("range") || "";
  if (range && ![...form.elements.range.options].some((o) => o.value === range)) {
    form.elements.range.add(h("option", { value: range }, `Last ${range}`), form.elements.range.options.length - 1);
  }
  form.elements.range.value = range;
  state.renderedQuery = queryText(params);
  form.elements.q.value = state.renderedQuery;
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

function showSearch(params) {
  showView("search");
  loadSuggestions();
  for (const el of document.querySelectorAll(".tz-hint")) el.textContent = tzLabel();
  const key = `${params.toString()}|${state.tenant}|${state.utc}`;
  if (key === state.search.key) return; // back from a history: keep results and scroll
  paramsToForm(params);
  state.search = { key, params, filters: apiFilters(params), events: [], next: null, loading: false, generation: state.search.generation + 1, done: false };
  $("results-body").replaceChildren();
  $("histogram-wrap").hidden = true;
  $("load-more").hidden = true;
  showAlert("search-error", "");
  loadResults();
}

async function loadResults() {
  const s = state.search;
  if (s.loading || s.done) return;
  s.loading = true;
  const generation = s.generation;
  $("load-more").disabled = true;
  $("results-status").textContent = s.events.length ? `Showing ${s.events.length} events · loading more…` : "Searching…";
  try {
    // Erased events stay in place as tombstones (the export leaves them out).
    const resp = await api("/v1/events", { ...s.filters, include_erased: "true", limit: PAGE_SIZE, cursor: s.next });
    const body = await resp.json();
    if (generation !== state.search.generation) return; // a newer search replaced this one
    const start = s.events.length;
    if (start === 0) loadHistogram(s.filters, generation);
    s.events.push(...body.data);
    s.next = body.next_cursor;
    s.done = !body.next_cursor;
    appendRows(body.data, start);
    const n = s.events.length;
    $("results-status").textContent = n === 0
      ? emptyText()
      : s.done ? `${n} matching event${n === 1 ? "" : "s"}, all shown.` : `Showing ${n} events · scroll for more.`;
    $("load-more").hidden = s.done;
    if (state.revealResults) {
      state.revealResults = false;
      revealResults();
    }
  } catch (err) {
    if (err instanceof SignedOut) return;
    if (generation === state.search.generation) {
      showAlert("search-error", errorText(err));
      $("results-status").textContent = "";
    }
  } finally {
    if (generation === state.search.generation) {
      s.loading = false;
      $("load-more").disabled = false;
      if (!s.done && s.events.length && nearViewport($("sentinel"))) loadResults();
    }
  }
}

// ---- volume over time above the results; dragging across it narrows the range
async function loadHistogram(filters, generation) {
  try {
    const body = await (await api("/v1/histogram", { ...filters, include_erased: "true", buckets: 60 })).json();
    if (generation !== state.search.generation) return;
    state.histogram = body;
    renderHistogram(body);
  } catch (err) {
    if (!(err instanceof SignedOut)) $("histogram-wrap").hidden = true;
  }
}

function renderHistogram(b) {
  const wrap = $("histogram-wrap");
  wrap.hidden = !b.counts || b.total === 0;
  if (wrap.hidden) return;
  const max = Math.max(...b.counts);
  const start = new Date(b.since).getTime();
  const bars = b.counts.map((n, i) => {
    const from = new Date(start + i * b.bucket_seconds * 1000).toISOString();
    const bar = h("div", { class: n ? "bar" : "bar empty", title: `${n} event${n === 1 ? "" : "s"} from ${exactTitle(from)}` });
    bar.style.height = n ? `${Math.max(6, (n / max) * 100)}%` : "1px"; // CSSOM: allowed by the CSP
    return bar;
  });
  const chart = $("histogram");
  chart.replaceChildren(...bars, h("div", { class: "hist-selection", id: "hist-selection", hidden: true }));
  chart.setAttribute("aria-label", `${b.total} events between ${fmtTime(b.since)} and ${fmtTime(b.until)} ${tzLabel()}; drag across the chart to zoom into a period`);
  $("hist-from").textContent = fmtTime(b.since);
  $("hist-to").textContent = `${fmtTime(b.until)} ${tzLabel()}`;
  $("hist-total").textContent = `${b.total} event${b.total === 1 ? "" : "s"}${b.truncated ? " (first 200,000 counted)" : ""} · drag to zoom`;
}

let histDrag = null;

function histX(event) {
  const rect = $("histogram").getBoundingClientRect();
  return Math.min(Math.max(event.clientX - rect.left, 0), rect.width);
}

function onHistDown(event) {
  if (!state.histogram || !state.histogram.total) return;
  event.preventDefault();
  $("histogram").setPointerCapture(event.pointerId);
  histDrag = { x0: histX(event) };
  onHistMove(event);
}

function onHistMove(event) {
  if (!histDrag) return;
  const x = histX(event);
  const sel = $("hist-selection");
  sel.hidden = false;
  sel.style.left = `${Math.min(histDrag.x0, x)}px`;
  sel.style.width = `${Math.abs(x - histDrag.x0)}px`;
}

function onHistUp(event) {
  if (!histDrag) return;
  const b = state.histogram;
  const width = $("histogram").getBoundingClientRect().width;
  let x0 = Math.min(histDrag.x0, histX(event));
  let x1 = Math.max(histDrag.x0, histX(event));
  histDrag = null;
  if (x1 - x0 < 3) { // a click: that one bar
    const i = Math.min(Math.floor((x0 / width) * b.counts.length), b.counts.length - 1);
    x0 = (i / b.counts.length) * width;
    x1 = ((i + 1) / b.counts.length) * width;
  }
  const start = new Date(b.since).getTime();
  const span = new Date(b.until).getTime() - start;
  const since = new Date(Math.floor((start + (x0 / width) * span) / 1000) * 1000);
  const until = new Date(Math.ceil((start + (x1 / width) * span) / 1000) * 1000);
  const params = new URLSearchParams(state.search.params || "");
  params.set("range", "custom");
  params.set("since", since.toISOString());
  params.set("until", until.toISOString());
  window.location.hash = `#/search?${params}`;
}

// Filters narrowed nothing down, or the tenant has nothing yet: say which.
function isFiltered() {
  const f = state.search.filters || {};
  return Object.keys(f).some((k) => k !== "order");
}

function emptyText() {
  return isFiltered()
    ? "No events match these filters."
    : `No events yet in tenant ${state.tenant || "?"}: nothing has been recorded for it.`;
}

// After "Apply filters" the results may sit below the fold (a narrow window,
// the filters on top): bring their first row into view.
function revealResults() {
  const area = $("results-status");
  const rect = area.getBoundingClientRect();
  if (rect.top < 0 || rect.bottom > window.innerHeight) area.scrollIntoView({ block: "start" });
}

function nearViewport(el) {
  const rect = el.getBoundingClientRect();
  return rect.top < window.innerHeight + 400 && !el.closest("[hidden]");
}

function targetLinks(targets) {
  return (targets || []).map((t) => {
    if (t.type === CONTROL_TARGET) {
      return h("a", { class: "target-link event-link", href: eventHref(t.id), title: `Open event ${t.id}` },
        h("span", { class: "t-type" }, "event "), t.id);
    }
    const chip = h("a",
      { class: "target-link", href: historyHref(t.type, t.id), title: `History of ${t.type} ${t.id}${t.name ? ` (${t.name})` : ""}` },
      h("span", { class: "t-type" }, `${t.type} `),
      t.name || t.id);
    const url = appUrl(t);
    if (!url) return chip;
    return [chip, h("a", {
      class: "app-link", href: url, target: "_blank", rel: "noopener noreferrer",
      title: `Open ${t.type} ${t.id} in the application`, "aria-label": `Open ${t.type} ${t.id} in the application`,
    }, "↗")];
  });
}

function outcomeBadge(outcome) {
  const o = outcome || "success";
  return h("span", { class: `badge ${o}` }, o);
}

function corrected(e) {
  return Array.isArray(e.corrections) && e.corrections.length > 0;
}

// Badges for what happened to an event after it was recorded, and for control events.
function stateBadges(e) {
  const out = [];
  if (e.erased) {
    const r = e.erased;
    out.push(h("span", { class: "badge erased", title: `Erased by ${r.by || "?"} at ${r.at || "?"}: ${r.reason || ""}` }, "erased"));
  }
  if (corrected(e)) {
    const last = e.corrections[e.corrections.length - 1];
    out.push(h("span", { class: "badge corrected", title: `Corrected by ${last.by || "?"} at ${last.at || "?"}: ${last.reason || ""}` },
      e.corrections.length > 1 ? `corrected ×${e.corrections.length}` : "corrected"));
  }
  if (e.action === CORRECTED_ACTION) out.push(h("span", { class: "badge control" }, "correction"));
  if (e.action === ERASED_ACTION) out.push(h("span", { class: "badge control" }, "erasure"));
  if (state.chain.firstBadId && e.id === state.chain.firstBadId) {
    out.push(h("span", { class: "badge tampered", title: state.chain.why }, "fails verification"));
  }
  return out;
}

// Mark the event that breaks the chain wherever it is already shown.
function markTampered() {
  const id = state.chain.firstBadId;
  if (!id) return;
  state.search.events.forEach((e, i) => {
    if (e.id !== id) return;
    const row = document.querySelector(`#results-body tr[data-index="${i}"]`);
    if (row && !row.querySelector(".badge.tampered")) {
      row.classList.add("tampered");
      row.querySelector(".col-action").append(" ", ...stateBadges(e).filter((b) => b.classList.contains("tampered")));
    }
  });
}

function appendRows(events, start) {
  const body = $("results-body");
  const rows = events.map((e, i) => {
    const actor = e.actor || {};
    const badges = stateBadges(e);
    const classes = [e.erased ? "tombstone" : "", corrected(e) ? "corrected" : "", e.id === state.chain.firstBadId ? "tampered" : ""];
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

function onResultsKey(event) {
  const row = event.target.closest("tr[data-index]");
  if (!row || event.target !== row) return;
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    goToEvent(state.search.events[Number(row.dataset.index)].id);
  } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    event.preventDefault();
    const next = event.key === "ArrowDown" ? row.nextElementSibling : row.previousElementSibling;
    if (next) next.focus();
    else if (event.key === "ArrowDown" && !state.search.done) loadResults();
  }
}

function onResultsClick(event) {
  if (event.target.closest("a, button")) return;
  const row = event.target.closest("tr[data-index]");
  if (row) goToEvent(state.search.events[Number(row.dataset.index)].id);
}

// Opening an event is navigating to its own URL (#/event/<id>): shareable, and
// the browser's back button closes it.
function goToEvent(id) {
  window.location.hash = eventHref(id);
}

// ---------------------------------------------------------------- export

async function exportAs(format, button) {
  const label = format.toUpperCase();
  button.disabled = true;
  toast(`Exporting ${label}…`, true);
  try {
    const resp = await api("/v1/events/export", { ...state.search.filters, format }, { accept: "*/*" });
    const reader = resp.body.getReader();
    const chunks = [];
    let received = 0;
    let shown = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      received += value.length;
      if (received - shown > 256 * 1024) {
        shown = received;
        toast(`Exporting ${label}… ${fmtBytes(received)}`, true);
      }
    }
    const disposition = resp.headers.get("Content-Disposition") || "";
    const match = /filename="([^"]+)"/.exec(disposition);
    const filename = match ? match[1] : `auditstream-export.${format}`;
    const blob = new Blob(chunks, { type: resp.headers.get("Content-Type") || "application/octet-stream" });
    const url = URL.createObjectURL(blob);
    const link = h("a", { href: url, download: filename, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    toast(`Exported ${fmtBytes(received)} as ${filename}`);
  } catch (err) {
    if (!(err instanceof SignedOut)) toast(`Export failed: ${errorText(err)}`);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- JSON and event dialog

function jsonNodes(value, indent = 0, out = []) {
  const padding = "  ".repeat(indent);
  if (Array.isArray(value)) {
    if (!value.length) { out.push("[]"); return out; }
    out.push("[\n");
    value.forEach((item, i) => {
      out.push(`${padding}  `);
      jsonNodes(item, indent + 1, out);
      out.push(i < value.length - 1 ? ",\n" : "\n");
    });
    out.push(`${padding}]`);
  } else if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (!keys.length) { out.push("{}"); return out; }
    out.push("{\n");
    keys.forEach((key, i) => {
      out.push(`${padding}  `, h("span", { class: "k" }, JSON.stringify(key)), ": ");
      jsonNodes(value[key], indent + 1, out);
      out.push(i < keys.length - 1 ? ",\n" : "\n");
    });
    out.push(`${padding}}`);
  } else if (typeof value === "string") {
    out.push(h("span", { class: "s" }, JSON.stringify(value)));
  } else if (typeof value === "number") {
    out.push(h("span", { class: "n" }, String(value)));
  } else {
    out.push(h("span", { class: "l" }, String(value)));
  }
  return out;
}

function changesTable(changes, tableEl) {
  const rows = Object.entries(changes || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([field, change]) => h(
    "tr",
    {},
    h("th", { scope: "row" }, h("mark", { class: "field-name" }, field)),
    h("td", {}, "old" in change && change.old !== null ? h("del", { class: "old" }, fmtValue(change.old)) : h("span", { class: "help" }, fmtValue(change.old ?? undefined))),
    h("td", {}, "new" in change && change.new !== null ? h("ins", { class: "new" }, fmtValue(change.new)) : h("span", { class: "help" }, change.new === null ? "null" : "—")),
  ));
  const table = tableEl || h("table", { class: "changes" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Field"), h("th", { scope: "col" }, "Before"), h("th", { scope: "col" }, "After"))),
    h("tbody"));
  table.tBodies[0].replaceChildren(...rows);
  return table;
}

// The row of the event shown in the panel.
function markSelected(id) {
  for (const r of document.querySelectorAll("#results-body tr.selected")) r.classList.remove("selected");
  if (!id) return;
  const row = document.querySelector(`#results-body tr[data-id="${CSS.escape(id)}"]`);
  if (row) row.classList.add("selected");
}

function eventLink(id, label) {
  return h("a", { href: eventHref(id), class: "event-link" }, label || id);
}

// Who changed the event after it was recorded, when and why (newest last).
function lifecycleNotes(e) {
  const out = [];
  if (state.chain.firstBadId === e.id) {
    out.push(h("div", { class: "alert tampered-note", role: "alert" },
      h("strong", {}, "This event fails chain verification"),
      ` (seq ${state.chain.firstBadSeq ?? e.seq ?? "?"}): ${state.chain.why.replace(/[.!]?$/, ".")} `,
      "Its stored content is not what was sealed into the chain: it was altered or a neighbour is missing."));
  }
  if (e.erased) {
    const r = e.erased;
    out.push(h("div", { class: "note erased-note" },
      h("strong", {}, "Erased"), ` by ${r.by || "?"} at `, timeEl(r.at), `: ${r.reason || "no reason given"}. `,
      "Its payload is gone; its place in the chain (seq, hashes) stays. ",
      r.event_id ? eventLink(r.event_id, "Open the erasure") : null));
  }
  for (const c of corrected(e) ? e.corrections : []) {
    const fields = Object.keys(c.set || {}).sort();
    out.push(h("div", { class: "note corrected-note" },
      h("strong", {}, "Corrected"), ` by ${c.by || "?"} at `, timeEl(c.at), `: ${c.reason || "no reason given"}. `,
      fields.length ? ["Fields set: ", fields.map((f, i) => [i ? ", " : "", h("code", {}, f)]), ". "] : null,
      c.event_id ? eventLink(c.event_id, "Open the correction") : null));
  }
  return out;
}

function renderEvent(e) {
  $("event-title").textContent = e.erased
    ? `Erased event · ${e.action} · ${fmtTime(e.occurred_at)}`
    : `${e.action} · ${fmtTime(e.occurred_at)}`;
  $("event-permalink").href = eventHref(e.id);
  markSelected(e.id);
  $("event-notes").replaceChildren(...lifecycleNotes(e));
  const actor = e.actor || {};
  const src = e.source || {};
  const ctx = e.context || {};
  const items = [
    ["Event id", [h("code", {}, e.id), " ", stateBadges(e)]],
    ["When", [timeEl(e.occurred_at), e.received_at ? h("span", { class: "help" }, ` · received ${fmtTime(e.received_at)}`) : null]],
    ["Actor", actor.id ? `${actor.name ? `${actor.name} (${actor.id})` : actor.id} · ${actor.type || "user"}` : "—"],
    ...(controlTargetOf(e) ? [[e.action === ERASED_ACTION ? "Erased event" : "Corrected event", eventLink(controlTargetOf(e))]] : []),
    ["Targets", e.targets && e.targets.length ? targetLinks(e.targets) : "—"],
    ["Outcome", [outcomeBadge(e.outcome), e.crud ? [" ", h("span", { class: "badge crud" }, CRUD[e.crud] || e.crud)] : null]],
    ["Description", e.description || "—"],
    ["Source", src.service ? [src.service, src.component, src.version].filter(Boolean).join(" · ") : "—"],
    ["Context", Object.keys(ctx).length ? Object.entries(ctx).map(([k, v]) => `${k}=${v}`).join("  ") : "—"],
  ];
  if (e.seq !== undefined) items.push(["Chain", `seq ${e.seq}${e.hash ? ` · ${e.hash.slice(0, 16)}…` : ""}`]);
  $("event-summary").replaceChildren(...items.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  const hasChanges = e.changes && Object.keys(e.changes).length;
  $("event-changes-wrap").hidden = !hasChanges;
  if (hasChanges) changesTable(e.changes, $("event-changes"));
  $("event-json").replaceChildren(...jsonNodes(e));
  $("event-dialog").dataset.json = JSON.stringify(e, null, 2);
}

function controlTargetOf(e) {
  if (e.action !== CORRECTED_ACTION && e.action !== ERASED_ACTION) return null;
  const t = (e.targets || []).find((x) => x.type === CONTROL_TARGET);
  return t ? t.id : null;
}

// An erased event reads 410 with who, when and why: its tombstone.
function tombstoneOf(id, err, known) {
  const erased = err && err.body && err.body.erased;
  if (!erased) return null;
  return { ...(known || {}), id, erased };
}

async function openEvent(e) {
  if (!e) return;
  renderEvent(e);
  const dialog = $("event-dialog");
  if (!dialog.open) {
    // Wide screens: a side panel beside the list (which stays visible and usable);
    // narrow screens: a modal dialog.
    const side = SIDE_PANEL.matches && document.body.dataset.view === "search";
    dialog.classList.toggle("side", side);
    document.body.classList.toggle("panel-open", side);
    if (side) dialog.show();
    else dialog.showModal();
  }
  $("event-close").focus();
  try {
    // The stored event may have changed since the list was read (a redaction, a correction).
    const fresh = await (await api(`/v1/events/${encodeURIComponent(e.id)}`)).json();
    if (dialog.open && fresh.id === e.id) renderEvent(fresh);
  } catch (err) {
    if (err instanceof SignedOut) return;
    const tomb = err.status === 410 ? tombstoneOf(e.id, err, e) : null;
    if (tomb && dialog.open) renderEvent(tomb);
    else if (err.status === 404) toast("This event is no longer available.");
  }
}

// ---------------------------------------------------------------- history

function ceilToMinute(date) {
  return new Date(Math.ceil(date.getTime() / 60e3) * 60e3);
}

function showHistory(type, id, params) {
  showView("history");
  for (const el of document.querySelectorAll(".tz-hint")) el.textContent = tzLabel();
  const order = params.get("order") === "desc" ? "desc" : "asc";
  const asOf = params.get("as_of") || "";
  const key = `${type}\u0000${id}\u0000${order}\u0000${state.tenant}\u0000${state.utc}`;
  // The object's name (from its events) stays when only as_of or the view changes.
  const name = key === state.history.key ? state.history.name : null;
  $("history-title").replaceChildren("History of ", h("span", { class: "mono" }, `${type} ${id}`), name ? ` · ${name}` : "");
  document.title = `${type} ${id} · history · auditstream`;
  $("history-order").value = order;
  $("asof").value = isoToInput(asOf);
  if (key !== state.history.key) {
    state.history = { key, type, id, order, name: null, events: [], next: null, loading: false, done: false, generation: state.history.generation + 1 };
    $("timeline").replaceChildren();
    showAlert("history-error", "");
    loadHistory();
    $("history-title").focus(); // a new page for screen readers: start at its heading
  }
  loadState(type, id, asOf);
}

async function loadHistory() {
  const s = state.history;
  if (s.loading || s.done) return;
  s.loading = true;
  const generation = s.generation;
  $("history-status").textContent = "Loading…";
  try {
    const path = `/v1/targets/${encodeURIComponent(s.type)}/${encodeURIComponent(s.id)}/history`;
    const resp = await api(path, { order: s.order, limit: PAGE_SIZE, cursor: s.next });
    const body = await resp.json();
    if (generation !== state.history.generation) return;
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
    if (named) s.name = named.name;
    if (named) $("history-title").replaceChildren("History of ", h("span", { class: "mono" }, `${s.type} ${s.id}`), ` · ${named.name}`);
  } catch (err) {
    if (err instanceof SignedOut) return;
    if (generation === state.history.generation) {
      showAlert("history-error", errorText(err));
      $("history-status").textContent = "";
    }
  } finally {
    if (generation === state.history.generation) {
      s.loading = false;
      if (!s.done && s.events.length && nearViewport($("history-sentinel"))) loadHistory();
    }
  }
}

function timelineItem(e) {
  const actor = e.actor || {};
  const changes = e.changes && Object.keys(e.changes).length ? changesTable(e.changes) : h("p", { class: "nochange" }, "No field changes recorded.");
  const index = state.history.events.indexOf(e);
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
  window.location.hash = historyHref(state.history.type, state.history.id, params);
}

async function openEventById(id) {
  const known = [...state.history.events, ...state.search.events].find((e) => e.id === id);
  if (known) return openEvent(known);
  try {
    openEvent(await (await api(`/v1/events/${encodeURIComponent(id)}`)).json());
  } catch (err) {
    if (err instanceof SignedOut) return;
    const tomb = err.status === 410 ? tombstoneOf(id, err, null) : null;
    if (tomb) openEvent(tomb);
    else toast(errorText(err));
  }
}

// ---------------------------------------------------------------- wiring

function observe(sentinelId, load) {
  if (!("IntersectionObserver" in window)) return;
  new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting)) load();
  }, { rootMargin: "400px 0px" }).observe($(sentinelId));
}

function init() {
  $("password-form").addEventListener("submit", signInWithPassword);
  $("token-form").addEventListener("submit", signInWithToken);
  $("sign-out").addEventListener("click", () => { signOut("You signed out."); window.location.hash = ""; });
  $("chain").addEventListener("click", checkChain);
  $("tenant-select").addEventListener("change", (e) => setTenant(e.target.value));
  $("tenant-input").addEventListener("change", (e) => setTenant(e.target.value));
  const utc = $("utc");
  utc.checked = state.utc;
  utc.addEventListener("change", () => {
    state.utc = utc.checked;
    localStorage.setItem(UTC_KEY, state.utc ? "1" : "0");
    state.search.key = null;
    state.history.key = null;
    route();
  });

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
      state.search.key = null;
      route();
    } else {
      window.location.hash = hash;
    }
    if (fromPanel) state.revealResults = true;
  });
  $("f-range").addEventListener("change", syncRange);
  $("f-q").addEventListener("input", suggestQuery);
  $("histogram").addEventListener("pointerdown", onHistDown);
  $("histogram").addEventListener("pointermove", onHistMove);
  $("histogram").addEventListener("pointerup", onHistUp);
  $("reset").addEventListener("click", () => { window.location.hash = "#/search"; });
  $("results-body").addEventListener("keydown", onResultsKey);
  $("results-body").addEventListener("click", onResultsClick);
  $("load-more").addEventListener("click", loadResults);
  for (const id of ["export-csv", "export-ndjson"]) {
    const button = $(id);
    button.addEventListener("click", () => exportAs(button.dataset.format, button));
  }

  $("back-to-search").addEventListener("click", (event) => {
    event.preventDefault();
    const p = state.search.params;
    window.location.hash = `#/search${p && p.toString() ? `?${p}` : ""}`;
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
    if (button.dataset.open !== undefined) goToEvent(state.history.events[Number(button.dataset.open)].id);
    if (button.dataset.asof) setHistoryParams({ as_of: button.dataset.asof });
  });
  $("state-body").addEventListener("click", (event) => {
    const link = event.target.closest("a[data-event]");
    if (!link) return;
    event.preventDefault();
    goToEvent(link.dataset.event);
  });

  const dialog = $("event-dialog");
  $("event-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    document.body.classList.remove("panel-open");
    markSelected(null);
    // Back to the view under the dialog; the event's entry is replaced, so the
    // back button does not reopen it.
    if (parseHash().parts[0] === "event") window.location.replace(state.lastViewHash);
  });
  $("event-copy-link").addEventListener("click", async () => {
    const url = new URL($("event-permalink").getAttribute("href"), window.location.href).href;
    try {
      await navigator.clipboard.writeText(url);
      toast("Link to this event copied.");
    } catch {
      toast(`Copying is not allowed here: ${url}`);
    }
  });
  dialog.addEventListener("click", (event) => { if (event.target === dialog) dialog.close(); });
  dialog.addEventListener("click", (event) => {
    if (event.target.closest("a.target-link")) dialog.close();
  });
  $("event-copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(dialog.dataset.json || "");
      toast("Event JSON copied.");
    } catch {
      toast("Copying is not allowed here; select the JSON and copy it.");
    }
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

  if (window.matchMedia("(max-width: 820px)").matches) $("filters").open = false;
  observe("sentinel", () => { if (document.body.dataset.view === "search" && state.search.events.length) loadResults(); });
  observe("history-sentinel", () => { if (document.body.dataset.view === "history" && state.history.events.length) loadHistory(); });
  window.addEventListener("hashchange", route);

  if (session) session.addEventListener("message", onSessionMessage);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    try {
      useToken(saved, { persist: false });
    } catch (err) {
      signOut(err.message);
    }
    route();
    return;
  }
  // A new tab: an open, signed-in tab of this viewer may hand its session over.
  document.body.dataset.view = "starting";
  askOtherTabs().then((msg) => {
    if (msg && !state.token) {
      try {
        if (msg.tenant) localStorage.setItem(TENANT_KEY, msg.tenant);
        useToken(msg.token);
      } catch (err) {
        showAlert("signin-error", err.message || String(err));
      }
    }
    route();
  });
}

init();
