"""The broker adapter: what the processor and replay assume of Kafka, and where the
development broker (Tansu) differs.

Two behaviours of Tansu — the embedded broker of ``auditstream up``, the tests
and the bench — differ from Apache Kafka's. Each sits behind a named capability
of :class:`BrokerCapabilities`, and the code that depends on it says which path
it takes:

``exact_end_offsets``
    Apache Kafka answers ``ListOffsets(latest)`` with the partition's high
    watermark, the offset after its last record. Tansu answers with the last
    *batch's* base offset + 1, so a reader that stops there misses the tail of
    a multi-record batch (replay's catch-up, the archiver's epoch probe, the
    drain of ``auditstream up``). Without the capability,
    :func:`stream_processor.offsets.true_end_offsets` fetches from that offset
    minus 1 and takes the last offset of the batch it gets + 1; on Apache Kafka
    that reads one record per partition and returns the same answer.
``prompt_empty_fetch``
    Apache Kafka answers a fetch as soon as ``fetch_min_bytes`` (1) arrived, so
    a consumer's ``fetch_max_wait_ms`` only bounds idle polls and Faust's
    hard-coded 1,500 ms costs no latency. Tansu holds a fetch that found
    nothing for much of that wait (an event published into an idle topic was
    delivered after a median 362 ms at 1,500 ms, 86 ms at 500 ms, 15 ms at
    100 ms). Without the capability, the worker consumes through the transport
    of :mod:`stream_processor.kafka`, which takes the wait from
    ``KAFKA_FETCH_MAX_WAIT_MS`` (default 250 ms, docs/processor.md "Latency").

The processor does not tell the brokers apart, so it runs with
:data:`ANY_BROKER`, whose paths are right on both; :data:`APACHE_KAFKA` is what
a deployment that knows it runs on Apache Kafka could pass to skip them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BrokerCapabilities:
    """What the Kafka broker does that the code may rely on (see the module docstring)."""

    name: str
    #: ``ListOffsets(latest)`` is the offset after the partition's last record
    exact_end_offsets: bool
    #: an empty fetch is answered once ``fetch_min_bytes`` arrived, not held for the wait
    prompt_empty_fetch: bool


#: Apache Kafka (and brokers that behave like it).
APACHE_KAFKA = BrokerCapabilities("apache-kafka", exact_end_offsets=True, prompt_empty_fetch=True)
#: Tansu, the development broker.
TANSU = BrokerCapabilities("tansu", exact_end_offsets=False, prompt_empty_fetch=False)
#: A broker of unknown kind: the paths that give the right answer on every broker.
ANY_BROKER = BrokerCapabilities("any", exact_end_offsets=False, prompt_empty_fetch=False)
