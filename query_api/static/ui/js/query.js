// The search box's query syntax, as GitHub's audit log:
//   actor:alice action:invoice.* outcome:failure since:7d "free words"
// key:value tokens are filters; everything else is free text (q).

import { inputToIso, isoToInput } from "./format.js";

export const QUERY_KEYS = ["action", "actor", "actor_type", "target_type", "target_id", "source", "outcome", "crud", "since", "until"];
const RANGES = { "15m": 15 * 60e3, "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
const CRUD_WORDS = { create: "c", read: "r", update: "u", delete: "d" };

// "7d" -> milliseconds; null for anything else.
export function rangeMs(range) {
  if (RANGES[range]) return RANGES[range];
  const m = /^(\d+)([mhdw])$/.exec(range || "");
  if (!m) return null;
  return Number(m[1]) * { m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3 }[m[2]];
}

export function parseQuery(text) {
  const filters = {};
  const words = [];
  for (const token of (text || "").match(/(?:[^\s"]+|"[^"]*")+/g) || []) {
    const m = /^([a-z_]+):(.+)$/.exec(token);
    if (m && QUERY_KEYS.includes(m[1])) filters[m[1]] = m[2].replace(/"/g, "");
    else words.push(token.replace(/"/g, ""));
  }
  return { filters, words };
}

export function quoteToken(value) {
  return /[\s"]/.test(value) ? `"${value.replace(/"/g, "")}"` : value;
}

// The box's text for the URL's parameters: filters as tokens, then the words.
export function queryText(params) {
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

// Apply the box's key:value tokens the user changed since the box was last
// filled (`rendered`, its text then): untouched tokens leave the panel's value.
export function applyQueryTokens(params, text, rendered) {
  const typed = parseQuery(text);
  const before = parseQuery(rendered || "").filters;
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
