"""Only the CLI reads ``.env`` (issue 15 item 5).

A host application that embeds the SDK (a Django project, a script) builds the
settings in whatever directory it runs in; a ``.env`` lying there belongs to
that application, not to auditstream, and must not change its settings.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner

from audit_events.settings import AuditSettings, load_settings
from auditstream.cli import main

pytestmark = pytest.mark.unit
SECRET = "dotenv-secret-0123456789abcdefghijklmnopqrstuv"


@pytest.fixture
def folder_with_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The cwd: a folder whose .env sets a database name and a JWT secret."""
    for key in list(os.environ):
        if key.startswith("AUDITSTREAM_"):
            monkeypatch.delenv(key)
    (tmp_path / ".env").write_text(
        f"AUDITSTREAM_MONGO_DB=from_dotenv\nAUDITSTREAM_JWT_SECRET={SECRET}\n"
    )
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def test_the_settings_class_ignores_a_dotenv_in_the_current_directory(
    folder_with_dotenv: Path,
) -> None:
    settings = AuditSettings()
    assert settings.mongo_db == "auditstream"
    assert settings.jwt_secret is None


def test_load_settings_outside_the_cli_ignores_a_dotenv(folder_with_dotenv: Path) -> None:
    """What the SDK's Django backend and the topic Job call: environment only."""
    settings = load_settings()
    assert settings.mongo_db == "auditstream"
    assert settings.jwt_secret is None


def test_the_cli_reads_the_dotenv_of_the_current_directory(folder_with_dotenv: Path) -> None:
    result = CliRunner().invoke(main, ["token", "--tenant", "acme"])
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_aud": False})
    assert claims["tenant"] == "acme"
    # ...and only for its own run: a library call afterwards is back to the environment.
    assert load_settings().jwt_secret is None


def test_the_environment_wins_over_the_dotenv_in_the_cli(
    folder_with_dotenv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = "environment-secret-0123456789abcdefghijklmnopq"
    monkeypatch.setenv("AUDITSTREAM_JWT_SECRET", other)
    result = CliRunner().invoke(main, ["token", "--tenant", "acme"])
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    assert jwt.decode(token, other, algorithms=["HS256"], options={"verify_aud": False})
