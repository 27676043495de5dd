"""`auditstream up` gives its children a masking secret, so `hash` rules hash (not
redact) on the development stack, and the same secret across restarts keeps hashed
values joinable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from audit_events.settings import AuditSettings

pytestmark = pytest.mark.unit


def test_up_keeps_one_private_masking_secret_and_a_configured_one_wins(tmp_path: Path) -> None:
    from auditstream.masking_cli import dev_masking_env

    first = dev_masking_env(AuditSettings(), tmp_path)["AUDITSTREAM_MASKING_SECRET"]
    assert len(first) >= 32
    assert (tmp_path / "masking_secret").stat().st_mode & 0o777 == 0o600
    assert dev_masking_env(AuditSettings(), tmp_path)["AUDITSTREAM_MASKING_SECRET"] == first
    own = "a-configured-masking-secret-of-enough-length"
    configured = AuditSettings(masking_secret=SecretStr(own))
    assert dev_masking_env(configured, tmp_path)["AUDITSTREAM_MASKING_SECRET"] == own


def test_up_passes_the_masking_secret_to_its_children() -> None:
    import inspect

    import auditstream.up as up

    assert "dev_masking_env(settings, data_dir)" in inspect.getsource(up._run)
