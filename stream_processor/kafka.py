"""Faust's aiokafka transport, with the consumer's fetch wait taken from settings.

The broker seam ``prompt_empty_fetch`` (stream_processor/broker.py): Faust
builds its consumer with ``fetch_max_wait_ms=1500`` and offers no setting for
it. Apache Kafka answers a fetch as soon as ``fetch_min_bytes`` (1) arrived, so
there the wait only bounds idle polls and Faust's own transport would do.
Tansu, the embedded broker, does not wake a fetch when a record arrives: it
looks for records when the fetch comes in and then after half of the remaining
wait each time (at 0, W/2, 3W/4, ... of a wait W) and answers at the first look
that finds some. A record published just after a look waits for the next one:
a serial ``?wait=true`` client, whose next event arrives ~20-40 ms after the
previous one's fetch was answered, waited ~110 ms at W = 250 ms.

So on such a broker the worker's wait adapts (:class:`FetchWait`): short
(``KAFKA_FETCH_ACTIVE_WAIT_MS``, 50 ms: looks at 0, 25, 37, ... ms) while
records someone waits for arrive — the API marks the events of a ``?wait=true``
request with the header ``audit_events.notify.WAIT_HEADER`` —, and
``KAFKA_FETCH_MAX_WAIT_MS`` (250 ms) once none came for ``FetchWait.idle_after``
seconds. The short wait is not for every record: each fetch costs Tansu and the
worker CPU whether it finds records or not (idle, the whole stack's polls took
1.8 % of a core at 250 ms, 5.7 % at 50 ms, 12 % at 25 ms), and at ~90 plain
events/s it cut the batches from 8.4 events to 1.9 and tripled the worker's CPU
per event (docs/processor.md, Latency). A broker whose
capabilities say it answers empty fetches promptly gets Faust's own transport.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import faust
from faust.transport.drivers import aiokafka as driver

from audit_events.notify import WAIT_HEADER
from stream_processor.broker import ANY_BROKER, BrokerCapabilities
from stream_processor.records import Record, tolerate_undecodable_header_names


class FetchWait:
    """The worker consumer's fetch wait on a broker that holds empty fetches (Tansu).

    ``active_ms`` from the moment a record someone waits for arrives
    (:meth:`awaited`) until none came for ``idle_after`` seconds (:meth:`tick`,
    on a timer), ``idle_ms`` otherwise. The consumer's fetcher reads the wait for
    every request it sends, so a change applies from the next fetch on.
    """

    idle_after = 5.0  # seconds without a waited record before the wait grows back
    # While active, a stored batch's offsets wait up to this long for one commit
    # shared with the next batches (BatchLoop commit_every): the short fetch wait
    # makes small batches, and each commit is a round trip to the broker.
    active_commit_seconds = 0.5

    def __init__(
        self, active_ms: int, idle_ms: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.active_ms, self.idle_ms = min(active_ms, idle_ms), idle_ms
        self._clock = clock
        self._last = -float("inf")
        self.active = False
        self.consumer: Any = None  # the worker's AIOKafkaConsumer, once built

    @property
    def current_ms(self) -> int:
        return self.active_ms if self.active else self.idle_ms

    def commit_every(self) -> float:
        """Seconds a stored batch's offsets may wait for a shared commit (0: none)."""
        return self.active_commit_seconds if self.active else 0.0

    def awaited(self) -> None:
        """A record arrived that a ``?wait=true`` request waits for."""
        self._last = self._clock()
        if not self.active:
            self.active = True
            self.apply()

    def tick(self) -> None:
        if self.active and self._clock() - self._last >= self.idle_after:
            self.active = False
            self.apply()

    def apply(self) -> None:
        """Give the consumer (and its fetcher, once started) the current wait."""
        consumer = self.consumer
        if consumer is None:
            return
        consumer._fetch_max_wait_ms = self.current_ms  # read by start() for its Fetcher
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is not None:
            fetcher._fetch_max_wait_ms = self.current_ms  # read for every fetch request


def awaited(record: Record) -> bool:
    """Whether a ``?wait=true`` request waits for ``record`` (its header says so)."""
    return any(name == WAIT_HEADER for name, _ in record.headers)


def app_class(
    fetch_wait: FetchWait | int, broker: BrokerCapabilities = ANY_BROKER
) -> type[faust.App]:
    """``faust.App`` consuming through :func:`kafka_transport` (its producer is Faust's own).

    Plain ``faust.App`` (Faust's 1,500 ms fetch wait) when ``broker`` answers
    empty fetches promptly: there the wait costs no latency. An ``int`` is a
    fixed wait.
    """
    tolerate_undecodable_header_names()  # a header name that is not UTF-8 (records.py)
    if broker.prompt_empty_fetch:
        return faust.App
    if isinstance(fetch_wait, int):
        fetch_wait = FetchWait(fetch_wait, fetch_wait)
    transport = kafka_transport(fetch_wait)

    class App(faust.App):
        def _new_transport(self) -> driver.Transport:
            return transport(self.conf.broker_consumer, self)

    return App


def kafka_transport(fetch_wait: FetchWait) -> type[driver.Transport]:
    """Faust's aiokafka ``Transport`` whose worker consumer waits as ``fetch_wait`` says."""

    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            fetch_wait.consumer = consumer
            fetch_wait.apply()
            return consumer

    class FetchWaitConsumer(driver.Consumer):
        def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(driver.Transport):
        Consumer = FetchWaitConsumer

    return Transport
