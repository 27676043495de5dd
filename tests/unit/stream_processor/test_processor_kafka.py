"""The processor's Faust transport takes the consumer's fetch wait from settings;
on a broker that holds empty fetches it is short only while records arrive that a
``?wait=true`` request waits for (their header says so)."""

from __future__ import annotations

import pytest

from audit_events.notify import WAIT_HEADER
from audit_events.settings import AuditSettings
from stream_processor.app import create_app
from stream_processor.kafka import FetchWait, awaited
from stream_processor.records import Record

pytestmark = pytest.mark.unit


async def test_worker_consumer_waits_at_most_the_configured_fetch_wait() -> None:
    settings = AuditSettings(
        kafka_bootstrap="127.0.0.1:1",
        mongo_uri="mongodb://127.0.0.1:1",
        redis_url="redis://127.0.0.1:1",
        processor_group="fetch-wait-test",
        kafka_fetch_max_wait_ms=77,
    )
    app = create_app(settings)
    thread = app.consumer._thread
    consumer = thread._create_worker_consumer(app.transport)  # built, never started
    try:
        assert consumer._fetch_max_wait_ms == 77  # Faust alone would pass 1500
        assert consumer._group_id == "fetch-wait-test"
        assert consumer._enable_auto_commit is False
    finally:
        await consumer.stop()
        thread.thread_loop.close()  # the consumer thread's own loop, never started here


def test_fetch_wait_defaults_to_250_ms() -> None:
    assert AuditSettings().kafka_fetch_max_wait_ms == 250


class Fetcher:
    _fetch_max_wait_ms = 0


class Consumer:
    _fetch_max_wait_ms = 0
    _fetcher: Fetcher | None = None


def test_fetch_wait_is_short_while_waited_records_arrive_and_long_once_idle() -> None:
    now = [100.0]
    wait = FetchWait(50, 250, clock=lambda: now[0])
    consumer = wait.consumer = Consumer()
    wait.apply()
    assert consumer._fetch_max_wait_ms == 250  # built idle: start() gives it to its Fetcher
    consumer._fetcher = fetcher = Fetcher()  # started
    assert wait.commit_every() == 0.0  # idle: every batch commits at once
    wait.awaited()
    assert (consumer._fetch_max_wait_ms, fetcher._fetch_max_wait_ms) == (50, 50)
    assert wait.commit_every() == wait.active_commit_seconds  # small batches share commits
    now[0] += wait.idle_after - 0.1
    wait.tick()
    assert fetcher._fetch_max_wait_ms == 50, "records came within idle_after"
    now[0] += 0.2
    wait.tick()
    assert fetcher._fetch_max_wait_ms == 250 and wait.commit_every() == 0.0
    wait.awaited()
    assert fetcher._fetch_max_wait_ms == 50


def test_worker_consumer_starts_with_the_idle_wait_and_defaults() -> None:
    assert AuditSettings().kafka_fetch_active_wait_ms == 50
    assert FetchWait(300, 250).active_ms == 250, "never longer than the idle wait"


def test_a_record_is_awaited_when_its_header_says_so() -> None:
    plain = Record("events", 0, 1, 0, b"acme", b"{}")
    assert not awaited(plain)
    assert awaited(Record("events", 0, 1, 0, b"acme", b"{}", ((WAIT_HEADER, b"1"),)))
    assert not awaited(Record("events", 0, 1, 0, b"acme", b"{}", (("other", b"1"),)))
