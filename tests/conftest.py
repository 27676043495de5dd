"""Session-wide real servers for integration tests.

Default backend: the embedded development servers (Tansu, SecantusDB,
redis-server) on free ports, started once per session. With
``AUDITSTREAM_TEST_BACKEND=containers`` and a Docker engine, real Apache Kafka,
MongoDB and Redis containers are started through testcontainers instead (this
path cannot run on machines without Docker, such as the one this was built on).
Each test isolates itself with unique topic, database and group names.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from audit_events.chain import generate_keypair
from audit_events.settings import AuditSettings
from audit_events.topic_admin import ensure_topics
from auditstream.devstack import DevStack, kill_service, service_env, spawn_service, stop_services
from auditstream.embedded import Server

CONTROL_PRIVATE, CONTROL_PUBLIC = generate_keypair()  # control-event proof keys (docs/chain.md)
STREAMS_SECRET_KEY = Fernet.generate_key().decode()  # destination secrets at rest (streams)


@dataclass
class Backends:
    kafka: str
    mongo: str
    redis: str
    servers: dict[str, Server]
    workdir: Path


def _containers() -> Iterator[Backends]:  # pragma: no cover - needs Docker
    from testcontainers.kafka import KafkaContainer
    from testcontainers.mongodb import MongoDbContainer
    from testcontainers.redis import RedisContainer

    with KafkaContainer() as kafka, MongoDbContainer() as mongo, RedisContainer() as redis:
        host, port = redis.get_container_host_ip(), redis.get_exposed_port(6379)
        yield Backends(
            kafka.get_bootstrap_server(),
            mongo.get_connection_url(),
            f"redis://{host}:{port}/0",
            {},
            Path(tempfile.mkdtemp()),
        )


@pytest.fixture(scope="session")
def backends() -> Iterator[Backends]:
    if os.environ.get("AUDITSTREAM_TEST_BACKEND") == "containers":
        yield from _containers()
        return
    workdir = Path(tempfile.mkdtemp(prefix="auditstream-test-"))
    stack = DevStack(workdir)  # the same helper the benchmarks use (bench/stack.py)
    try:
        stack.start()
        yield Backends(stack.kafka, stack.mongo, stack.redis, stack.by_role(), workdir)
    finally:
        stack.stop()


@pytest.fixture(scope="session", autouse=True)
def own_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """This session's own ``$XDG_STATE_HOME``, inherited by every process it starts: the
    producer SDK's default spool directory lives under it, and a producer claims the spool
    files of dead processes there, so workers of one run (pytest-xdist) or other runs on
    the machine would otherwise send each other's spooled events to their own Kafka."""
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
    yield
    patch.undo()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(backends: Backends, unique: str, tmp_path: Path) -> AuditSettings:
    """Settings isolated to this test: own topics, database, group and data dir."""
    return AuditSettings(
        kafka_bootstrap=backends.kafka,
        mongo_uri=backends.mongo,
        redis_url=backends.redis,
        topic_events=f"audit.events.{unique}",
        topic_dlq=f"audit.events.dlq.{unique}",
        topic_checkpoints=f"audit.checkpoints.{unique}",
        mongo_db=f"t_{unique}",
        processor_group=f"processor-{unique}",
        jwt_secret=SecretStr("test-secret-0123456789abcdef-" + unique),
        control_signing_key=SecretStr(CONTROL_PRIVATE),  # the API signs control events
        control_public_keys=[CONTROL_PUBLIC],  # the processor and verifiers check them
        streams_secret_key=SecretStr(STREAMS_SECRET_KEY),  # the API encrypts stream secrets
        # Read auditing (on by default) stores an event per read: off here, so tests
        # that count a tenant's events see only theirs; test_read_audit turns it on.
        read_audit=False,
        processor_metrics_port=0,
        kafka_partitions=4,
        data_dir=str(tmp_path / "data"),
    )


