// The session: the token (in memory and this tab's sessionStorage, never
// localStorage or a cookie), its claims, the tenant being read; sign-in, sign-out,
// the tenant picker and the hand-over of a session to new tabs.
//
// Other modules learn of changes from `events`: "signed-in", "tenant" (detail:
// {reroute}) and "signed-out".

import { $, h, showAlert, showView, toast } from "./dom.js";
import { api, connect, errorText, problemDetail, SignedOut } from "./api.js";

const TOKEN_KEY = "auditstream.token";
const TENANT_KEY = "auditstream.tenant";
const CHANNEL = "auditstream.session";

export const session = {
  token: null,
  claims: null,
  tenants: null, // null: a single tenant fixed by the token; [] any tenant ("*"); else the list
  tenant: null,
};

export const events = new EventTarget();

function emit(type, detail = {}) {
  events.dispatchEvent(new CustomEvent(type, { detail }));
}

connect(() => session, (detail) => signOut(`You were signed out: ${detail}. Sign in again.`));

export function hasScope(scope) {
  const scopes = session.claims && typeof session.claims.scope === "string" ? session.claims.scope : "";
  return scopes.split(/\s+/).includes(scope);
}

// The tenant as a query parameter, for tokens that read several.
export function tenantQuery() {
  return session.tenants !== null && session.tenant ? `?tenant=${encodeURIComponent(session.tenant)}` : "";
}

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

export function useToken(token, { persist = true } = {}) {
  const claims = decodeClaims(token);
  if (typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) {
    throw new Error("This token has expired.");
  }
  session.token = token;
  session.claims = claims;
  if (persist) sessionStorage.setItem(TOKEN_KEY, token);
  const tenant = claims.tenant;
  if (typeof tenant === "string" && tenant !== "*") {
    session.tenants = null;
    session.tenant = tenant;
  } else {
    session.tenants = Array.isArray(tenant) ? tenant.map(String) : [];
    const saved = localStorage.getItem(TENANT_KEY);
    session.tenant = session.tenants.length
      ? (session.tenants.includes(saved) ? saved : session.tenants[0])
      : (saved || "");
  }
  renderSession();
  emit("signed-in");
  if (session.tenants !== null) loadTenants();
}

// The tenants a multi-tenant token may read (GET /v1/tenants), for the picker.
async function loadTenants() {
  try {
    const body = await (await api("/v1/tenants", {}, { tenantless: true })).json();
    const names = (body.data || []).map(String);
    if (body.all_tenants) {
      $("tenant-list").replaceChildren(...names.map((t) => h("option", { value: t })));
      if (!session.tenant && names.length) setTenant(names[0]);
    } else if (names.length) {
      session.tenants = names;
      if (!names.includes(session.tenant)) {
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
  const c = session.claims || {};
  const who = $("who");
  who.replaceChildren("Signed in as ", h("strong", { text: c.sub || "?" }));
  if (session.tenants === null) who.append(" · tenant ", h("strong", { text: session.tenant }));
  const scopes = typeof c.scope === "string" ? c.scope : "";
  who.title = `scopes: ${scopes || "none"}` + (c.exp ? ` · expires ${new Date(c.exp * 1000).toISOString()}` : "");
  $("nav-streams").hidden = !hasScope("events:admin");
  const pick = $("tenant-pick");
  const select = $("tenant-select");
  const input = $("tenant-input");
  pick.hidden = session.tenants === null;
  if (session.tenants && session.tenants.length) {
    select.hidden = false;
    input.hidden = true;
    select.replaceChildren(...session.tenants.map((t) => h("option", { value: t, selected: t === session.tenant }, t)));
  } else if (session.tenants) {
    select.hidden = true;
    input.hidden = false;
    input.value = session.tenant || "";
    input.placeholder = "tenant id";
  }
}

export function setTenant(tenant, { reroute = true } = {}) {
  session.tenant = tenant.trim();
  localStorage.setItem(TENANT_KEY, session.tenant);
  renderSession();
  emit("tenant", { reroute });
}

export function signOut(message, { broadcast = true } = {}) {
  if (broadcast && session.token && channel) channel.postMessage({ type: "signed-out" });
  sessionStorage.removeItem(TOKEN_KEY);
  session.token = null;
  session.claims = null;
  emit("signed-out");
  $("session").hidden = true;
  showAlert("signin-error", message || "");
  showView("signin");
}

// The submit handlers of the two sign-in forms: true once signed in.
export async function signInWithPassword(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const username = form.username.value.trim();
  const password = form.password.value;
  if (!username || !password) {
    showAlert("signin-error", "Enter your username and password.");
    (username ? form.password : form.username).focus();
    return false;
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
    return true;
  } catch (err) {
    showAlert("signin-error", err.message || String(err));
    return false;
  } finally {
    button.disabled = false;
  }
}

export function signInWithToken(event) {
  event.preventDefault();
  const field = event.currentTarget.token;
  const token = field.value.trim().replace(/^Bearer\s+/i, "");
  if (!token) {
    showAlert("signin-error", "Paste a token first.");
    field.focus();
    return false;
  }
  try {
    useToken(token);
    field.value = "";
    showAlert("signin-error", "");
    return true;
  } catch (err) {
    showAlert("signin-error", err.message || String(err));
    field.focus();
    return false;
  }
}

// Sessions across tabs. A new tab of the viewer (a middle-click on a target
// chip, a shared event link) asks the open tabs of this origin over a
// BroadcastChannel; a signed-in tab hands its token over. Signing out in one tab
// signs out all of them. Nothing outlives the last open tab.
const channel = "BroadcastChannel" in window ? new BroadcastChannel(CHANNEL) : null;
let waitingForHandoff = null;

function onChannelMessage(event) {
  const msg = event.data || {};
  if (msg.type === "ask" && session.token) {
    channel.postMessage({ type: "token", token: session.token, tenant: session.tenant });
  } else if (msg.type === "token" && waitingForHandoff && typeof msg.token === "string") {
    const done = waitingForHandoff;
    waitingForHandoff = null;
    done(msg);
  } else if (msg.type === "signed-out" && session.token) {
    signOut("You signed out in another tab.", { broadcast: false });
  }
}

function askOtherTabs(timeoutMs = 400) {
  if (!channel) return Promise.resolve(null);
  return new Promise((resolve) => {
    waitingForHandoff = resolve;
    channel.postMessage({ type: "ask" });
    setTimeout(() => {
      if (waitingForHandoff === resolve) {
        waitingForHandoff = null;
        resolve(null);
      }
    }, timeoutMs);
  });
}

// The session this tab starts with: its own saved token, else one handed over
// by an open tab, else none (the sign-in page). Resolves once decided.
export async function restore() {
  if (channel) channel.addEventListener("message", onChannelMessage);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    try {
      useToken(saved, { persist: false });
    } catch (err) {
      signOut(err.message);
    }
    return;
  }
  document.body.dataset.view = "starting";
  const msg = await askOtherTabs();
  if (msg && !session.token) {
    try {
      if (msg.tenant) localStorage.setItem(TENANT_KEY, msg.tenant);
      useToken(msg.token);
    } catch (err) {
      showAlert("signin-error", err.message || String(err));
    }
  }
}
