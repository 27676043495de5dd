"""Audit events from Celery tasks: one producer per worker process, one event per task run.

Run a worker (each pool process starts its own producer and spool file)::

    AUDITSTREAM_KAFKA_BOOTSTRAP=kafka:9092 celery -A examples.celery_tasks worker -c 4

and call ``close_invoice.delay("acme", 42, actor="alice")`` from the application.
Settings from the environment: ``CELERY_BROKER_URL`` (default
``redis://127.0.0.1:6379/0``), ``AUDITSTREAM_KAFKA_BOOTSTRAP`` and the other
``AUDITSTREAM_*`` variables, ``AUDIT_SPOOL_DIR`` (default
``/var/lib/billing/audit-spool``). ``tests/integration/producers/test_celery_example.py`` runs it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, Task, signals

from audit_events.settings import load_settings
from producers import ProducerConfig, SyncAuditProducer

app = Celery("billing", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.task_default_queue = os.environ.get("CELERY_QUEUE", "celery")

_audit: SyncAuditProducer | None = None
_started: dict[str, float] = {}


def audit() -> SyncAuditProducer:
    """This process's producer, started on first use. Durable: ``emit`` returns once
    the event is in this process's spool file; a background thread sends it to Kafka."""
    global _audit
    if _audit is None:
        config = ProducerConfig.from_settings(
            load_settings(),
            service="billing-worker",
            spool_dir=os.environ.get("AUDIT_SPOOL_DIR", "/var/lib/billing/audit-spool"),
        )
        # Celery handles SIGTERM itself; the producer closes in worker_process_shutdown.
        _audit = SyncAuditProducer(config, handle_sigterm=False).start(wait_connected=False)
    return _audit


@signals.worker_process_init.connect
def start_audit(**_: Any) -> None:
    """After the pool's fork: a producer does not survive one (each child its own)."""
    audit()


@signals.worker_process_shutdown.connect
def close_audit(**_: Any) -> None:
    """Pool children leave with ``os._exit``: atexit would not run, so close here."""
    if _audit is not None:
        _audit.close(10)


@signals.task_prerun.connect
def task_started(task_id: str, **_: Any) -> None:
    _started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def task_finished(task_id: str, task: Task, kwargs: dict[str, Any], state: str, **_: Any) -> None:
    """One ``celery.task.run`` event per run, failures included (``task_postrun`` runs
    after a task raised too), with the task's name, state, runtime and retries."""
    tenant = (kwargs or {}).get("tenant")
    if not tenant:
        return  # this example's tasks name their tenant
    runtime = time.perf_counter() - _started.pop(task_id, time.perf_counter())
    try:
        audit().emit(
            tenant=tenant,
            action="celery.task.run",
            outcome="success" if state == "SUCCESS" else "failure",
            actor={"id": "billing-worker", "type": "service"},
            targets=[{"type": "celery.task", "id": task_id, "name": task.name}],
            metadata={
                "task": task.name,
                "state": state,
                "runtime_ms": round(runtime * 1000, 3),
                "retries": task.request.retries,
            },
        )
    except Exception:  # an audit failure must not fail the worker
        app.log.get_default_logger().exception("audit event of task %s not recorded", task_id)


@app.task(bind=True)
def close_invoice(self: Task, *, tenant: str, invoice_id: int, actor: str) -> str:
    """A business task that records what it did, in the name of the user who asked."""
    # ... close the invoice in the database ...
    audit().emit(
        tenant=tenant,
        action="invoice.close",
        crud="u",
        actor={"id": actor, "type": "user"},
        targets=[{"type": "invoice", "id": str(invoice_id)}],
        changes={"status": {"old": "open", "new": "closed"}},
        context={"request_id": self.request.id},
    )
    return "closed"


@app.task
def refund(*, tenant: str, invoice_id: int, amount: int) -> None:
    """Fails above 100: its ``celery.task.run`` event has outcome ``failure``."""
    if amount > 100:
        raise ValueError(f"refund of {amount} needs an approval")
