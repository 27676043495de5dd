"""The CLI beside `make run`: settings from the running stack's state file, one-line errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner

from audit_events import chain
from audit_events.settings import SettingsError, load_settings
from auditstream import stack_state
from auditstream.cli import main

pytestmark = pytest.mark.unit
SECRET = "state-file-secret-0123456789abcdefghijklmnop"
PRIVATE, PUBLIC = chain.generate_keypair()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project folder with no AUDITSTREAM_* variables and no .env; the cwd."""
    for key in list(os.environ):
        if key.startswith("AUDITSTREAM_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def stack_env(**extra: str) -> dict[str, str]:
    return {
        "AUDITSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "AUDITSTREAM_MONGO_URI": "mongodb://127.0.0.1:2/?directConnection=true",
        "AUDITSTREAM_REDIS_URL": "redis://127.0.0.1:3/0",
        "AUDITSTREAM_JWT_SECRET": SECRET,
        "AUDITSTREAM_JWT_ALGORITHMS": '["HS256"]',
        "AUDITSTREAM_CHECKPOINT_SIGNING_KEY": PRIVATE,
        "AUDITSTREAM_CHECKPOINT_PUBLIC_KEY": PUBLIC,
        "AUDITSTREAM_MONGO_DB": "from_up",
        "PATH": "/usr/bin",  # not a setting: left out of the file
        **extra,
    }


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_up_state_file_is_private_and_marked_stopped(project: Path) -> None:
    path = stack_state.publish(project / ".auditstream", stack_env())
    assert path == project / ".auditstream" / "stack.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    state = json.loads(path.read_text())
    assert state["status"] == "running" and state["pid"] == os.getpid()
    assert "PATH" not in state["env"] and state["env"]["AUDITSTREAM_JWT_SECRET"] == SECRET
    stack_state.mark_stopped(path, os.getpid())  # what atexit does when `up` exits
    state = json.loads(path.read_text())
    assert state["status"] == "stopped" and "env" not in state  # secrets dropped
    assert load_settings().mongo_uri is None


def test_settings_come_from_the_running_stack_and_variables_win(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack_state.publish(project / ".auditstream", stack_env())
    settings = load_settings()
    assert settings.kafka_bootstrap == "127.0.0.1:1"
    assert settings.mongo_uri == "mongodb://127.0.0.1:2/?directConnection=true"
    assert settings.jwt_secret is not None and settings.jwt_secret.get_secret_value() == SECRET
    assert settings.checkpoint_public_key == PUBLIC and settings.jwt_algorithms == ["HS256"]
    assert settings.mongo_db == "from_up"
    # explicit variables and arguments win over the stack
    monkeypatch.setenv("AUDITSTREAM_KAFKA_BOOTSTRAP", "kafka.example:9092")
    monkeypatch.setenv("AUDITSTREAM_MONGO_DB", "mine")
    again = load_settings(redis_url="redis://override:6379/0")
    assert again.kafka_bootstrap == "kafka.example:9092" and again.mongo_db == "mine"
    assert again.redis_url == "redis://override:6379/0"
    assert again.mongo_uri == "mongodb://127.0.0.1:2/?directConnection=true"


def test_a_killed_up_is_not_followed(project: Path) -> None:
    path = stack_state.publish(project / ".auditstream", stack_env())
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "pid": dead_pid()}))
    assert load_settings().kafka_bootstrap is None
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1 and "stale" in result.output, result.output


def test_token_and_keys_beside_up_need_no_setup(project: Path) -> None:
    """`auditstream token --tenant acme` (the README's hint) with no variables set."""
    stack_state.publish(project / ".auditstream", stack_env())
    result = CliRunner().invoke(main, ["token", "--tenant", "acme"])
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.output.strip(), SECRET, algorithms=["HS256"])
    assert claims["tenant"] == "acme"


def test_status_names_each_address_and_whether_it_answers(project: Path) -> None:
    stack_state.publish(project / ".auditstream", stack_env())
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1, result.output  # nothing listens on ports 1-3
    assert f"auditstream up is running (pid {os.getpid()}" in result.output
    for line in ("kafka", "127.0.0.1:1", "mongodb", "redis://127.0.0.1:3/0", "api", "DOWN"):
        assert line in result.output
    (project / ".auditstream" / "stack.json").unlink()
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1 and "auditstream up is not running here" in result.output


@pytest.mark.parametrize(
    ("args", "env", "setting"),
    [
        (["replay"], {}, "missing setting AUDITSTREAM_MONGO_URI"),
        # past the command's own check: the replayer needs Kafka too (was a 28-line traceback)
        (["replay"], {"AUDITSTREAM_MONGO_URI": "mongodb://127.0.0.1:2"}, "AUDITSTREAM_KAFKA"),
        (["verify"], {}, "missing setting AUDITSTREAM_MONGO_URI"),
        (["token", "--tenant", "acme"], {}, "missing setting AUDITSTREAM_JWT_SECRET"),
        (["users", "list"], {}, "missing setting AUDITSTREAM_MONGO_URI"),
        (["emit", "--tenant", "a", "--action", "x.y"], {}, "AUDITSTREAM_KAFKA_BOOTSTRAP"),
        (["token", "--tenant", "a"], {"AUDITSTREAM_JWT_ALGORITHMS": "HS256"}, "JWT_ALGORITHMS"),
        (["status"], {"AUDITSTREAM_API_PORT": "eighty"}, "invalid setting AUDITSTREAM_API_PORT"),
    ],
)
def test_a_missing_or_invalid_setting_is_one_line_and_exit_2(
    project: Path, args: list[str], env: dict[str, str], setting: str
) -> None:
    result = CliRunner().invoke(main, args, env=env)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and setting in lines[0], result.output
    assert "Traceback" not in result.output


def test_invalid_list_setting_is_one_line(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITSTREAM_JWT_ALGORITHMS", "HS256")
    with pytest.raises(SettingsError, match=r"^invalid setting AUDITSTREAM_JWT_ALGORITHMS: "):
        load_settings()
