"""Login rate limits under concurrency, token revocation, strict claims and args.

The real API app (its clients open) through Quart's test client, real Redis and
MongoDB. Each test logs in from its own client address (``scope_base``), so the
per-IP counters of one test never touch another's.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from quart import Quart
from quart.typing import TestClientProtocol as Client
from redis.asyncio import Redis
from werkzeug.datastructures import Headers

from audit_events.settings import AuditSettings
from auditstream.cli import main
from auditstream.embedded import free_port
from query_api.app import create_app
from query_api.auth import mint_token
from query_api.services import Services
from query_api.state import api_state
from query_api.throttle import MARKER, LoginThrottle

pytestmark = pytest.mark.integration


def services(app: Quart) -> Services:
    found = api_state(app).services
    assert found is not None
    return found


def new_ip() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


async def login(client: Client, ip: str, username: str, password: str) -> Any:
    return await client.post(
        "/v1/token",
        form={"grant_type": "password", "username": username, "password": password},
        scope_base={"client": (ip, 40000)},
    )


@pytest.mark.serial  # dozens of Redis connects within 1 s each: alone, not beside busy workers
async def test_concurrent_guesses_for_one_user_check_at_most_the_limit(
    api: Quart, client: Client
) -> None:
    limit = api_state(api).settings.login_max_failures_per_user
    users = services(api).users
    ip = new_ip()
    # 40 wrong guesses at once: at most `limit` are checked, then the right one is refused.
    name = f"victim-{uuid.uuid4().hex[:8]}"
    await users.add(name, "user", "right-password", "acme", ["events:read"])
    guesses = [f"guess-{i}" for i in range(40)]
    answers = await asyncio.gather(*(login(client, ip, name, pw) for pw in guesses))
    statuses = [a.status_code for a in answers]
    print(f"\n40 concurrent guesses, limit {limit}: {40 - statuses.count(429)} checked")
    assert len([s for s in statuses if s != 429]) <= limit, statuses
    after = await login(client, ip, name, "right-password")
    assert after.status_code == 429 and int(after.headers["Retry-After"]) > 0
    # 39 wrong and the right one at once: still at most `limit` checked in all.
    other = f"victim-{uuid.uuid4().hex[:8]}"
    await users.add(other, "user", "right-password", "acme", ["events:read"])
    passwords = [f"guess-{i}" for i in range(39)] + ["right-password"]
    answers = await asyncio.gather(*(login(client, new_ip(), other, pw) for pw in passwords))
    statuses = [a.status_code for a in answers]
    assert len([s for s in statuses if s != 429]) <= limit, statuses
    assert statuses[-1] in (200, 429) and statuses[:-1].count(200) == 0


@pytest.mark.serial  # dozens of Redis connects within 1 s each: alone, not beside busy workers
async def test_concurrent_attempts_from_one_ip_check_at_most_the_limit(
    api: Quart, client: Client
) -> None:
    limit = api_state(api).settings.login_max_failures_per_ip
    ip = new_ip()
    names = [f"nobody-{uuid.uuid4().hex[:8]}" for _ in range(60)]
    answers = await asyncio.gather(*(login(client, ip, n, "wrong-password") for n in names))
    statuses = [a.status_code for a in answers]
    print(
        f"\n60 concurrent attempts from one IP, limit {limit}: {60 - statuses.count(429)} checked"
    )
    assert len([s for s in statuses if s != 429]) <= limit, statuses
    assert set(statuses) <= {400, 429}


async def test_throttle_counts_per_window_and_successes_give_their_slot_back(
    settings: AuditSettings, caplog: pytest.LogCaptureFixture
) -> None:
    redis = Redis.from_url(settings.redis_url or "")
    now = [float(random.randrange(10**6, 10**7)) * 60]
    t = LoginThrottle(redis, max_per_user=2, max_per_ip=3, window_seconds=60, clock=lambda: now[0])
    user, other, ip = f"u-{uuid.uuid4().hex}", f"o-{uuid.uuid4().hex}", new_ip()
    try:

        async def failure(name: str, address: str) -> None:  # a checked attempt that failed
            slot = await t.reserve(name, address)
            assert slot.retry_after is None
            await t.failed(slot)

        first = await t.reserve(user, ip)
        assert first.retry_after is None
        await t.release(first)  # a success: not counted
        await failure(user, ip)
        await failure(user, "10.9.9.9")
        refused = await t.reserve(user, ip)  # the name is spent, from any address
        assert refused.retry_after is not None and 1 < refused.retry_after <= 60
        await t.release(refused)  # releasing a refusal changes nothing
        assert (await t.reserve(user, "10.8.8.8")).retry_after is not None
        await failure(other, ip)  # refusals are not counted
        await failure(other, ip)  # 3rd from this IP
        assert (await t.reserve(f"x-{other}", ip)).retry_after is not None
        now[0] += 60  # the next window
        assert (await t.reserve(user, ip)).retry_after is None
        # Redis lost its data (restart without persistence): said loudly, not silently.
        await redis.delete(MARKER)
        with caplog.at_level(logging.ERROR, logger="auditstream.api.throttle"):
            await t.reserve(user, ip)
        assert "counters were lost" in caplog.text
    finally:
        await redis.aclose()


async def test_logins_fail_closed_while_redis_cannot_reserve(settings: AuditSettings) -> None:
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    app = create_app(down)
    async with app.test_app():
        await services(app).users.add("dora", "user", "right-password", "acme", ["events:read"])
        resp = await login(app.test_client(), new_ip(), "dora", "right-password")
        assert resp.status_code == 503
        assert (await resp.get_json())["error"] == "temporarily_unavailable"
        assert int(resp.headers["Retry-After"]) > 0


@pytest.mark.parametrize(
    "query",
    [
        "/v1/verify?tenant=a&tenant=b",
        "/v1/verify?tenant=a&since=2026-01-01T00:00:00Z&since=2020-01-01T00:00:00Z",
        "/v1/checkpoints?tenant=a&tenant=b",
    ],
)
async def test_repeated_query_args_are_refused(
    client: Client, token: Callable[..., str], query: str
) -> None:
    headers = {"Authorization": f"Bearer {token(['a', 'b'], 'events:read')}"}
    resp = await client.get(query, headers=headers)
    assert resp.status_code == 400, await resp.get_data()
    assert resp.content_type == "application/problem+json"


def users_cli(settings: AuditSettings, *args: str) -> str:
    env = {
        "AUDITSTREAM_MONGO_URI": settings.mongo_uri or "",
        "AUDITSTREAM_MONGO_DB": settings.mongo_db,
    }
    result = CliRunner().invoke(main, ["users", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


async def seconds_until_refused(client: Client, token: str, limit: float) -> float:
    """Poll a read with ``token`` until it is 401; the seconds that took."""
    headers = {"Authorization": f"Bearer {token}"}
    start = time.monotonic()
    while time.monotonic() - start < limit:
        resp = await client.get("/v1/events", headers=headers)
        if resp.status_code == 401:
            assert "revoked" in (await resp.get_json())["detail"]
            return time.monotonic() - start
        assert resp.status_code == 200
        await asyncio.sleep(0.1)
    raise AssertionError(f"token still accepted {limit} s after its account changed")


async def test_disabling_a_user_or_rotating_a_secret_revokes_its_tokens(
    settings: AuditSettings,
) -> None:
    window = 1.0
    s = settings.model_copy(update={"account_check_seconds": window})
    app = create_app(s)
    async with app.test_app():
        client = app.test_client()
        users = services(app).users
        await users.add("erin", "user", "erin-password", "acme", ["events:read"])
        await users.add("feed", "service", "feed-secret-0", "acme", ["events:read"])
        user_token = (await (await login(client, new_ip(), "erin", "erin-password")).get_json())[
            "access_token"
        ]
        basic = {"grant_type": "client_credentials", "client_id": "feed"}
        form = {**basic, "client_secret": "feed-secret-0"}
        svc_token = (await (await client.post("/v1/token", form=form)).get_json())["access_token"]
        dev_token = mint_token(s, subject="dev", tenant="acme", scopes=["events:read"])
        for tok in (user_token, svc_token, dev_token):
            ok = await client.get("/v1/events", headers={"Authorization": f"Bearer {tok}"})
            assert ok.status_code == 200

        await asyncio.to_thread(users_cli, s, "disable", "erin")
        took = await seconds_until_refused(client, user_token, window + 2)
        print(f"\ndisabled user's token refused after {took:.2f} s (cache {window} s)")
        assert took <= window + 0.5

        out = await asyncio.to_thread(users_cli, s, "rotate-secret", "feed")
        new_secret = out.split("client_secret=", 1)[1].split()[0]
        took = await seconds_until_refused(client, svc_token, window + 2)
        print(f"rotated service account's token refused after {took:.2f} s")
        assert took <= window + 0.5
        old = await client.post("/v1/token", form=form)
        assert old.status_code == 401
        fresh = await client.post("/v1/token", form={**basic, "client_secret": new_secret})
        fresh_token = (await fresh.get_json())["access_token"]
        for tok in (fresh_token, dev_token):  # not revoked: a new token, a non-account subject
            ok = await client.get("/v1/events", headers={"Authorization": f"Bearer {tok}"})
            assert ok.status_code == 200


async def test_a_rehash_on_login_never_undoes_a_concurrent_rotation(
    api: Quart, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from argon2 import PasswordHasher

    from query_api import users as users_module

    store = services(api).users
    weak = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # login rehashes it
    await store._coll.insert_one(
        {
            "_id": "gus",
            "kind": "user",
            "secret_hash": weak.hash("old-password"),
            "tenant": "acme",
            "scopes": ["events:read"],
            "disabled": False,
        }
    )
    entered, release = threading.Event(), threading.Event()
    real_verify = users_module._verify

    def slow_verify(stored: str, secret: str) -> bool:
        entered.set()
        release.wait(10)
        return real_verify(stored, secret)

    monkeypatch.setattr(users_module, "_verify", slow_verify)
    pending = asyncio.create_task(store.login("gus", "old-password", "user"))
    await asyncio.to_thread(entered.wait, 10)
    monkeypatch.setattr(users_module, "_verify", real_verify)
    assert await store.rotate_secret("gus", "new-password") is not None
    release.set()
    outcome, _ = await pending  # the old password was right when it was checked
    assert outcome is users_module.Login.OK
    # ... but its rehash must not have written the old password back over the new one
    assert (await store.login("gus", "new-password", "user"))[0] is users_module.Login.OK
    assert (await store.login("gus", "old-password", "user"))[0] is not users_module.Login.OK


async def test_credentials_given_twice_are_refused(
    api: Quart, client: Client, token: Callable[..., str]
) -> None:
    await services(api).users.add("hal", "service", "hal-secret-1", "acme", ["events:read"])
    await services(api).users.add("ida", "service", "ida-secret-1", "acme", ["events:read"])
    basic = "Basic " + base64.b64encode(b"hal:hal-secret-1").decode()
    # RFC 6749 2.3: one client authentication method per request; Basic used to win silently.
    both = await client.post(
        "/v1/token",
        form={"grant_type": "client_credentials", "client_id": "ida", "client_secret": "x"},
        headers={"Authorization": basic},
    )
    assert both.status_code == 400 and (await both.get_json())["error"] == "invalid_request"
    # Two Authorization headers: the first was taken.
    good, other = token("acme", "events:read"), token("globex", "events:read")
    headers = Headers([("Authorization", f"Bearer {good}"), ("Authorization", f"Bearer {other}")])
    resp = await client.get("/v1/events", headers=headers)
    assert resp.status_code == 401, await resp.get_data()


async def test_users_rotate_secret_for_a_user_and_an_unknown_name(api: Quart) -> None:
    s = api_state(api).settings
    store = services(api).users
    await store.add("jan", "user", "jan-password-1", "acme", ["events:read"])
    env = {"AUDITSTREAM_MONGO_URI": s.mongo_uri or "", "AUDITSTREAM_MONGO_DB": s.mongo_db}

    def run(*args: str, stdin: str | None = None) -> Any:
        return CliRunner().invoke(main, ["users", *args], input=stdin, env=env)

    done = await asyncio.to_thread(
        run, "rotate-secret", "jan", "--password-stdin", stdin="jan-password-2\n"
    )
    assert done.exit_code == 0 and "client_secret" not in done.output, done.output
    assert (await store.login("jan", "jan-password-2", "user"))[0].value == "ok"
    assert (await store.login("jan", "jan-password-1", "user"))[0].value != "ok"
    assert (await store.token_state("jan")) == (False, 1)
    short = await asyncio.to_thread(
        run, "rotate-secret", "jan", "--password-stdin", stdin="short\n"
    )
    assert short.exit_code == 1 and "at least 8" in short.output
    unknown = await asyncio.to_thread(run, "rotate-secret", "nobody-here")
    assert unknown.exit_code == 1 and "no account" in unknown.output


async def test_lockouts_survive_a_redis_restart(api: Quart, client: Client) -> None:
    s = api_state(api).settings
    name, ip = f"kim-{uuid.uuid4().hex[:8]}", new_ip()
    await services(api).users.add(name, "user", "right-password", "acme", ["events:read"])
    for i in range(s.login_max_failures_per_user):
        assert (await login(client, ip, name, f"guess-{i}")).status_code == 400
    assert (await login(client, ip, name, "right-password")).status_code == 429
    spray_ip = new_ip()  # one IP at its limit, spread over many names
    for i in range(s.login_max_failures_per_ip):
        assert (await login(client, spray_ip, f"n{i}-{name}", "x")).status_code == 400
    redis = Redis.from_url(s.redis_url or "")
    try:
        await redis.flushdb()  # what a restart of a Redis without persistence leaves
    finally:
        await redis.aclose()
    locked = await login(client, new_ip(), name, "right-password")
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    assert (await login(client, spray_ip, f"other-{name}", "x")).status_code == 429
    # Names and addresses that were not locked out still log in.
    await services(api).users.add(f"ok-{name}", "user", "right-password", "acme", ["events:read"])
    assert (await login(client, new_ip(), f"ok-{name}", "right-password")).status_code == 200
