"""free_port picks ports the kernel does not hand to outgoing connections."""

from __future__ import annotations

import socket

import pytest

from auditstream import embedded

pytestmark = pytest.mark.unit


def test_free_ports_lie_below_the_ephemeral_range_and_are_bindable() -> None:
    lo, _ = embedded._ephemeral_range()
    ports = [embedded.free_port() for _ in range(50)]
    assert all(p < lo for p in ports), ports
    assert len(set(ports)) > 40  # random, not a sequence that two workers would share
    for p in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_taken_port_is_never_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        monkeypatch.setattr(embedded, "_PORT_POOL", (port, port))
        monkeypatch.setattr(embedded, "_ephemeral_range", lambda: (65535, 65535))
        assert embedded.free_port() != port  # the fallback, bind(0)
