"""``auditstream up``'s ports (issue 20 items 2, 3): stable defaults, one offset for a
second copy, every port checked with the setting that moves it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from audit_events.settings import AuditSettings
from auditstream.up import _effective, _port_plan
from auditstream.up_guard import PortUse, port_clash

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("AUDITSTREAM_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no .env


def test_defaults_are_stable_and_every_port_is_planned() -> None:
    plan = {(u.port, u.setting) for u in _port_plan(AuditSettings())}
    assert plan == {
        (8080, "AUDITSTREAM_API_PORT"),
        (9108, "AUDITSTREAM_PROCESSOR_METRICS_PORT"),
        (9109, "AUDITSTREAM_ARCHIVER_METRICS_PORT"),
        (9110, "AUDITSTREAM_STREAMER_METRICS_PORT"),
        (9192, "AUDITSTREAM_EMBEDDED_KAFKA_PORT"),
        (27117, "AUDITSTREAM_EMBEDDED_MONGO_PORT"),
        (6479, "AUDITSTREAM_EMBEDDED_REDIS_PORT"),
    }


def test_a_configured_server_and_a_disabled_endpoint_are_not_planned() -> None:
    settings = AuditSettings(redis_url="redis://elsewhere:6379/0", archiver_metrics_port=0)
    settings_ = {u.setting for u in _port_plan(settings)}
    assert "AUDITSTREAM_EMBEDDED_REDIS_PORT" not in settings_
    assert "AUDITSTREAM_ARCHIVER_METRICS_PORT" not in settings_


def test_one_offset_moves_every_port_and_the_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITSTREAM_PORT_OFFSET", "100")
    settings = AuditSettings()
    assert settings.data_dir == ".auditstream-100"
    moved = _effective(settings)
    assert moved.port_offset == 0  # the children get the resulting ports
    assert sorted(u.port for u in _port_plan(moved)) == sorted(
        p + 100 for p in (8080, 9108, 9109, 9110, 9192, 27117, 6479)
    )
    monkeypatch.setenv("AUDITSTREAM_DATA_DIR", "/srv/x")
    assert AuditSettings().data_dir == "/srv/x"  # an explicit data dir wins


def test_a_port_set_twice_is_one_line() -> None:
    line = port_clash(
        [
            PortUse("127.0.0.1", 9108, "query API", "AUDITSTREAM_API_PORT"),
            PortUse("127.0.0.1", 9108, "processor metrics", "AUDITSTREAM_PROCESSOR_METRICS_PORT"),
        ]
    )
    assert line is not None and "\n" not in line
    assert "AUDITSTREAM_API_PORT" in line and "AUDITSTREAM_PROCESSOR_METRICS_PORT" in line


def test_a_free_port_passes_and_a_taken_one_names_its_setting() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = int(s.getsockname()[1])
    assert port_clash([PortUse("127.0.0.1", free, "Redis", "X")]) is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = int(s.getsockname()[1])
        line = port_clash([PortUse("127.0.0.1", port, "Redis", "AUDITSTREAM_EMBEDDED_REDIS_PORT")])
    assert line is not None and f"port {port}" in line and "is taken" in line
    assert "AUDITSTREAM_EMBEDDED_REDIS_PORT" in line
