"""``POST /v1/token`` over real HTTP, accounts made with ``auditstream users``."""

from __future__ import annotations

import base64
import os

import httpx
import jwt
import pytest
from click.testing import CliRunner

from audit_events.settings import AuditSettings
from auditstream.cli import main
from tests.helpers import LiveApi, serve_api

pytestmark = pytest.mark.integration
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def cli(settings: AuditSettings, *args: str, stdin: str | None = None) -> str:
    env = {
        "AUDITSTREAM_MONGO_URI": settings.mongo_uri or "",
        "AUDITSTREAM_MONGO_DB": settings.mongo_db,
    }
    saved = {k: os.environ.get(k) for k in env}
    result = CliRunner().invoke(main, ["users", *args], input=stdin, env=env)
    assert {k: os.environ.get(k) for k in env} == saved
    assert result.exit_code == 0, result.output
    return result.output


def test_users_cli_add_list_disable(settings: AuditSettings) -> None:
    out = cli(settings, "add", "alice", "--tenant", "acme", "--password-stdin", stdin="pw-123456\n")
    assert "added user alice" in out
    svc = cli(
        settings,
        "add",
        "ingest",
        "--tenant",
        "acme,globex",
        "--scopes",
        "events:write",
        "--service",
    )
    assert "client_secret=" in svc
    listed = cli(settings, "list")
    assert listed.splitlines() == [
        "alice\tuser\tactive\ttenant=acme\tscopes=events:read",
        "ingest\tservice\tactive\ttenant=acme,globex\tscopes=events:write",
    ]
    assert "pw-123456" not in listed and "argon2" not in listed
    assert cli(settings, "disable", "alice") == "disabled alice\n"
    assert cli(settings, "list").splitlines()[0].startswith("alice\tuser\tdisabled")
    dup = CliRunner().invoke(
        main,
        ["users", "add", "alice", "--tenant", "acme", "--password-stdin"],
        input="another-pw\n",
        env={
            "AUDITSTREAM_MONGO_URI": settings.mongo_uri or "",
            "AUDITSTREAM_MONGO_DB": settings.mongo_db,
        },
    )
    assert dup.exit_code == 1 and "already exists" in dup.output


async def test_password_and_client_credentials_grants(
    http: httpx.AsyncClient, live: LiveApi, settings: AuditSettings
) -> None:
    await live.call(
        lambda s: s.users.add("alice", "user", "pw-123456", "acme", ["events:read", "events:write"])
    )
    await live.call(
        lambda s: s.users.add(
            "ingest", "service", "s3cret-s3cret", ["acme", "globex"], ["events:write"]
        )
    )
    resp = await http.post(
        "/v1/token", data={"grant_type": "password", "username": "alice", "password": "pw-123456"}
    )
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.json()
    assert (body["token_type"], body["expires_in"], body["scope"]) == (
        "bearer",
        3600,
        "events:read events:write",
    )
    assert settings.jwt_secret is not None
    claims = jwt.decode(
        body["access_token"], settings.jwt_secret.get_secret_value(), algorithms=["HS256"]
    )
    assert (claims["sub"], claims["tenant"], claims["exp"] - claims["iat"]) == (
        "alice",
        "acme",
        3600,
    )
    listed = await http.get(
        "/v1/events", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert listed.status_code == 200

    narrowed = await http.post(
        "/v1/token",
        data={
            "grant_type": "password",
            "username": "alice",
            "password": "pw-123456",
            "scope": "events:read",
        },
    )
    assert narrowed.json()["scope"] == "events:read"
    widened = await http.post(
        "/v1/token",
        data={
            "grant_type": "password",
            "username": "alice",
            "password": "pw-123456",
            "scope": "events:admin",
        },
    )
    assert (widened.status_code, widened.json()["error"]) == (400, "invalid_scope")

    basic = base64.b64encode(b"ingest:s3cret-s3cret").decode()
    svc = await http.post(
        "/v1/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert svc.status_code == 200
    in_form = await http.post(
        "/v1/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "ingest",
            "client_secret": "s3cret-s3cret",
        },
    )
    assert in_form.status_code == 200
    svc_claims = jwt.decode(
        in_form.json()["access_token"], settings.jwt_secret.get_secret_value(), algorithms=["HS256"]
    )
    assert svc_claims["tenant"] == ["acme", "globex"]
    # a service account cannot use the password grant, nor a user client_credentials
    cross = await http.post(
        "/v1/token",
        data={"grant_type": "password", "username": "ingest", "password": "s3cret-s3cret"},
    )
    assert (cross.status_code, cross.json()["error"]) == (400, "invalid_grant")


async def test_oauth2_errors(http: httpx.AsyncClient, live: LiveApi) -> None:
    await live.call(lambda s: s.users.add("bob", "user", "pw-123456", "acme", ["events:read"]))
    await live.call(
        lambda s: s.users.add("svc", "service", "s3cret-s3cret", "acme", ["events:read"])
    )
    await live.call(lambda s: s.users.disable("bob"))
    cases = {
        "disabled user": (
            {"grant_type": "password", "username": "bob", "password": "pw-123456"},
            400,
            "invalid_grant",
        ),
        "unknown user": (
            {"grant_type": "password", "username": "nobody", "password": "pw-123456"},
            400,
            "invalid_grant",
        ),
        "wrong client secret": (
            {"grant_type": "client_credentials", "client_id": "svc", "client_secret": "nope"},
            401,
            "invalid_client",
        ),
        "unsupported grant": (
            {"grant_type": "authorization_code", "code": "x"},
            400,
            "unsupported_grant_type",
        ),
        "missing grant": ({"username": "bob"}, 400, "invalid_request"),
        "missing password": ({"grant_type": "password", "username": "bob"}, 400, "invalid_request"),
    }
    for name, (form, status, error) in cases.items():
        resp = await http.post("/v1/token", data=form)
        assert (resp.status_code, resp.json()["error"]) == (status, error), name
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Basic")
    as_json = await http.post("/v1/token", json={"grant_type": "password"})
    assert (as_json.status_code, as_json.json()["error"]) == (400, "invalid_request")


async def test_failed_logins_are_rate_limited_per_user_and_per_ip(
    settings: AuditSettings,
) -> None:
    strict = settings.model_copy(
        update={"login_max_failures_per_user": 3, "login_max_failures_per_ip": 6}
    )
    api = serve_api(strict)
    try:
        await api.call(lambda s: s.users.add("carol", "user", "pw-123456", "acme", ["events:read"]))
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:

            async def login(user: str, pw: str) -> httpx.Response:
                return await client.post(
                    "/v1/token", data={"grant_type": "password", "username": user, "password": pw}
                )

            statuses = [(await login("carol", "wrong")).status_code for _ in range(3)]
            blocked = await login("carol", "pw-123456")  # right password, but throttled
            assert statuses == [400, 400, 400]
            assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
            # other names from the same IP: 3 more failures reach the IP limit (6)
            others = [(await login(f"user{i}", "wrong")).status_code for i in range(3)]
            after = await login("someone-else", "whatever")
            assert others == [400, 400, 400] and after.status_code == 429
    finally:
        api.stop()
