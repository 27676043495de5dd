"""``auditstream emit`` and ``auditstream loadgen`` against the real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from audit_events.settings import AuditSettings, settings_env
from auditstream.cli import main
from tests.integration.producers.test_producer import consume

pytestmark = pytest.mark.integration


@pytest.fixture
def env(settings: AuditSettings, monkeypatch: pytest.MonkeyPatch) -> AuditSettings:
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    return settings


def test_emit_one_event_from_flags(env: AuditSettings) -> None:
    result = CliRunner().invoke(
        main,
        ["emit", "--tenant", "acme", "--action", "invoice.update", "--actor", "alice",
         "--target", "invoice:42", "--change", "total=10:12", "--meta", "reason=typo",
         "--id", "evt-cli-1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.startswith("evt-cli-1 acknowledged (partition ")
    [event] = asyncio.run(consume(env, 1))
    assert event["changes"] == {"total": {"old": 10, "new": 12}}
    assert event["targets"] == [{"type": "invoice", "id": "42"}]
    assert event["actor"] == {"id": "alice", "type": "user"}
    assert event["metadata"] == {"reason": "typo"}


def test_emit_rejects_an_invalid_single_event(env: AuditSettings) -> None:
    result = CliRunner().invoke(main, ["emit", "--tenant", "bad tenant", "--action", "x"])
    assert result.exit_code == 1 and "tenant:" in result.output


def test_emit_ndjson_reports_rejected_lines(env: AuditSettings, tmp_path: Path) -> None:
    lines = [
        orjson.dumps({"tenant": "acme", "action": "doc.read", "id": f"evt-f-{i}"}) for i in range(5)
    ]
    lines.insert(2, b'{"tenant": "acme"}')
    lines.insert(4, b"{oops")
    lines.append(b"")
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(main, ["emit", "-f", str(path)])
    assert result.exit_code == 1, result.output
    assert "line 3: invalid audit event: action: Field required" in result.output
    assert "line 5: not JSON" in result.output
    assert "accepted 5, rejected 2" in result.output
    events = asyncio.run(consume(env, 5))
    assert sorted(e["id"] for e in events) == [f"evt-f-{i}" for i in range(5)]

    ok = CliRunner().invoke(main, ["emit", "-f", "-"], input=lines[0].decode() + "\n")
    assert ok.exit_code == 0 and "accepted 1, rejected 0" in ok.output


def test_loadgen_publishes_count_events(env: AuditSettings) -> None:
    result = CliRunner().invoke(
        main, ["loadgen", "--count", "300", "--tenants", "5", "--rate", "2000", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "published 300 events over 5 tenants" in result.output
    assert "acknowledged 300" in result.output
    events = asyncio.run(consume(env, 300))
    assert len({e["id"] for e in events}) == 300
    assert {e["tenant"] for e in events} <= {f"tenant-00{i}" for i in range(5)}
