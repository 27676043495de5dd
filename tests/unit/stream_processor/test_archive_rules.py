"""The archiver's masking rules while MongoDB is away (pure: the load is faked)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from audit_events.settings import AuditSettings
from stream_processor.archive.masking import ArchiveRules, MaskingUnavailable
from stream_processor.records import Record

pytestmark = pytest.mark.unit
EMAIL = b"ann@example.com"
RULES = {
    "tenant": "acme",
    "version": 1,
    "rules": [{"path": "metadata.email", "action": "redact"}],
    "effective_at": "2020-01-01T00:00:00+00:00",
    "set_at": "2020-01-01T00:00:00+00:00",
}


class FlakyLoad:
    """Fails ``failures`` times (MongoDB down), then answers the rules."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self, tenants: list[str]) -> list[dict[str, Any]]:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("MongoDB down")
        from datetime import datetime

        return [{**RULES, "effective_at": datetime.fromisoformat(RULES["effective_at"])}]


def archive_rules(load: FlakyLoad) -> ArchiveRules:
    settings = AuditSettings(  # type: ignore[call-arg]
        _env_file=None,
        kafka_bootstrap="k:1",
        mongo_uri="mongodb://127.0.0.1:1",
        masking_secret=SecretStr("s" * 32),
    )
    rules = ArchiveRules(settings)
    rules.masker._rules._load = load  # the MongoDB read, faked
    return rules


def message() -> Record:
    value = orjson.dumps(
        {"id": "e1", "tenant": "acme", "action": "user.login", "metadata": {"email": "x"}}
    ).replace(b'"x"', b'"' + EMAIL + b'"')
    return Record("audit.events", 0, 0, 1_700_000_000_000, b"acme", value)


async def test_waits_while_the_rules_cannot_be_read_then_masks() -> None:
    load = FlakyLoad(failures=2)
    rules = archive_rules(load)
    [(rec, out, _)] = await rules.records([message()], lambda m: m, asyncio.Event())
    assert load.calls == 3 and rules.failures == 2
    assert EMAIL in (rec.value or b"") and EMAIL not in (out.value or b"")


async def test_stopped_while_waiting_it_raises_and_returns_nothing_unmasked() -> None:
    rules = archive_rules(FlakyLoad(failures=10**6))
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(MaskingUnavailable):
        await rules.records([message()], lambda m: m, stop)
    await rules.close()  # no client was opened: a no-op
    assert rules.client is None
