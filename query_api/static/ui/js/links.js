// The page's own URLs (the hash): #/search?…, #/history/<type>/<id>?…,
// #/event/<id>[?tenant=…], #/streams.

import { session } from "./session.js";

export function parseHash(hash = window.location.hash) {
  const raw = hash.replace(/^#/, "") || "/search";
  const q = raw.indexOf("?");
  const path = q < 0 ? raw : raw.slice(0, q);
  const params = new URLSearchParams(q < 0 ? "" : raw.slice(q + 1));
  const parts = path.split("/").filter(Boolean).map((p) => decodeURIComponent(p));
  return { parts, params };
}

export function eventHref(id) {
  const base = `#/event/${encodeURIComponent(id)}`;
  return session.tenants !== null && session.tenant ? `${base}?tenant=${encodeURIComponent(session.tenant)}` : base;
}

export function historyHref(type, id, params) {
  const base = `#/history/${encodeURIComponent(type)}/${encodeURIComponent(id)}`;
  const qs = params ? params.toString() : "";
  return qs ? `${base}?${qs}` : base;
}

// Opening an event is navigating to its own URL (#/event/<id>): shareable, and
// the browser's back button closes it.
export function goToEvent(id) {
  window.location.hash = eventHref(id);
}
