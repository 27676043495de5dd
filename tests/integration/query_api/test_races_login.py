"""Concurrent logins against the failed-login throttle (query_api/throttle.py), the API
in-process on the real redis-server and SecantusDB.

The throttle reserves every attempt before checking it, so no more than the limit of
attempts is ever checked at once; attempts beyond that wait for the ones under way
rather than being answered as if they had failed: N correct logins at once all get
their token, N wrong ones lock the name exactly as N one after the other do.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from query_api.state import api_state
from tests.helpers import LiveApi

pytestmark = pytest.mark.integration


def new_ip() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


async def service_login(client: Client, ip: str, name: str, secret: str) -> Any:
    form = {"grant_type": "client_credentials", "client_id": name, "client_secret": secret}
    return await client.post("/v1/token", form=form, scope_base={"client": (ip, 40000)})


async def test_concurrent_correct_logins_all_get_a_token(api: Quart, client: Client) -> None:
    """A service account's 12 replicas start at once (one address, per-user limit 5):
    every one gets its token; none is told it failed too often (429 for up to a
    window, 15 minutes by default)."""
    services = api_state(api).services
    assert services is not None
    limit = api_state(api).settings.login_max_failures_per_user
    n = 12
    assert n > limit
    name = f"svc-{uuid.uuid4().hex[:8]}"
    await services.users.add(name, "service", "svc-secret-0123", "acme", ["events:write"])
    ip = new_ip()
    started = time.monotonic()
    answers = await asyncio.gather(
        *(service_login(client, ip, name, "svc-secret-0123") for _ in range(n))
    )
    took = time.monotonic() - started
    statuses = [a.status_code for a in answers]
    print(
        f"\n{n} concurrent correct logins, limit {limit}:"
        f" {statuses.count(200)} tokens in {took:.2f} s"
    )
    assert statuses == [200] * n, [(a.status_code, a.headers.get("Retry-After")) for a in answers]


async def test_concurrent_wrong_and_right_logins_lock_as_a_serial_order_does(
    api: Quart, client: Client
) -> None:
    """Wrong secrets and the right one at once: exactly ``limit`` wrong ones are checked
    (401) and lock the name; the right one gets a token if it was checked before the
    lock, else 429; the rest 429 with the window's Retry-After."""
    services = api_state(api).services
    assert services is not None
    settings = api_state(api).settings
    limit = settings.login_max_failures_per_user
    name = f"svc-{uuid.uuid4().hex[:8]}"
    await services.users.add(name, "service", "svc-secret-0123", "acme", ["events:write"])
    secrets = [f"wrong-secret-{i}" for i in range(limit + 6)] + ["svc-secret-0123"]
    answers = await asyncio.gather(*(service_login(client, new_ip(), name, s) for s in secrets))
    statuses = [a.status_code for a in answers]
    assert statuses[:-1].count(401) == limit, statuses
    assert set(statuses[:-1]) == {401, 429} and statuses[-1] in (200, 429), statuses
    for a in answers:
        if a.status_code == 429:
            assert int(a.headers["Retry-After"]) > 1, a.headers  # locked: the window's end
    after = await service_login(client, new_ip(), name, "svc-secret-0123")
    assert after.status_code == 429


async def test_concurrent_account_changes_are_each_a_serial_step(api: Quart) -> None:
    """8 creations of one name at once: one account, 7 'already exists'. Then 4 secret
    rotations and 4 disables at once: token_version counts all 8 (each revoked the
    tokens before it), the account is disabled and its secret is one of the rotations'."""
    services = api_state(api).services
    assert services is not None
    users = services.users
    name = f"racer-{uuid.uuid4().hex[:8]}"
    made = await asyncio.gather(
        *(users.add(name, "user", f"password-{i}", "acme", ["events:read"]) for i in range(8)),
        return_exceptions=True,
    )
    created = [m for m in made if not isinstance(m, BaseException)]
    refused = [m for m in made if isinstance(m, BaseException)]
    assert len(created) == 1, made
    assert all("already exists" in str(e) for e in refused), refused
    changes = [users.rotate_secret(name, f"rotated-{i}") for i in range(4)]
    disables = [users.disable(name) for _ in range(4)]
    done = await asyncio.gather(*changes, *disables)
    assert all(d is not None and d is not False for d in done), done
    assert await users.token_state(name) == (True, 8)
    logins = [await users.login(name, f"rotated-{i}", "user") for i in range(4)]
    assert [outcome.value for outcome, _ in logins].count("disabled") == 1, logins


async def test_concurrent_correct_logins_from_one_address_all_get_a_token(
    api: Quart, client: Client
) -> None:
    """An office behind one NAT address logs in at 9:00: more users at once than the
    per-address limit (20), every one with the right password, all get their token."""
    services = api_state(api).services
    assert services is not None
    limit = api_state(api).settings.login_max_failures_per_ip
    names = [f"staff{i}-{uuid.uuid4().hex[:6]}" for i in range(limit + 4)]
    await asyncio.gather(
        *(services.users.add(n, "user", "staff-password", "acme", ["events:read"]) for n in names)
    )
    ip = new_ip()

    async def login(name: str) -> Any:
        form = {"grant_type": "password", "username": name, "password": "staff-password"}
        return await client.post("/v1/token", form=form, scope_base={"client": (ip, 40000)})

    answers = await asyncio.gather(*(login(name) for name in names))
    assert [a.status_code for a in answers] == [200] * len(names)


async def test_logins_abandoned_during_their_check_count_as_failures(
    live: LiveApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients that go away while their secret is being checked (the API on a real
    port; the connection closed, so the request is cancelled) spend their attempt as a
    failure: once ``limit`` of them did, the name is locked at once (429 with the
    window's Retry-After), instead of the next attempts waiting for checks that will
    never end."""
    limit = live.settings.login_max_failures_per_user
    name = f"svc-{uuid.uuid4().hex[:8]}"
    await live.call(
        lambda s: s.users.add(name, "service", "svc-secret-0123", "acme", ["events:write"])
    )
    users = live.services.users
    login = users.login
    checking: list[int] = []
    all_checking = threading.Event()

    async def held_login(*args: Any) -> Any:
        checking.append(1)
        if len(checking) >= limit:
            all_checking.set()
        await asyncio.sleep(3600)  # the check of an abandoned request never ends
        return await login(*args)

    monkeypatch.setattr(users, "login", held_login)
    form = {"grant_type": "client_credentials", "client_id": name}
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        tasks = [
            asyncio.create_task(http.post("/v1/token", data={**form, "client_secret": f"w{i}"}))
            for i in range(limit)
        ]
        assert await asyncio.to_thread(all_checking.wait, 20)
        for task in tasks:
            task.cancel()  # closes their connections: the API cancels the requests
        await asyncio.gather(*tasks, return_exceptions=True)
    monkeypatch.setattr(users, "login", login)
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        started = time.monotonic()
        after = await http.post("/v1/token", data={**form, "client_secret": "svc-secret-0123"})
    assert after.status_code == 429 and int(after.headers["Retry-After"]) > 1, after.headers
    assert time.monotonic() - started < 8  # not the 10 s wait for checks under way
