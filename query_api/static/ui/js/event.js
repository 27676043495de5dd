// One event: its badges (corrected, erased, control, fails verification), field
// changes, the full JSON, and the dialog at #/event/<id> (a side panel beside
// the list from 1100 px wide, a modal dialog below).

import { $, h, toast } from "./dom.js";
import { api, errorText, SignedOut } from "./api.js";
import { chain } from "./chain.js";
import { fmtTime, fmtValue, timeEl } from "./format.js";
import { eventHref } from "./links.js";
import { CONTROL_TARGET, targetLinks } from "./targets.js";

export const CRUD = { c: "create", r: "read", u: "update", d: "delete" };
const CORRECTED_ACTION = "auditstream.event.corrected";
const ERASED_ACTION = "auditstream.event.erased";
const SIDE_PANEL = window.matchMedia("(min-width: 1100px)");

export function outcomeBadge(outcome) {
  const o = outcome || "success";
  return h("span", { class: `badge ${o}` }, o);
}

export function corrected(e) {
  return Array.isArray(e.corrections) && e.corrections.length > 0;
}

// Badges for what happened to an event after it was recorded, and for control events.
export function stateBadges(e) {
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
  if (chain.firstBadId && e.id === chain.firstBadId) {
    out.push(h("span", { class: "badge tampered", title: chain.why }, "fails verification"));
  }
  return out;
}

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

export function changesTable(changes, tableEl) {
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
  if (chain.firstBadId === e.id) {
    out.push(h("div", { class: "alert tampered-note", role: "alert" },
      h("strong", {}, "This event fails chain verification"),
      ` (seq ${chain.firstBadSeq ?? e.seq ?? "?"}): ${chain.why.replace(/[.!]?$/, ".")} `,
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

function controlTargetOf(e) {
  if (e.action !== CORRECTED_ACTION && e.action !== ERASED_ACTION) return null;
  const t = (e.targets || []).find((x) => x.type === CONTROL_TARGET);
  return t ? t.id : null;
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

// The event with this id: one already loaded (`known`, from the list or the
// timeline) at once, else read from the API (an erased one as its tombstone).
export async function openEventById(id, known = []) {
  const loaded = known.find((e) => e.id === id);
  if (loaded) return openEvent(loaded);
  try {
    openEvent(await (await api(`/v1/events/${encodeURIComponent(id)}`)).json());
  } catch (err) {
    if (err instanceof SignedOut) return;
    const tomb = err.status === 410 ? tombstoneOf(id, err, null) : null;
    if (tomb) openEvent(tomb);
    else toast(errorText(err));
  }
}

// The dialog's own controls. onClosed(): back to the view under it.
export function wireDialog(onClosed) {
  const dialog = $("event-dialog");
  $("event-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    document.body.classList.remove("panel-open");
    markSelected(null);
    onClosed();
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
}
