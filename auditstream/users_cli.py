"""``auditstream users add|list|disable|rotate-secret``: accounts for ``POST /v1/token``.

Users log in with the OAuth2 password grant; service accounts (``--service``)
with client_credentials. Secrets are stored as argon2id hashes only. Disabling
an account or rotating its secret revokes the tokens issued before: the API
refuses them within ``AUDITSTREAM_ACCOUNT_CHECK_SECONDS`` (5 s).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from audit_events.settings import load_settings, mongo_client_options
from audit_events.storage import USERS_COLLECTION

T = TypeVar("T")


def _run(action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(store)`` against the configured MongoDB."""
    from pymongo import AsyncMongoClient

    from query_api.users import UserStore

    settings = load_settings()  # a SettingsError: one line, exit 2 (the command group)
    settings.require("mongo_uri")

    async def main() -> T:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_uri, tz_aware=True, **mongo_client_options(settings)
        )
        try:
            return await action(UserStore(client[settings.mongo_db][USERS_COLLECTION]))
        finally:
            await client.close()

    return asyncio.run(main())


@click.group()
def users() -> None:
    """Manage users and service accounts (stored in MongoDB, argon2-hashed)."""


@users.command("add")
@click.argument("name")
@click.option("--tenant", required=True, help="Tenant claim: one tenant, a,b,c, or '*'.")
@click.option("--scopes", default="events:read", show_default=True, help="Space-separated scopes.")
@click.option(
    "--service", is_flag=True, help="A service account (client_credentials); prints its secret."
)
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from stdin instead of a prompt."
)
def add(name: str, tenant: str, scopes: str, service: bool, password_stdin: bool) -> None:
    """Create user (or service account) NAME."""
    from query_api.users import AccountError, new_client_secret

    tenants: str | list[str] = tenant if tenant == "*" or "," not in tenant else tenant.split(",")
    if service:
        secret = new_client_secret()
    elif password_stdin:
        secret = sys.stdin.readline().rstrip("\n")
    else:
        secret = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    kind = "service" if service else "user"
    try:
        account = _run(lambda store: store.add(name, kind, secret, tenants, scopes.split()))
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"added {account.kind} {account.name} (tenant {tenant}, scopes {scopes})")
    if service:
        click.echo(f"client_id={name}")
        click.echo(f"client_secret={secret}  (shown once; only its hash is stored)")


@users.command("list")
def list_() -> None:
    """List accounts (never their secrets)."""
    accounts = _run(lambda store: store.list())
    for a in accounts:
        tenant = a.tenant if isinstance(a.tenant, str) else ",".join(a.tenant)
        state = "disabled" if a.disabled else "active"
        click.echo(f"{a.name}\t{a.kind}\t{state}\ttenant={tenant}\tscopes={' '.join(a.scopes)}")


@users.command("disable")
@click.argument("name")
def disable(name: str) -> None:
    """Disable NAME: no new tokens, and the API refuses its issued ones within
    AUDITSTREAM_ACCOUNT_CHECK_SECONDS (5 s)."""
    if not _run(lambda store: store.disable(name)):
        raise click.ClickException(f"no account {name!r}")
    click.echo(f"disabled {name}")


@users.command("rotate-secret")
@click.argument("name")
@click.option(
    "--password-stdin", is_flag=True, help="A user: read the new password from stdin, no prompt."
)
def rotate_secret(name: str, password_stdin: bool) -> None:
    """Give NAME a new secret and revoke its issued tokens (refused within
    AUDITSTREAM_ACCOUNT_CHECK_SECONDS, 5 s). A service account gets a generated
    secret, printed once; a user is asked for a new password."""
    from query_api.users import AccountError, new_client_secret

    accounts = _run(lambda store: store.list())
    account = next((a for a in accounts if a.name == name), None)
    if account is None:
        raise click.ClickException(f"no account {name!r}")
    if account.kind == "service":
        secret = new_client_secret()
    elif password_stdin:
        secret = sys.stdin.readline().rstrip("\n")
    else:
        secret = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    try:
        rotated = _run(lambda store: store.rotate_secret(name, secret))
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    if rotated is None:
        raise click.ClickException(f"no account {name!r}")
    click.echo(f"rotated the secret of {name}; tokens issued before are revoked")
    if account.kind == "service":
        click.echo(f"client_secret={secret}  (shown once; only its hash is stored)")
