// Export CSV / NDJSON of the current search (all pages): fetched with the bearer
// token, held in memory, then saved through a temporary download link.

import { h, toast } from "./dom.js";
import { api, errorText, SignedOut } from "./api.js";
import { fmtBytes } from "./format.js";

export async function exportAs(format, button, filters) {
  const label = format.toUpperCase();
  button.disabled = true;
  toast(`Exporting ${label}…`, true);
  try {
    const resp = await api("/v1/events/export", { ...filters, format }, { accept: "*/*" });
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
