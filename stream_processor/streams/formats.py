"""Request bodies and headers for each destination kind.

- ``webhook``: ``{"stream", "tenant", "events": [...]}``; ``X-Auditstream-Timestamp``
  and ``X-Auditstream-Signature: t=<ts>,v1=<hex>[,v1=<hex>]`` where each ``v1`` is
  HMAC-SHA256 over ``"<ts>." + body`` with the current secret and, during a
  rotation's overlap, the previous one. ``Idempotency-Key`` names the batch.
- ``splunk_hec``: HEC's event endpoint format: one JSON object per event
  (``time``, ``source``, ``sourcetype``, ``index``, ``event``, ``fields``),
  concatenated; ``Authorization: Splunk <token>``.
- ``datadog``: the logs intake v2 format: a JSON array of log entries
  (``ddsource``, ``ddtags``, ``service``, ``message`` + attributes);
  ``DD-API-KEY: <key>``.

Every event carries ``idempotency_key`` = its id (Splunk: also in ``fields``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from audit_events.streams import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature


def _epoch(iso: Any) -> float | None:
    if not isinstance(iso, str):
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).timestamp()
    except ValueError:
        return None


def signing_secrets(dest: dict[str, Any], now: datetime) -> list[str]:
    """The current secret, and the previous one while its overlap lasts."""
    out = [str(dest["secret"])]
    until = dest.get("previous_secret_until")
    if dest.get("previous_secret") and isinstance(until, datetime):
        if until.tzinfo is None:
            until = until.replace(tzinfo=UTC)
        if until > now:
            out.append(str(dest["previous_secret"]))
    return out


def build_request(
    dest: dict[str, Any], events: list[dict[str, Any]], now: datetime
) -> tuple[dict[str, str], bytes]:
    """(headers, body) delivering ``events`` to ``dest``."""
    kind = dest["kind"]
    if kind == "webhook":
        body = orjson.dumps({"stream": dest["_id"], "tenant": dest["tenant"], "events": events})
        ts = int(now.timestamp())
        sigs = ",".join(f"v1={signature(s, ts, body)}" for s in signing_secrets(dest, now))
        first, last = events[0].get("seq"), events[-1].get("seq")
        return {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: f"t={ts},{sigs}",
            "Idempotency-Key": f"{dest['_id']}:{first}-{last}",
        }, body
    if kind == "splunk_hec":
        parts = []
        for ev in events:
            item: dict[str, Any] = {
                "time": _epoch(ev.get("occurred_at")),
                "source": "auditstream",
                "sourcetype": dest.get("sourcetype") or "auditstream:event",
                "event": ev,
                "fields": {"tenant": dest["tenant"], "idempotency_key": ev.get("idempotency_key")},
            }
            if dest.get("index"):
                item["index"] = dest["index"]
            parts.append(orjson.dumps(item))
        return {
            "Content-Type": "application/json",
            "Authorization": f"Splunk {dest['secret']}",
        }, b"\n".join(parts)
    if kind == "datadog":
        tags = ",".join([f"tenant:{dest['tenant']}", *(dest.get("tags") or [])])
        entries = []
        for ev in events:
            epoch = _epoch(ev.get("occurred_at"))
            entries.append(
                {
                    "ddsource": "auditstream",
                    "ddtags": tags,
                    "service": dest.get("service") or "auditstream",
                    "message": ev.get("description") or ev.get("action") or "",
                    "timestamp": None if epoch is None else int(epoch * 1000),
                    "idempotency_key": ev.get("idempotency_key"),
                    "auditstream": ev,
                }
            )
        return {
            "Content-Type": "application/json",
            "DD-API-KEY": str(dest["secret"]),
        }, orjson.dumps(entries)
    raise ValueError(f"unknown destination kind {kind!r}")
