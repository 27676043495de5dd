// Volume over time above the results (GET /v1/histogram, 60 buckets); dragging
// across it (or clicking one bar) narrows the search to that period.

import { $, h } from "./dom.js";
import { api, SignedOut } from "./api.js";
import { exactTitle, fmtTime, tzLabel } from "./format.js";

let shown = null; // the histogram drawn
let drag = null;

// isCurrent(): false once a newer search replaced the one asking.
export async function loadHistogram(filters, isCurrent) {
  try {
    const body = await (await api("/v1/histogram", { ...filters, include_erased: "true", buckets: 60 })).json();
    if (!isCurrent()) return;
    shown = body;
    render(body);
  } catch (err) {
    if (!(err instanceof SignedOut)) $("histogram-wrap").hidden = true;
  }
}

export function hideHistogram() {
  $("histogram-wrap").hidden = true;
}

function render(b) {
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

function chartX(event) {
  const rect = $("histogram").getBoundingClientRect();
  return Math.min(Math.max(event.clientX - rect.left, 0), rect.width);
}

function onMove(event) {
  if (!drag) return;
  const x = chartX(event);
  const sel = $("hist-selection");
  sel.hidden = false;
  sel.style.left = `${Math.min(drag.x0, x)}px`;
  sel.style.width = `${Math.abs(x - drag.x0)}px`;
}

// currentParams(): the search's URL parameters, which the selection narrows.
export function wireHistogram(currentParams) {
  const chart = $("histogram");
  chart.addEventListener("pointerdown", (event) => {
    if (!shown || !shown.total) return;
    event.preventDefault();
    chart.setPointerCapture(event.pointerId);
    drag = { x0: chartX(event) };
    onMove(event);
  });
  chart.addEventListener("pointermove", onMove);
  chart.addEventListener("pointerup", (event) => {
    if (!drag) return;
    const b = shown;
    const width = chart.getBoundingClientRect().width;
    let x0 = Math.min(drag.x0, chartX(event));
    let x1 = Math.max(drag.x0, chartX(event));
    drag = null;
    if (x1 - x0 < 3) { // a click: that one bar
      const i = Math.min(Math.floor((x0 / width) * b.counts.length), b.counts.length - 1);
      x0 = (i / b.counts.length) * width;
      x1 = ((i + 1) / b.counts.length) * width;
    }
    const start = new Date(b.since).getTime();
    const span = new Date(b.until).getTime() - start;
    const since = new Date(Math.floor((start + (x0 / width) * span) / 1000) * 1000);
    const until = new Date(Math.ceil((start + (x1 / width) * span) / 1000) * 1000);
    const params = new URLSearchParams(currentParams() || "");
    params.set("range", "custom");
    params.set("since", since.toISOString());
    params.set("until", until.toISOString());
    window.location.hash = `#/search?${params}`;
  });
}
