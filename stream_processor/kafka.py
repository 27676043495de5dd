"""Faust's aiokafka transport, with the consumer's fetch wait taken from settings.

The broker seam ``prompt_empty_fetch`` (stream_processor/broker.py): Faust
builds its consumer with ``fetch_max_wait_ms=1500`` and offers no setting for
it. Apache Kafka answers a fetch as soon as ``fetch_min_bytes`` (1) arrived, so
there the wait only bounds idle polls and Faust's own transport would do.
Tansu, the embedded broker, holds a fetch that found nothing for much of that
wait: measured with a plain aiokafka consumer, an event published into an idle
topic was delivered after a median 362 ms (max 745 ms) at 1,500 ms, 86 ms at
500 ms and 15 ms at 100 ms. Shorter waits cost Tansu CPU (250 events/s: 11 % at
1,500 ms, 15 % at 250 ms, 22 % at 100 ms; with the whole stack at 100 ms,
40-50 %, taken from SecantusDB on this 2-core machine), so the default is
250 ms (docs/processor.md, Latency). A broker whose capabilities say it answers
empty fetches promptly gets Faust's own transport.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as driver

from stream_processor.broker import ANY_BROKER, BrokerCapabilities
from stream_processor.records import tolerate_undecodable_header_names


def app_class(fetch_max_wait_ms: int, broker: BrokerCapabilities = ANY_BROKER) -> type[faust.App]:
    """``faust.App`` consuming through :func:`kafka_transport` (its producer is Faust's own).

    Plain ``faust.App`` (Faust's 1,500 ms fetch wait) when ``broker`` answers
    empty fetches promptly: there the wait costs no latency.
    """
    tolerate_undecodable_header_names()  # a header name that is not UTF-8 (records.py)
    if broker.prompt_empty_fetch:
        return faust.App
    transport = kafka_transport(fetch_max_wait_ms)

    class App(faust.App):
        def _new_transport(self) -> driver.Transport:
            return transport(self.conf.broker_consumer, self)

    return App


def kafka_transport(fetch_max_wait_ms: int) -> type[driver.Transport]:
    """Faust's aiokafka ``Transport`` whose worker consumer waits at most ``fetch_max_wait_ms``."""

    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            # Read by AIOKafkaConsumer.start() when it builds its Fetcher.
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            return consumer

    class FetchWaitConsumer(driver.Consumer):
        def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(driver.Transport):
        Consumer = FetchWaitConsumer

    return Transport
