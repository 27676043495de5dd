// The chain status in the top bar (GET /v1/verify for the tenant), and which
// event breaks the chain, for the badges elsewhere. `events` fires "broken" when
// a check finds the first bad event.

import { $ } from "./dom.js";
import { api, ApiError, errorText, SignedOut } from "./api.js";
import { session } from "./session.js";
import { eventHref } from "./links.js";

export const chain = { ok: null, firstBadId: null, firstBadSeq: null, why: "" };
export const events = new EventTarget();

function renderChainLink() {
  const link = $("chain-link");
  link.hidden = !chain.firstBadId;
  if (chain.firstBadId) {
    link.href = eventHref(chain.firstBadId);
    link.textContent = `Open event ${chain.firstBadId}`;
    link.title = `The first event that fails verification (seq ${chain.firstBadSeq ?? "?"})`;
  }
}

let generation = 0;

export async function checkChain() {
  const mine = ++generation; // a newer check (another tenant) wins
  const badge = $("chain");
  const text = $("chain-text");
  badge.className = "chain";
  text.textContent = "Chain: checking…";
  badge.title = "Tenant chain verification: click to check again";
  Object.assign(chain, { ok: null, firstBadId: null, firstBadSeq: null, why: "" });
  renderChainLink();
  try {
    const body = await (await api("/v1/verify")).json();
    if (mine !== generation) return;
    const ok = body.ok === true;
    const checked = Number(body.checked ?? 0);
    chain.ok = ok;
    if (ok && checked === 0) {
      // Nothing to verify is not a success: an empty or mistyped tenant looks like this.
      badge.classList.add("empty");
      text.textContent = `No events in tenant ${session.tenant || "?"}`;
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
      Object.assign(chain, { ok: false, firstBadId: body.first_bad_id || null, firstBadSeq: body.first_bad_seq ?? null, why });
      renderChainLink();
      events.dispatchEvent(new CustomEvent("broken", { detail: { id: chain.firstBadId } }));
    }
  } catch (err) {
    if (err instanceof SignedOut || mine !== generation) return;
    if (err instanceof ApiError && (err.status === 404 || err.status === 405 || err.status === 501)) {
      text.textContent = "Chain: not available";
      badge.title = "This server does not offer chain verification (GET /v1/verify).";
    } else {
      text.textContent = "Chain: unknown";
      badge.title = errorText(err);
    }
  }
}
