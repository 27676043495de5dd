// Times and values as the page shows them: local time or UTC (the top bar's
// switch), the zone named in every tooltip, relative times within 30 days.

import { h } from "./dom.js";

const UTC_KEY = "auditstream.utc";

export const prefs = { utc: localStorage.getItem(UTC_KEY) === "1" };

export function setUtc(on) {
  prefs.utc = on;
  localStorage.setItem(UTC_KEY, on ? "1" : "0");
}

function pad(n, w = 2) { return String(n).padStart(w, "0"); }

export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  if (prefs.utc) return `${iso.slice(0, 10)} ${iso.slice(11, 19)}`;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function zoneName() {
  if (prefs.utc) return "UTC";
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
  } catch {
    return "local time";
  }
}

// The exact time, in the zone shown, named: the tooltip of every time.
export function exactTitle(iso) {
  return `${fmtTime(iso)} ${zoneName()} · ${iso}`;
}

export function timeEl(iso) {
  return h("time", { datetime: iso, title: exactTitle(iso) }, fmtTime(iso));
}

const RELATIVE = typeof Intl.RelativeTimeFormat === "function" ? new Intl.RelativeTimeFormat("en", { numeric: "auto" }) : null;

// "5 minutes ago", "yesterday", "3 days ago" (within 30 days), else nothing.
export function relTime(iso) {
  const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
  if (!RELATIVE || Number.isNaN(seconds) || Math.abs(seconds) > 30 * 86400) return "";
  const abs = Math.abs(seconds);
  if (abs < 45) return "just now";
  if (abs < 3600) return RELATIVE.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return RELATIVE.format(Math.round(seconds / 3600), "hour");
  return RELATIVE.format(Math.round(seconds / 86400), "day");
}

export function relTimeEl(iso) {
  const text = relTime(iso);
  return text ? h("span", { class: "rel-time", title: exactTitle(iso) }, text) : null;
}

// datetime-local value <-> RFC 3339, in local time or UTC as the switch says.
export function inputToIso(value) {
  if (!value) return "";
  const d = new Date(prefs.utc ? `${value}Z` : value);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

export function isoToInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  if (prefs.utc) return d.toISOString().slice(0, 19);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function tzLabel() { return `(${zoneName()})`; }

export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function fmtValue(value) {
  if (value === undefined) return "—";
  if (typeof value === "string") return value;
  return JSON.stringify(value);
}

// 42 -> "42 s", 3700 -> "1 h 1 min": a duration for people.
export function fmtSeconds(seconds) {
  const s = Math.round(Number(seconds) || 0);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ""}`;
  if (s < 86400) return `${Math.floor(s / 3600)} h${Math.floor((s % 3600) / 60) ? ` ${Math.floor((s % 3600) / 60)} min` : ""}`;
  return `${Math.floor(s / 86400)} d${Math.floor((s % 86400) / 3600) ? ` ${Math.floor((s % 86400) / 3600)} h` : ""}`;
}
