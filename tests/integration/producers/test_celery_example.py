"""examples/celery_tasks.py run as documented: a real Celery worker (prefork pool,
Redis broker) whose tasks emit audit events that reach MongoDB through the processor."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection

from audit_events.settings import AuditSettings, settings_env
from tests.conftest import ProcessorProcess
from tests.helpers import eventually

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]

SEND = """
import json, sys
from examples.celery_tasks import close_invoice, refund
for n in range(5):
    close_invoice.apply_async(kwargs={"tenant": "billing", "invoice_id": n, "actor": "alice"})
refund.apply_async(kwargs={"tenant": "billing", "invoice_id": 1, "amount": 500})
refund.apply_async(kwargs={"tenant": "billing", "invoice_id": 2, "amount": 50})
"""


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``celery -A examples.celery_tasks worker`` with a prefork pool of 2."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "examples.celery_tasks", "worker",
             "-c", "2", "-P", "prefork", "-l", "INFO",
             "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def spooled(root: Path) -> int:
    total = 0
    for path in root.glob("*.db"):
        with sqlite3.connect(path) as db:
            total += db.execute("SELECT count(*) FROM spool").fetchone()[0]
    return total


async def test_celery_example_worker_audits_its_tasks(
    settings: AuditSettings,
    tmp_path: Path,
    unique: str,
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
) -> None:
    processors()
    assert settings.redis_url
    spool = tmp_path / "audit-spool"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")},
        **settings_env(settings),
        "CELERY_BROKER_URL": settings.redis_url,
        "CELERY_QUEUE": f"billing-{unique}",
        "AUDIT_SPOOL_DIR": str(spool),
        "PYTHONPATH": str(REPO),
    }
    log_path = tmp_path / "worker.log"
    worker = await asyncio.to_thread(start_worker, env, log_path)
    try:
        deadline = time.monotonic() + 60
        while "ready." not in log_path.read_text(errors="replace"):
            assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.2)
        sent = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", SEND], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr

        async def stored() -> bool:
            return await store.count_documents({"tenant": "billing"}) >= 12

        await eventually(stored, timeout=90)
        docs = await store.find({"tenant": "billing"}).to_list()
        closes = [d for d in docs if d["action"] == "invoice.close"]
        runs = [d for d in docs if d["action"] == "celery.task.run"]
        assert len(docs) == 12 and len(closes) == 5 and len(runs) == 7, [d["action"] for d in docs]
        assert {d["actor"]["id"] for d in closes} == {"alice"}
        assert sorted(d["targets"][0]["id"] for d in closes) == [str(n) for n in range(5)]
        assert all(d["changes"] == {"status": {"old": "open", "new": "closed"}} for d in closes)
        assert all(d["source"] == {"service": "billing-worker"} for d in docs)
        failed = [d for d in runs if d["outcome"] == "failure"]
        assert len(failed) == 1 and failed[0]["metadata"]["state"] == "FAILURE"
        assert failed[0]["targets"][0]["name"] == "examples.celery_tasks.refund"
        # Each close's request id is the id of the task run that recorded it.
        task_ids = {d["targets"][0]["id"] for d in runs}
        assert {d["context"]["request_id"] for d in closes} <= task_ids
        pids = {p.name.split("-")[-2] for p in spool.glob("*.db")}
        assert len(pids) >= 1, json.dumps(sorted(pids))
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)  # warm shutdown
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(10)
    text = log_path.read_text(errors="replace")
    assert worker.returncode == 0, text
    assert spooled(spool) == 0, text  # the pool processes flushed when they stopped
