"""A real Django project (tests/integration/django_project) with django-easy-audit and
our logging backend: a model save travels Django → Kafka → processor → MongoDB."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection

from audit_events.settings import AuditSettings, settings_env
from tests.conftest import ProcessorProcess
from tests.integration.conftest import eventually

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def run_shop(
    settings: AuditSettings, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")},
        **settings_env(settings),
        "SHOP_DB": str(tmp_path / "shop.sqlite3"),
        "SHOP_SPOOL": str(tmp_path / "audit-spool.db"),
        "PYTHONPATH": str(REPO),
    }
    return subprocess.run(
        [sys.executable, "-m", "tests.integration.django_project.manage", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_model_save_reaches_mongodb(
    settings: AuditSettings,
    tmp_path: Path,
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
) -> None:
    processors()
    done = await asyncio.to_thread(run_shop, settings, tmp_path, "shop_demo")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    ids = json.loads(done.stdout.strip().splitlines()[-1])
    invoice, user = str(ids["invoice_id"]), str(ids["user_id"])

    query = {"tenant": "shop", "action": "shop.invoice.update", "targets.id": invoice}

    async def stored() -> bool:
        return await store.count_documents(query) == 1

    await eventually(stored, timeout=90)
    update = await store.find_one(query)
    assert update is not None
    assert update["changes"] == {"total": {"old": "10", "new": "12"}}
    assert update["actor"] == {"id": user, "type": "user", "name": "alice"}
    assert update["targets"] == [{"type": "shop.invoice", "id": invoice, "name": "Invoice INV-1"}]
    assert update["crud"] == "u" and update["source"] == {"service": "django-shop"}
    assert update["context"] == {
        "ip": "127.0.0.1",
        "user_agent": "shop-demo/1.0",
        "request_id": "req-42",
    }

    async def all_stored() -> bool:
        return await store.count_documents({"tenant": "shop"}) == 7

    await eventually(all_stored, timeout=60)
    docs = await store.find({"tenant": "shop"}).sort("seq", 1).to_list()
    assert [d["action"] for d in docs] == [
        "auth.user.create",
        "auth.user.update",  # last_login
        "auth.login",
        "http.post",
        "shop.invoice.create",
        "http.post",
        "shop.invoice.update",
    ]
    created = docs[4]
    assert created["changes"] == {
        "number": {"new": "INV-1"},
        "customer": {"new": "Globex"},
        "total": {"new": 10},
    }
    user_created = docs[0]
    assert user_created["changes"]["password"] == {"new": "[redacted]"}
    assert docs[2]["actor"] == {"id": user, "type": "user", "name": "alice"}
