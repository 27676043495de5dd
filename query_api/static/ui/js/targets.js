// Target chips: each opens the object's history; with the tenant's URL template
// (GET /v1/target-links) a ↗ link opens the object in the application.

import { h } from "./dom.js";
import { api } from "./api.js";
import { session } from "./session.js";
import { eventHref, historyHref } from "./links.js";

export const CONTROL_TARGET = "audit_event";

let templates = {};

// The tenant's templates, replacing the previous tenant's (none on failure).
export async function loadTemplates() {
  templates = {};
  try {
    const body = await (await api("/v1/target-links")).json();
    templates = body.templates || {};
  } catch {
    templates = {};
  }
}

// The application's own page for a target, from the tenant's URL template.
function appUrl(t) {
  const template = templates[t.type];
  if (!template) return null;
  const url = template
    .replaceAll("{id}", encodeURIComponent(t.id))
    .replaceAll("{type}", encodeURIComponent(t.type))
    .replaceAll("{tenant}", encodeURIComponent(session.tenant || ""));
  return /^https?:\/\//.test(url) ? url : null;
}

export function targetLinks(targets) {
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
