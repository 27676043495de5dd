"""The producer's overflow and spool rules, without a buffer, a spool or Kafka."""

from __future__ import annotations

from typing import Any

import pytest

from producers.policy import SpoolPolicy, Step

pytestmark = pytest.mark.unit

POLICY = SpoolPolicy(buffer_size=3, chunk_size=10)
DURABLE = SpoolPolicy(buffer_size=3, chunk_size=10, durable=True)


def test_a_new_event_is_buffered_while_there_is_room() -> None:
    assert POLICY.admit(0, spooling=False) == "buffer"
    assert POLICY.admit(2, spooling=True) == "buffer"


def test_a_full_buffer_overflows_to_the_spool_or_is_refused_without_one() -> None:
    assert POLICY.admit(3, spooling=True) == "overflow"
    assert POLICY.admit(3, spooling=False) == "refuse"
    assert SpoolPolicy(buffer_size=0, chunk_size=1).admit(0, spooling=True) == "overflow"


def step(policy: SpoolPolicy = POLICY, **state: Any) -> Step:
    base = {
        "connected": True,
        "spool_events": 0,
        "buffered": 0,
        "draining_claimed": False,
        "claim_due": False,
    }
    return policy.next_step(**(base | state))


def test_the_sender_reconnects_first_whatever_else_waits() -> None:
    assert step(connected=False, spool_events=5, buffered=5, claim_due=True) == "reconnect"


def test_the_spool_drains_before_newer_buffered_events_keeping_emission_order() -> None:
    assert step(spool_events=1, buffered=100, draining_claimed=True) == "drain_spool"
    assert step(buffered=1, draining_claimed=True, claim_due=True) == "send_buffer"


def test_spools_of_dead_processes_only_when_the_own_work_is_done() -> None:
    assert step(draining_claimed=True, claim_due=True) == "drain_claimed"
    assert step(claim_due=True) == "claim"
    assert step() == "idle"


def test_durable_mode_lingers_to_gather_a_chunk_before_draining() -> None:
    assert DURABLE.linger(1) and DURABLE.linger(9)
    assert not DURABLE.linger(10)
    assert not POLICY.linger(1)  # outage spool: drain at once


@pytest.mark.parametrize(
    ("step_", "plain", "durable"),
    [
        ("reconnect", True, False),  # durable: new events wait on disk while Kafka is away
        ("drain_spool", False, False),  # the sender re-reads the spool when done anyway
        ("drain_claimed", False, False),
        ("send_buffer", True, True),
        ("claim", True, True),
        ("idle", True, True),
    ],
)
def test_when_an_emit_wakes_the_sender(step_: Step, plain: bool, durable: bool) -> None:
    assert POLICY.wake_on_emit(step_) is plain
    assert DURABLE.wake_on_emit(step_) is durable


def test_an_unacknowledged_chunk_goes_to_the_front_of_the_spool_if_there_is_one() -> None:
    assert POLICY.unacknowledged(spooling=True) == "spool_front"
    assert POLICY.unacknowledged(spooling=False) == "fail_or_retry"
