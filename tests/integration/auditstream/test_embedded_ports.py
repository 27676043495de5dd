"""A dev server whose port another process took between ``free_port`` and its bind
(two pytest-xdist workers starting their stacks at once) fails to start, and a
``DevStack`` then starts that server on another port; before, the other process's
answer on the port passed for the server's, and the tests of that worker talked to
another worker's server until it went away (a CI run's "connection reset")."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditstream import devstack, embedded
from auditstream.embedded import EmbeddedError, Server, free_port

pytestmark = pytest.mark.integration

# Binds its port after a moment, as a server does after its imports.
LATE_BINDER = (
    "import socket, sys, time; time.sleep(1.0); s = socket.socket(); "
    "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); time.sleep(60)"
)


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another process (this one) listens on."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        yield held.getsockname()[1]


def late_binder(port: int, tmp_path: Path) -> Server:
    argv = [sys.executable, "-c", LATE_BINDER, str(port)]
    return Server("test", "late binder", port, f"tcp://127.0.0.1:{port}", argv, tmp_path / "log")


def test_a_server_whose_port_another_process_answers_fails_to_start(
    taken: int, tmp_path: Path
) -> None:
    server = late_binder(taken, tmp_path)
    with pytest.raises(EmbeddedError, match="late binder failed to start"):
        server.start(timeout=20)
    assert server.proc is not None and server.proc.poll() is not None


def test_a_server_that_binds_late_on_a_free_port_starts(tmp_path: Path) -> None:
    server = late_binder(free_port(), tmp_path)
    try:
        server.start(timeout=20)
        assert server.proc is not None and server.proc.poll() is None
    finally:
        server.stop()


def test_a_stack_starts_a_server_whose_port_was_taken_on_another(
    taken: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([taken])
    real = embedded.free_port
    monkeypatch.setattr(embedded, "free_port", lambda: next(ports, None) or real())
    stack = devstack.DevStack(tmp_path)  # Kafka gets the taken port first
    try:
        stack.start()
        assert stack.by_role()["kafka"].port != taken
        assert stack.by_role()["kafka"].proc is not None
    finally:
        stack.stop()