class ProcessorProcess:
    """One ``auditstream processor`` worker as a real child process."""

    def __init__(self, settings: AuditSettings, log_path: Path, **env: str) -> None:
        self.settings = settings
        self.log_path = log_path
        self.env = service_env(
            settings,
            **{
                "AUDITSTREAM_JWT_SECRET": "unused-by-the-processor-0123456789abcdef",
                # Tests that check signed checkpoints pass AUDITSTREAM_CHECKPOINT_SIGNING_KEY;
                # the others run unsigned, which the processor refuses unless allowed.
                "AUDITSTREAM_ALLOW_UNSIGNED_CHAINS": "true",
                **env,
            },
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProcessorProcess:
        self.proc = spawn_service(self.env, self.log_path, "processor", "--loglevel", "warn")
        return self

    async def exit_code(self, timeout: float) -> int:
        """Wait (without blocking the loop) for the worker to exit; its exit code."""
        assert self.proc is not None
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running after {timeout:.0f}s") from None

    def kill(self) -> None:
        if self.proc:
            kill_service(self.proc)

    def stop(self) -> None:
        if self.proc:
            stop_services([self.proc])  # SIGTERM, 30 s, then SIGKILL


@pytest.fixture
def processors(
    settings: AuditSettings, tmp_path: Path
) -> Iterator[Callable[..., ProcessorProcess]]:
    """Factory of processor workers; every one is killed at teardown."""
    started: list[ProcessorProcess] = []

    def make(**env: str) -> ProcessorProcess:
        if not started:  # as compose's kafka-init / the k8s Job do before the services
            with ThreadPoolExecutor(1) as pool:  # callers may be inside an event loop
                pool.submit(asyncio.run, ensure_topics(settings)).result(60)
        proc = ProcessorProcess(settings, tmp_path / f"processor-{len(started)}.log", **env)
        started.append(proc.start())
        return proc

    yield make
    for proc in started:
        proc.kill()


# Long scenarios carry the `resilience` marker: `make test-fast` leaves them out,
# `make test-resilience` runs only them, `make test` and CI run both (CI as two steps).
# They are every test that starts worker processes (the `processors` fixture) or freezes
# its own store (`own_mongo`), plus the modules and tests below: whole stacks (`up`,
# gunicorn, Celery), browsers, the fuzzer, broker and Redis outages. Named by module file
# name (None = the whole module) or test function name, so a moved module keeps its mark;
# only integration tests are looked up (unit modules share some of these names).
RESILIENCE_FIXTURES = {"processors", "own_mongo"}
RESILIENCE: dict[str, set[str] | None] = {
    # whole stacks, browsers, the fuzzer, own servers (TLS), archiver processes
    "test_up.py": None,
    "test_up_lifecycle.py": None,
    "test_up_supervision.py": None,
    "test_cli_beside_up.py": None,
    "test_docs_snippets.py": None,
    "test_django.py": None,
    "test_celery_example.py": None,
    "test_viewer.py": None,
    "test_viewer_items.py": None,
    "test_viewer_streams.py": None,
    "test_api_fuzz.py": None,
    "test_kafka_tls.py": None,
    "test_archive.py": None,
    "test_archive_s3.py": None,
    "test_key_rotation.py": None,
    "test_producer.py": None,  # the SDK against a broker it stops and restarts
    "test_streams.py": None,  # deliveries to receivers that go down, streamers SIGKILLed
    "test_topics.py": None,  # `auditstream api`/`processor` processes refusing to start
    # outages, bursts and long walks (5-50 s each on a loaded 2-core machine)
    "test_api_auth_hardening.py": {
        "test_lockouts_survive_a_redis_restart",
        "test_concurrent_attempts_from_one_ip_check_at_most_the_limit",
        "test_concurrent_guesses_for_one_user_check_at_most_the_limit",
        "test_disabling_a_user_or_rotating_a_secret_revokes_its_tokens",
    },
    "test_api_ingest.py": {
        "test_kafka_unreachable_is_503_with_retry_after",
        "test_wait_true_answers_201_once_stored_else_202_with_location",
    },
    "test_api_readiness.py": {"test_kafka_down_keeps_the_pod_ready_reads_work_writes_503"},
    "test_api_token.py": {
        "test_password_and_client_credentials_grants",
        "test_failed_logins_are_rate_limited_per_user_and_per_ip",
    },
    "test_api_cache.py": {"test_cold_burst_queries_mongodb_once"},
    "test_api_pagination.py": {"test_walk_while_events_arrive"},
    "test_listing_store.py": {"test_windowed_pages_equal_the_plain_query"},
    "test_export.py": {"test_csv_export_streams_every_matching_event"},
}


# The longest scenarios (1-4 min each on 2 shared cores), started first when pytest-xdist
# spreads the resilience step over workers: collected last (tests/integration/stream_processor
# sorts late), they otherwise start near the end and one worker runs on alone.
LONGEST_FIRST = (
    "test_sigkill_at_random_moments_loses_and_duplicates_nothing",
    "test_store_outage_delays_but_loses_nothing_and_commits_nothing_early",
    "test_two_workers_one_sigkilled_mid_stream_exact_id_set",
    "test_fuzz_from_openapi",
    "test_cli_beside_up_needs_no_setup_and_replay_never_empties_the_store",
    "test_sigkill_streamer_during_s3_delivery_loses_nothing",
    "test_replay_reproduces_the_store_while_live_ingestion_continues",
    "test_up_restarts_its_servers_and_says_loudly_when_kafka_dies",
    "test_up_restarts_a_killed_worker_and_drains_before_stopping",
    "test_admin_history_view_reads_the_query_api",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker: its order is the scheduler's queue
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda it: rank.get(getattr(it, "originalname", it.name), len(rank)))
    for item in items:
        if item.get_closest_marker("serial") is not None:
            item.add_marker(pytest.mark.resilience)  # run alone in make test-resilience's 2nd pass
        if item.get_closest_marker("integration") is None:
            continue  # unit tests share some module names with integration ones
        names = RESILIENCE.get(item.path.name, set())
        long_scenario = (
            names is None
            or getattr(item, "originalname", item.name) in names
            or not RESILIENCE_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
        )
        if long_scenario:
            item.add_marker(pytest.mark.resilience)
