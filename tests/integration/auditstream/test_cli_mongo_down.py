"""CLI commands that write to MongoDB, against a MongoDB that does not answer.

They must give up within ``AUDITSTREAM_MONGO_TIMEOUT_MS`` (plus start-up), not
pymongo's default 30 s, and say so in one line rather than a traceback.
"""

from __future__ import annotations

import time

import pytest

from audit_events.settings import AuditSettings
from auditstream.embedded import free_port
from tests.helpers import run_cli

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("command", ["reindex-search", "migrate-ids", "verify"])
def test_an_unreachable_mongodb_is_one_line_within_the_timeout(
    settings: AuditSettings, command: str
) -> None:
    uri = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    started = time.monotonic()
    done = run_cli(
        settings, command, AUDITSTREAM_MONGO_URI=uri, AUDITSTREAM_MONGO_TIMEOUT_MS="1000"
    )
    took = time.monotonic() - started
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    assert "MongoDB" in done.stderr and "unreachable" in done.stderr, done.stderr
    assert took < 15, f"{command} took {took:.1f}s against a 1 s MongoDB timeout"
