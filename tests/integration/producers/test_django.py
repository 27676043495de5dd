"""A real Django project (tests/integration/django_project) with django-easy-audit and
our logging backend: a model save travels Django → Kafka → processor → MongoDB."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from pymongo.asynchronous.collection import AsyncCollection

from audit_events.settings import AuditSettings, settings_env
from auditstream.embedded import free_port, kafka_server, wait_for_port
from tests.conftest import ProcessorProcess
from tests.helpers import LiveApi, eventually, run_cli

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
WSGI = "tests.integration.django_project.wsgi:application"
ASGI = "tests.integration.django_project.asgi:application"


def shop_env(tmp_path: Path, audit: Mapping[str, str], **extra: str) -> dict[str, str]:
    """The shop's environment: ``audit`` holds the only AUDITSTREAM_* variables it gets."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AUDITSTREAM_", "SHOP_"))},
        **audit,
        "SHOP_DB": str(tmp_path / "shop.sqlite3"),
        "PYTHONPATH": str(REPO),
        "HOME": str(tmp_path / "home"),  # the default spool location lives under it
        "XDG_STATE_HOME": str(tmp_path / "home" / "state"),
        **extra,
    }


def manage(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.integration.django_project.manage", *args],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Gunicorn:
    """The shop served by real gunicorn workers (sync worker class), or with ``asgi`` by
    Hypercorn through Django's ASGI handler."""

    def __init__(
        self, env: Mapping[str, str], log_path: Path, workers: int, *extra: str, asgi: bool = False
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        with open(log_path, "ab") as log:
            args = ["--bind", f"127.0.0.1:{self.port}", "--workers", str(workers), *extra]
            if asgi:
                command = ["hypercorn", *args, "--graceful-timeout", "20", ASGI]
            else:
                command = ["gunicorn", *args, "--graceful-timeout", "20", WSGI]
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *command],
                cwd=REPO,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, 60, self.proc)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def post(self, path: str, data: Mapping[str, str]) -> tuple[int, bytes]:
        body = "&".join(f"{k}={v}" for k, v in data.items()).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return int(self.proc.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    started: list[Gunicorn] = []

    def make(env: Mapping[str, str], workers: int = 2, *extra: str, asgi: bool = False) -> Gunicorn:
        log = tmp_path / f"server-{len(started)}.log"
        server = Gunicorn(env, log, workers, *extra, asgi=asgi)
        started.append(server)
        return server

    yield make
    for server in started:
        if server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(10)


def spooled_events(root: Path) -> list[dict[str, Any]]:
    """Every event held in the spool files under ``root``."""
    events = []
    for path in sorted(root.rglob("*.db")):
        with sqlite3.connect(path) as db:
            events += [json.loads(v) for (v,) in db.execute("SELECT value FROM spool")]
    return events


def test_missing_kafka_setting_serves_pages_and_check_reports_it(
    tmp_path: Path, gunicorn: Callable[..., Gunicorn]
) -> None:
    """No AUDITSTREAM_KAFKA_BOOTSTRAP and no spool setting: every page answers as
    without auditstream, each record is spooled (default location), and
    ``manage.py check`` names the missing setting in one error."""
    env = shop_env(tmp_path, {"AUDITSTREAM_DATA_DIR": str(tmp_path / "data")})
    migrated = manage(env, "migrate", "--run-syncdb", "--skip-checks", "-v", "0")
    assert migrated.returncode == 0, migrated.stderr

    checked = manage(env, "check")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert checked.stderr.count("auditstream.E001") == 1, checked.stderr
    assert "AUDITSTREAM_KAFKA_BOOTSTRAP" in checked.stderr
    assert "Traceback" not in checked.stderr

    server = gunicorn(env, workers=2)
    answers = [server.get(f"/ping/?n={n}")[0] for n in range(10)]
    created = server.post("/invoices/", {"number": "INV-9", "customer": "Initech", "total": "5"})
    server.stop()
    assert answers == [200] * 10, server.log()
    assert created[0] == 201, server.log()
    assert "Traceback" not in server.log(), server.log()

    events = spooled_events(tmp_path / "home")
    pings = sorted(e["metadata"]["query_string"] for e in events if e["action"] == "http.get")
    assert pings == sorted(f"n={n}" for n in range(10))
    assert [e["action"] for e in events].count("shop.invoice.create") == 1


def run_shop(
    settings: AuditSettings, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")},
        **settings_env(settings),
        "SHOP_DB": str(tmp_path / "shop.sqlite3"),
        "SHOP_SPOOL_DIR": str(tmp_path / "audit-spool"),
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
        return await store.count_documents({"tenant": "shop"}) == 14

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
        "http.post",
        "auth.login_failed",  # alice, wrong password
        "http.post",
        "auth.login_failed",  # mallory: no such user
        "shop.invoice.create",
        "shop.payment.create",
        "shop.payment.update",
    ]
    created = docs[4]
    assert created["changes"] == {
        "number": {"new": "INV-1"},
        "customer": {"new": "Globex"},
        "total": {"new": 10},
    }
    user_created = docs[0]
    assert user_created["changes"]["password"] == {"new": "[redacted]"}
    alice = {"id": user, "type": "user", "name": "alice"}
    assert docs[2]["actor"] == alice
    # Failed and successful logins carry the same actor (pk and username).
    assert docs[8]["actor"] == alice and docs[8]["outcome"] == "failure"
    assert docs[10]["actor"] == {"id": "mallory", "type": "user", "name": "mallory"}
    assert docs[10]["metadata"]["unknown_user"] is True
    # Page requests carry the user agent and the request id.
    for request in (docs[3], docs[5], docs[7], docs[9]):
        assert request["context"]["user_agent"] == "shop-demo/1.0", request
        assert request["context"]["request_id"] == "req-42", request
    # Foreign keys: the related object's string form beside the pk.
    second = str(ids["invoice2_id"])
    assert docs[12]["changes"]["invoice"] == {"new": int(invoice)}
    assert docs[12]["changes"]["invoice__str"] == {"new": "Invoice INV-1"}
    assert docs[13]["changes"] == {
        "invoice": {"old": int(invoice), "new": int(second)},
        "invoice__str": {"old": "Invoice INV-1", "new": "Invoice INV-2"},
    }


def test_kafka_unreachable_without_spool_setting_loses_nothing(tmp_path: Path) -> None:
    """Kafka unreachable and no spool configured: ``createsuperuser`` succeeds without a
    traceback and its events are spooled in the default location; ``manage.py check``
    passes, and names a wrong producer option in one error."""
    port = free_port()  # nothing listens there
    audit = {
        "AUDITSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
        "AUDITSTREAM_DATA_DIR": str(tmp_path / "data"),
    }
    env = shop_env(tmp_path, audit, DJANGO_SUPERUSER_PASSWORD="s3cret-pw-42")
    assert manage(env, "migrate", "--run-syncdb", "-v", "0").returncode == 0
    assert manage(env, "check").returncode == 0

    made = manage(env, "createsuperuser", "--noinput", "--username", "root", "--email", "r@x.io")
    assert made.returncode == 0, made.stderr
    assert "Traceback" not in made.stderr, made.stderr
    assert "Superuser created successfully" in made.stdout
    actions = [e["action"] for e in spooled_events(tmp_path / "home")]
    assert "auth.user.create" in actions, actions

    wrong = shop_env(tmp_path, audit, SHOP_AUDIT_OPTIONS='{"chunk_sise": 10}')
    checked = manage(wrong, "check")
    assert checked.returncode == 1
    assert checked.stderr.count("auditstream.E006") == 1 and "chunk_sise" in checked.stderr

    worse = shop_env(
        tmp_path,
        {**audit, "AUDITSTREAM_KAFKA_PARTITIONS": "many"},
        SHOP_NO_TENANT="1",
        SHOP_SPOOL_DIR="/proc/no-such-dir/spool",
    )
    checked = manage(worse, "check")
    assert checked.returncode == 1 and "Traceback" not in checked.stderr, checked.stderr
    for code in ("E003", "E004", "E005"):
        assert checked.stderr.count(f"auditstream.{code}") == 1, checked.stderr


async def consume_pings(bootstrap: str, topic: str, want: set[str], timeout: float) -> list[str]:
    """Query strings of the ``http.get`` events on ``topic``, read until ``want`` is seen."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    got: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while not want <= set(got) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for rec in records:
                    event = orjson.loads(rec.value or b"{}")
                    if event.get("action") == "http.get":
                        got.append(event["metadata"]["query_string"])
    finally:
        await consumer.stop()
    return got


async def test_kafka_down_four_workers_one_killed_nothing_lost(
    tmp_path: Path, unique: str, gunicorn: Callable[..., Gunicorn]
) -> None:
    """Kafka unreachable, 4 gunicorn workers under load, one SIGKILLed mid-load: every
    page still answers, every record is on disk, and once Kafka is back every spooled
    event reaches it (the dead worker's file drained by a live process)."""
    port = free_port()
    topic = f"audit.events.{unique}"
    spool = tmp_path / "audit-spool"
    env = shop_env(
        tmp_path,
        {
            "AUDITSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",  # nothing listens yet
            "AUDITSTREAM_TOPIC_EVENTS": topic,
            "AUDITSTREAM_DATA_DIR": str(tmp_path / "data"),
        },
        SHOP_SPOOL_DIR=str(spool),
        SHOP_AUDIT_OPTIONS=json.dumps(
            {"claim_interval": 0.5, "reconnect_max": 0.5, "request_timeout_ms": 2000}
        ),
    )
    migrated = await asyncio.to_thread(
        manage, env, "migrate", "--run-syncdb", "--skip-checks", "-v", "0"
    )
    assert migrated.returncode == 0, migrated.stderr
    server = await asyncio.to_thread(gunicorn, env, 4)

    total, clients = 400, 8
    answers: dict[int, int] = {}
    pids: set[int] = set()
    killed: list[int] = []

    def client(first: int) -> None:
        for n in range(first, total, clients):
            try:
                status, body = server.get(f"/ping/?n={n}")
            except (OSError, http.client.HTTPException):  # the killed worker's connection
                continue
            answers[n] = status
            if status == 200:
                pids.add(json.loads(body)["pid"])
            if len(answers) >= total // 3 and not killed and len(pids) >= 2:
                victim = sorted(pids)[0]
                killed.append(victim)
                os.kill(victim, signal.SIGKILL)

    await asyncio.gather(*(asyncio.to_thread(client, c) for c in range(clients)))
    ok = {f"n={n}" for n, status in answers.items() if status == 200}
    assert killed, "no worker was killed"
    assert set(answers.values()) == {200}, server.log()
    assert len(ok) >= total - clients  # at most the killed worker's in-flight requests
    assert "Traceback" not in server.log(), server.log()

    spooled = {e["metadata"]["query_string"] for e in spooled_events(spool)}
    assert ok <= spooled  # on disk before the page answered
    victim_files = [p for p in spool.glob(f"*-{killed[0]}-*.db")]
    assert victim_files and spooled_events(victim_files[0].parent) != []

    kafka = kafka_server(tmp_path / "kafka", port=port)
    await asyncio.to_thread(kafka.start)
    try:
        started = time.monotonic()
        got = await consume_pings(f"127.0.0.1:{port}", topic, spooled, timeout=90)
        took = time.monotonic() - started
        assert spooled <= set(got), f"lost: {sorted(spooled - set(got))[:10]}"

        async def victim_gone() -> bool:  # claimed, drained, deleted (the delete follows
            return not any(p.exists() for p in victim_files)  # the acks we already saw)

        await eventually(victim_gone, timeout=30)
        code = await asyncio.to_thread(server.stop)
        left = spooled_events(spool)
    finally:
        await asyncio.to_thread(kafka.stop)
    print(
        f"\n4 workers, Kafka down: {len(answers)} requests answered 200 ({len(ok)}), "
        f"worker {killed[0]} SIGKILLed, {len(spooled)} events spooled, "
        f"{len(set(got))} distinct delivered ({len(got) - len(set(got))} duplicates) "
        f"{took:.1f}s after Kafka returned"
    )
    assert code == 0 and left == [], server.log()


async def test_preloaded_app_forked_workers_spool_apart_and_deliver(
    tmp_path: Path, unique: str, gunicorn: Callable[..., Gunicorn]
) -> None:
    """gunicorn --preload: Django (and the producer) start in the master before the fork;
    each worker still gets its own spool file, and everything arrives."""
    port, topic, spool = free_port(), f"audit.events.{unique}", tmp_path / "audit-spool"
    env = shop_env(
        tmp_path,
        {
            "AUDITSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
            "AUDITSTREAM_TOPIC_EVENTS": topic,
            "AUDITSTREAM_DATA_DIR": str(tmp_path / "data"),
        },
        SHOP_SPOOL_DIR=str(spool),
        SHOP_AUDIT_OPTIONS=json.dumps({"claim_interval": 0.5, "reconnect_max": 0.5}),
    )
    migrated = await asyncio.to_thread(manage, env, "migrate", "--run-syncdb", "-v", "0")
    assert migrated.returncode == 0, migrated.stderr
    server = await asyncio.to_thread(gunicorn, env, 2, "--preload")
    answers = [(await asyncio.to_thread(server.get, f"/ping/?n={n}"))[0] for n in range(20)]
    assert answers == [200] * 20, server.log()
    pids = {p.name.split("-")[-2] for p in spool.glob("*.lock")}
    # The master's and one per worker that served a request (gunicorn may hand
    # all 20 to one worker): never one file shared across the fork.
    assert len(pids) >= 2, pids
    spooled = {e["metadata"]["query_string"] for e in spooled_events(spool)}
    assert spooled == {f"n={n}" for n in range(20)}
    kafka = kafka_server(tmp_path / "kafka", port=port)
    await asyncio.to_thread(kafka.start)
    try:
        got = await consume_pings(f"127.0.0.1:{port}", topic, spooled, timeout=60)
        assert spooled <= set(got)
        assert await asyncio.to_thread(server.stop) == 0
    finally:
        await asyncio.to_thread(kafka.stop)
    assert spooled_events(spool) == [] and not any(spool.glob("*.lock")), server.log()


class AdminSession:
    """A staff user's browser on the shop's admin: logs in through the login form."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=30, follow_redirects=True)

    def login(self, username: str, password: str) -> None:
        form = self.http.get("/admin/login/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert form.status_code == 200 and csrf, form.text[:500]
        done = self.http.post(
            "/admin/login/?next=/admin/",
            data={"csrfmiddlewaretoken": csrf[1], "username": username, "password": password},
        )
        assert done.status_code == 200 and "/admin/logout/" in done.text, done.text[:500]

    def get(self, path: str, **params: str) -> httpx.Response:
        return self.http.get(path, params=params)


def cells(html: str, table_id: str) -> list[list[str]]:
    """The rows of the table ``table_id`` as lists of cell texts (tags stripped)."""
    found = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S)
    assert found, f"no table {table_id}"
    body = found[1].split("<tbody>", 1)[-1]
    out = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S):
        texts = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        out.append([" ".join(re.sub(r"<[^>]+>", " ", t).split()) for t in texts])
    return out


async def test_admin_history_view_reads_the_query_api(
    settings: AuditSettings,
    tmp_path: Path,
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    live: LiveApi,
    gunicorn: Callable[..., Gunicorn],
) -> None:
    """The admin's History button of an invoice and of a payment shows the object's
    timeline from the query API (service account, client credentials): field diffs
    with actors, a foreign key's object names, the state as of an event, links to the
    viewer; with the API gone the page still answers 200 and says why."""
    processors()
    done = await asyncio.to_thread(run_shop, settings, tmp_path, "shop_demo")
    assert done.returncode == 0, done.stderr
    ids = json.loads(done.stdout.strip().splitlines()[-1])
    invoice, payment = str(ids["invoice_id"]), str(ids["payment_id"])

    async def stored() -> bool:
        return await store.count_documents({"tenant": "shop"}) >= 14

    await eventually(stored, timeout=90)
    made = await asyncio.to_thread(
        run_cli,
        settings,
        "users",
        "add",
        "django-admin",
        "--tenant",
        "shop",
        "--service",
        "--scopes",
        "events:read",
    )
    assert made.returncode == 0, made.stderr
    secret = re.search(r"client_secret=(\S+)", made.stdout)
    assert secret, made.stdout
    api = {"URL": live.url, "CLIENT_ID": "django-admin", "CLIENT_SECRET": secret[1]}
    env = shop_env(
        tmp_path,
        settings_env(settings),
        SHOP_SPOOL_DIR=str(tmp_path / "audit-spool"),
        SHOP_AUDIT_API=json.dumps(api),
        DJANGO_SUPERUSER_PASSWORD="admin-pw-42",
    )
    root = await asyncio.to_thread(
        manage, env, "createsuperuser", "--noinput", "--username", "root", "--email", "r@x.io"
    )
    assert root.returncode == 0, root.stderr
    server = await asyncio.to_thread(gunicorn, env, 1)
    admin = AdminSession(f"http://127.0.0.1:{server.port}")
    try:
        await asyncio.to_thread(admin.login, "root", "admin-pw-42")
        change = await asyncio.to_thread(admin.get, f"/admin/shop/invoice/{invoice}/change/")
        assert (
            change.status_code == 200 and f"/admin/shop/invoice/{invoice}/history/" in change.text
        )

        page = await asyncio.to_thread(admin.get, f"/admin/shop/invoice/{invoice}/history/")
        assert page.status_code == 200, page.text[:2000]
        assert "auditstream-error" not in page.text, page.text
        rows = cells(page.text, "auditstream-timeline")
        assert [r[2] for r in rows] == ["shop.invoice.update", "shop.invoice.create"], rows
        assert rows[0][1].startswith("alice") and "total : 10 → 12" in rows[0][3], rows
        assert "number : INV-1" in rows[1][3] and "customer : Globex" in rows[1][3], rows
        viewer = f"{live.url}/ui/#/history/shop.invoice/{invoice}"
        assert f'href="{viewer}"' in page.text

        # "State after" the creation: the total before the update.
        created_at = re.findall(r'href="\?as_of=([^"]+)"', page.text)[-1]
        before = await asyncio.to_thread(
            admin.get, f"/admin/shop/invoice/{invoice}/history/", as_of=unquote(created_at)
        )
        state = dict((r[0], r[1]) for r in cells(before.text, "auditstream-state"))
        assert state == {"customer": "Globex", "number": "INV-1", "total": "10"}, state

        moved = await asyncio.to_thread(admin.get, f"/admin/shop/payment/{payment}/history/")
        rows = cells(moved.text, "auditstream-timeline")
        assert [r[2] for r in rows] == ["shop.payment.update", "shop.payment.create"], rows
        assert (
            f"invoice : Invoice INV-1 (#{invoice}) → Invoice INV-2 (#{ids['invoice2_id']})"
            in (rows[0][3])
        ), rows

        # An object that no longer exists (or never did): its history page still renders.
        missing = await asyncio.to_thread(admin.get, "/admin/shop/invoice/99999/history/")
        assert missing.status_code == 200 and "No audit events for this object." in missing.text
        assert "99999 (deleted)" in missing.text

        live.stop()  # the API is gone: the admin page still answers, and says why
        gone = await asyncio.to_thread(admin.get, f"/admin/shop/invoice/{invoice}/history/")
        assert gone.status_code == 200 and 'id="auditstream-error"' in gone.text, gone.text
        assert "cannot be reached" in gone.text
    finally:
        admin.http.close()
        await asyncio.to_thread(server.stop)
    assert "Traceback" not in server.log(), server.log()


@pytest.mark.parametrize("server_kind", ["wsgi", "asgi"])
def test_request_middleware_records_status_actor_and_latency(
    tmp_path: Path, gunicorn: Callable[..., Gunicorn], server_kind: str
) -> None:
    """``auditstream.django.middleware.AuditMiddleware`` under gunicorn (WSGI) and
    Hypercorn (ASGI): one event per request with status, outcome, latency, the
    logged-in user as actor, user agent and request id; static paths excluded. Kafka
    is unreachable: every event is in the spool when the page has answered."""
    spool = tmp_path / "audit-spool"
    env = shop_env(
        tmp_path,
        {"AUDITSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"},
        SHOP_SPOOL_DIR=str(spool),
        SHOP_AUDIT_MIDDLEWARE="1",
        DJANGO_SUPERUSER_PASSWORD="s3cret-pw-42",
    )
    assert manage(env, "migrate", "--run-syncdb", "-v", "0").returncode == 0
    made = manage(env, "createsuperuser", "--noinput", "--username", "alice", "--email", "a@x.io")
    assert made.returncode == 0, made.stderr
    server = gunicorn(env, 1, asgi=server_kind == "asgi")
    headers = {"User-Agent": "mw-test/1.0"}
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", headers=headers) as http:
        assert http.get("/ping/?n=anon").status_code == 200
        assert http.get("/static/app.css").status_code == 404  # excluded path
        wrong = http.post("/login/", data={"username": "alice", "password": "nope"})
        assert wrong.status_code == 401
        assert http.post("/login/", data={"username": "alice", "password": "s3cret-pw-42"})
        assert http.get("/ping/?n=1", headers={"X-Request-ID": "req-7"}).status_code == 200
    server.stop()
    assert "Traceback" not in server.log(), server.log()
    events = [
        e for e in spooled_events(spool) if e["metadata"].get("source") == "django-middleware"
    ]
    seen = [(e["action"], e["metadata"]["path"], e["metadata"]["status"]) for e in events]
    assert seen == [
        ("http.get", "/ping/", 200),
        ("http.post", "/login/", 401),
        ("http.post", "/login/", 200),
        ("http.get", "/ping/", 200),
    ], seen
    anon, denied, _, mine = events
    assert "actor" not in anon and anon["metadata"]["query_string"] == "n=anon"
    assert denied["outcome"] == "denied" and "actor" not in denied
    assert mine["outcome"] == "success" and mine["actor"]["name"] == "alice"
    assert mine["context"] == {
        "ip": "127.0.0.1",
        "user_agent": "mw-test/1.0",
        "request_id": "req-7",
    }
    assert all(e["metadata"]["latency_ms"] > 0 for e in events)
