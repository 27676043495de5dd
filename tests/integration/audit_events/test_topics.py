"""Topics from one specification; the API and the processor refuse a deleting events topic.

Against the embedded broker (Tansu): it stores the configs a topic is created
with and reports them through ``describe_configs``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from audit_events.chain import generate_keypair
from audit_events.settings import AuditSettings, settings_env
from audit_events.topic_admin import ensure_topics, live_configs
from audit_events.topics import topic_specs
from auditstream.embedded import free_port
from producers.config import ProducerConfig
from producers.transport import KafkaTransport
from query_api.app import create_app
from tests.conftest import ProcessorProcess

pytestmark = pytest.mark.integration
WEEK_MS = "604800000"


async def _admin(settings: AuditSettings) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    return admin


async def _create_week_topic(settings: AuditSettings) -> None:
    """The events topic as the API and SDK used to create it on Apache Kafka (7 days)."""
    admin = await _admin(settings)
    try:
        topic = NewTopic(
            settings.topic_events,
            settings.kafka_partitions,
            1,
            topic_configs={"retention.ms": WEEK_MS, "cleanup.policy": "delete"},
        )
        await admin.create_topics([topic])
    finally:
        await admin.close()


async def _configs(settings: AuditSettings, topic: str) -> dict[str, str]:
    admin = await _admin(settings)
    try:
        return await live_configs(admin, topic)
    finally:
        await admin.close()


async def test_api_refuses_to_start_on_an_events_topic_that_deletes(
    settings: AuditSettings,
) -> None:
    await _create_week_topic(settings)
    app = create_app(settings)
    with pytest.raises(Exception, match="refusing to start") as refused:  # Quart wraps it
        async with app.test_app():
            pass
    message = str(refused.value)
    assert settings.topic_events in message
    assert f"retention.ms={WEEK_MS}" in message
    assert "AUDITSTREAM_ALLOW_FINITE_RETENTION" in message


async def test_api_command_refuses_with_one_line(settings: AuditSettings) -> None:
    await _create_week_topic(settings)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")},
        **settings_env(settings),
        "AUDITSTREAM_JWT_SECRET": "s" * 48,
        "AUDITSTREAM_API_PORT": str(free_port()),
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "auditstream", "api"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) == 1, lines
    assert settings.topic_events in lines[0]
    assert f"retention.ms={WEEK_MS}" in lines[0]


async def test_api_starts_when_finite_retention_is_accepted(settings: AuditSettings) -> None:
    await _create_week_topic(settings)
    app = create_app(settings.model_copy(update={"allow_finite_retention": True}))
    async with app.test_app() as test_app:
        assert (await test_app.test_client().get("/healthz")).status_code == 200


async def test_api_creates_every_topic_from_the_spec_and_starts(settings: AuditSettings) -> None:
    app = create_app(settings)
    async with app.test_app() as test_app:
        assert (await test_app.test_client().get("/healthz")).status_code == 200
    for spec in topic_specs(settings):
        live = await _configs(settings, spec.name)
        assert {k: live.get(k) for k in spec.configs} == dict(spec.configs), spec.role


async def test_sdk_creates_the_events_topic_from_the_spec(settings: AuditSettings) -> None:
    transport = KafkaTransport(ProducerConfig.from_settings(settings))
    await transport.connect()
    await transport.close()
    live = await _configs(settings, settings.topic_events)
    assert live["retention.ms"] == "-1"
    assert live["retention.bytes"] == "-1"
    assert live["cleanup.policy"] == "delete"


def _run_processor(settings: AuditSettings, log: Path, **env: str) -> tuple[int, list[str]]:
    """Start a processor, expecting it to exit by itself within 60 s: (status, log lines)."""
    proc = ProcessorProcess(settings, log, **env).start()
    assert proc.proc is not None
    try:
        status = proc.proc.wait(60)
    finally:
        proc.kill()
    return status, log.read_text().splitlines()


async def test_processor_refuses_to_start_on_an_events_topic_that_deletes(
    settings: AuditSettings, tmp_path: Path
) -> None:
    await _create_week_topic(settings)
    private, _ = generate_keypair()
    status, lines = await asyncio.to_thread(
        _run_processor,
        settings,
        tmp_path / "processor.log",
        AUDITSTREAM_CHECKPOINT_SIGNING_KEY=private,
    )
    assert status != 0
    assert len(lines) == 1, lines  # one line, no traceback
    assert settings.topic_events in lines[0]
    assert f"retention.ms={WEEK_MS}" in lines[0]


async def test_processor_refuses_to_start_without_a_signing_key(
    settings: AuditSettings, tmp_path: Path
) -> None:
    await ensure_topics(settings)
    status, lines = await asyncio.to_thread(
        _run_processor,
        settings,
        tmp_path / "processor.log",
        AUDITSTREAM_ALLOW_UNSIGNED_CHAINS="false",
    )
    assert status != 0
    assert len(lines) == 1, lines
    assert "AUDITSTREAM_CHECKPOINT_SIGNING_KEY" in lines[0]
    assert "AUDITSTREAM_ALLOW_UNSIGNED_CHAINS" in lines[0]


async def test_topic_job_entry_point_creates_checks_and_refuses(settings: AuditSettings) -> None:
    """``python -m audit_events.topic_admin`` (the k8s Job): creates, shows, refuses."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")},
        **settings_env(settings),
    }
    command = [sys.executable, "-m", "audit_events.topic_admin"]
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    assert all("retention.ms=-1 retention.bytes=-1" in line for line in lines), lines
    week = settings.model_copy(update={"topic_events": settings.topic_events + ".week"})
    await _create_week_topic(week)
    done = await asyncio.to_thread(
        subprocess.run,
        command,
        env={**env, **settings_env(week)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"retention.ms={WEEK_MS}" in done.stderr
