"""Realistic synthetic audit events for benchmarks and demos.

Tenants follow a Zipf-like skew (a few hot tenants get most events), each tenant has
its own users and objects, and updates carry plausible field changes. The same
``seed`` yields the same events, ids included (so a repeated run is deduplicated by
the store); ``seed=None`` gives fresh ones.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import accumulate

from audit_events.schema import AuditEvent

FIRST = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
OBJECTS: dict[str, list[tuple[str, object, object]]] = {
    # object type → fields that change: (field, example old, example new)
    "invoice": [("status", "draft", "sent"), ("total", 100, 120), ("due_date", None, None)],
    "project": [("name", None, None), ("visibility", "private", "internal"), ("owner", None, None)],
    "document": [("title", None, None), ("classification", "internal", "confidential")],
    "user": [("role", "member", "admin"), ("email", None, None), ("mfa", False, True)],
    "api_key": [("scopes", "read", "read write"), ("expires_at", None, None)],
}
VERBS = [("read", "r", 40), ("update", "u", 30), ("create", "c", 15), ("delete", "d", 5)]
SPECIAL = [("user.login", 7), ("user.login_failed", 2), ("api_key.rotate", 1)]
AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0 Safari/537.36",
    "python-httpx/0.27.0",
    "Terraform/1.8.5",
]
SERVICES = ["billing", "projects", "identity", "docs"]


def zipf_weights(n: int, s: float = 1.1) -> list[float]:
    """Weight of rank k (1-based) proportional to 1/k^s."""
    return [1.0 / (k**s) for k in range(1, n + 1)]


def _value(rng: random.Random, field: str, example: object) -> object:
    if example is None:
        return f"{field}-{rng.randrange(10_000)}"
    if isinstance(example, bool):
        return rng.random() < 0.5
    if isinstance(example, int):
        return rng.randrange(10, 100_000)
    return example


def generate_events(
    count: int,
    tenants: int,
    seed: int | None = None,
    *,
    start: datetime | None = None,
    skew: float = 1.1,
) -> Iterator[AuditEvent]:
    """Yield ``count`` valid events over ``tenants`` tenants (``tenant-000`` is hottest)."""
    rng = random.Random(seed)
    when = start or datetime.now(UTC) - timedelta(seconds=count // 100)
    names = [f"tenant-{i:03d}" for i in range(tenants)]
    cum = list(accumulate(zipf_weights(tenants, skew)))
    verbs = [(v, c) for v, c, w in VERBS for _ in range(w)]
    specials = [a for a, w in SPECIAL for _ in range(w)]
    for _ in range(count):
        tenant = rng.choices(names, cum_weights=cum)[0]
        user = rng.choice(FIRST)
        actor = {"id": f"{tenant}:{user}", "type": "user", "name": user.title()}
        if rng.random() < 0.05:
            actor = {"id": f"svc-{rng.choice(SERVICES)}", "type": "service"}
        when += timedelta(microseconds=rng.randrange(1, 20_000))
        ctx = {
            "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            "user_agent": rng.choice(AGENTS),
            "request_id": uuid.UUID(int=rng.getrandbits(128)).hex,
        }
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        changes: dict[str, dict[str, object]] = {}
        crud: str | None
        if rng.random() < 0.1:
            action = rng.choice(specials)
            crud = None
            targets = [{"type": "user", "id": actor["id"]}]
            outcome = "failure" if action.endswith("failed") else "success"
        else:
            kind = rng.choice(list(OBJECTS))
            verb, crud = rng.choice(verbs)
            action = f"{kind}.{verb}"
            obj = f"{kind[:3]}-{rng.randrange(5000)}"
            targets = [{"type": kind, "id": obj, "name": f"{kind.title()} {obj}"}]
            if verb == "update":
                for field, old, new in rng.sample(OBJECTS[kind], rng.randint(1, 2)):
                    changes[field] = {
                        "old": _value(rng, field, old),
                        "new": _value(rng, field, new),
                    }
            outcome = "denied" if rng.random() < 0.02 else "success"
        yield AuditEvent.model_validate(
            {
                "id": event_id,
                "tenant": tenant,
                "action": action,
                "crud": crud,
                "occurred_at": when,
                "actor": actor,
                "targets": targets,
                "outcome": outcome,
                "changes": changes,
                "context": ctx,
                "source": {"service": rng.choice(SERVICES), "version": "1.4.2"},
                "metadata": {"generator": "auditstream-loadgen"},
            }
        )
