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

- ``syslog``: RFC 5424 messages, octet-counted, over TLS (RFC 5425) to
  ``syslog+tls://host:port``; see :func:`syslog_message`.
- ``s3``: one NDJSON object per batch (one event per line) in an S3-compatible
  bucket, at ``<prefix>/<tenant>/<first seq>-<last seq>.ndjson`` (:func:`s3_key`):
  a batch delivered again after a crash lands on the same key.

Every event carries ``idempotency_key`` = its id (Splunk: also in ``fields``;
syslog: ``id`` in the structured data and the JSON).
"""

from __future__ import annotations

import socket
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


# --- syslog: RFC 5424 messages, octet-counted over TLS (RFC 5425) ----------------

SYSLOG_FACILITY = 13  # log audit
_SD_ESCAPE = str.maketrans({'"': '\\"', "\\": "\\\\", "]": "\\]"})
_HOST = socket.gethostname()[:255] or "-"


def _printable(value: str, limit: int) -> str:
    out = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return out or "-"


def syslog_message(dest: dict[str, Any], ev: dict[str, Any]) -> bytes:
    """One RFC 5424 message: ``<PRI>1 TIMESTAMP HOST auditstream - MSGID [SD] BOM JSON``.

    Facility 13 (log audit); severity 6 (informational) for a success, 4
    (warning) for a failure or denial. MSGID is the action (32 printable
    characters at most); the structured data names tenant, id and seq
    (``auditstream@32473``: 32473 is the example enterprise number of RFC 5424);
    the message is the event as JSON.
    """
    severity = 6 if ev.get("outcome", "success") == "success" else 4
    pri = SYSLOG_FACILITY * 8 + severity
    sd_values = {"tenant": dest["tenant"], "id": ev.get("id"), "seq": ev.get("seq")}
    sd = " ".join(f'{k}="{str(v).translate(_SD_ESCAPE)}"' for k, v in sd_values.items())
    head = (
        f"<{pri}>1 {ev.get('occurred_at') or '-'} {_HOST} auditstream - "
        f"{_printable(str(ev.get('action', '')), 32)} [auditstream@32473 {sd}] "
    )
    return head.encode() + b"\xef\xbb\xbf" + orjson.dumps(ev)


def syslog_frames(dest: dict[str, Any], events: list[dict[str, Any]]) -> bytes:
    """Octet-counting framing (RFC 5425 §4.3): ``<length> <message>`` per event."""
    out = bytearray()
    for ev in events:
        msg = syslog_message(dest, ev)
        out += f"{len(msg)} ".encode() + msg
    return bytes(out)


# --- s3: NDJSON objects -------------------------------------------------------------

NDJSON_CONTENT_TYPE = "application/x-ndjson"


def ndjson_body(events: list[dict[str, Any]]) -> bytes:
    """One event per line, each line ending with a newline."""
    return b"".join(orjson.dumps(ev) + b"\n" for ev in events)


def s3_key(dest: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """``<tenant>/<first seq>-<last seq>.ndjson`` (under the url's prefix), seqs
    zero-padded to 12 digits so keys sort in delivery order."""
    first, last = int(events[0].get("seq") or 0), int(events[-1].get("seq") or 0)
    return f"{dest['tenant']}/{first:012d}-{last:012d}.ndjson"
