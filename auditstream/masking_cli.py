"""``auditstream masking …``: a tenant's masking rules (issue 17; docs/masking.md).

Works on MongoDB directly, with the validation of ``PUT /v1/masking``. Each
``set``/``clear`` inserts a new rules version (who: ``cli:$USER``), applied by
the stream processor to events received from its ``effective_at`` on.
"""

from __future__ import annotations

import asyncio
import getpass
import secrets
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from pydantic import TypeAdapter, ValidationError

from audit_events.masking import (
    MASKING_COLLECTION,
    MaskingRules,
    latest_version,
    save_version,
    tenant_key,
    version_view,
)
from audit_events.schema import Tenant
from audit_events.settings import AuditSettings, load_settings, mongo_client_options

T = TypeVar("T")


def _run(action: Callable[[AuditSettings, Any], Awaitable[T]]) -> T:
    from pymongo import AsyncMongoClient

    settings = load_settings()
    settings.require("mongo_uri")

    async def main() -> T:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_uri, tz_aware=True, **mongo_client_options(settings)
        )
        try:
            return await action(settings, client[settings.mongo_db][MASKING_COLLECTION])
        finally:
            await client.close()

    return asyncio.run(main())


def _print(view: dict[str, Any]) -> None:
    click.echo(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())


def _parse_rules(rules: tuple[str, ...], from_file: str | None) -> MaskingRules:
    if from_file is not None and rules:
        raise click.UsageError("give rules as PATH=ACTION arguments or with --file, not both")
    try:
        if from_file is not None:
            raw = sys.stdin.buffer.read() if from_file == "-" else Path(from_file).read_bytes()
            data = orjson.loads(raw)
            if isinstance(data, list):  # a bare list of rules
                data = {"rules": data}
        else:
            pairs = []
            for item in rules:
                path, sep, action = item.rpartition("=")
                if not sep:
                    raise click.UsageError(f"a rule is PATH=ACTION, not {item!r}")
                pairs.append({"path": path, "action": action})
            data = {"rules": pairs}
        return MaskingRules.model_validate(data)
    except (OSError, orjson.JSONDecodeError) as exc:
        raise click.ClickException(f"cannot read the rules: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise click.ClickException(f"{loc}: {first['msg']}") from None


def _tenant(tenant: str) -> str:
    try:
        return TypeAdapter(Tenant).validate_python(tenant)
    except ValidationError:
        raise click.BadParameter(f"not a tenant name: {tenant!r}", param_hint="TENANT") from None


def _save(tenant: str, rules: MaskingRules) -> None:
    tenant = _tenant(tenant)

    async def action(settings: AuditSettings, coll: Any) -> dict[str, Any]:
        now = datetime.now(UTC)
        doc = await save_version(
            coll,
            tenant,
            rules,
            now=now,
            delay_seconds=settings.masking_delay_seconds,
            by=f"cli:{getpass.getuser()}",
        )
        return version_view(doc, tenant, now)

    _print(_run(action))


def dev_masking_env(settings: AuditSettings, data_dir: Path) -> dict[str, str]:
    """The masking secret for ``auditstream up``'s children: the configured one,
    otherwise a development secret kept under the data dir (``masking_secret``, 0600),
    so `hash` rules hash rather than redact and stay joinable across restarts."""
    if settings.masking_secret is not None:
        return {"AUDITSTREAM_MASKING_SECRET": settings.masking_secret.get_secret_value()}
    path = data_dir / "masking_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48) + "\n")
        path.chmod(0o600)
    return {"AUDITSTREAM_MASKING_SECRET": path.read_text().strip()}


@click.group()
def masking() -> None:
    """A tenant's masking rules, applied before events are stored (docs/masking.md)."""


@masking.command("set")
@click.argument("tenant")
@click.argument("rules", nargs=-1)
@click.option("--file", "from_file", help="Rules as JSON ({'rules': [...]} or a list); - = stdin.")
def set_rules(tenant: str, rules: tuple[str, ...], from_file: str | None) -> None:
    """Replace TENANT's rules with RULES (PATH=ACTION, e.g. metadata.email=hash).

    ACTION is redact, hash or truncate_ip; PATH starts with metadata, changes,
    context or actor. The new version applies to events received from its
    effective_at on (AUDITSTREAM_MASKING_DELAY_SECONDS from now).
    """
    parsed = _parse_rules(rules, from_file)
    if not parsed.rules:
        raise click.UsageError("no rules given (use `auditstream masking clear TENANT`)")
    _save(tenant, parsed)


@masking.command("clear")
@click.argument("tenant")
def clear_rules(tenant: str) -> None:
    """Stop masking TENANT's events (from the new version's effective_at on)."""
    _save(tenant, MaskingRules())


@masking.command("show")
@click.argument("tenant")
def show_rules(tenant: str) -> None:
    """TENANT's newest rules version as JSON."""

    async def action(settings: AuditSettings, coll: Any) -> dict[str, Any]:
        return version_view(await latest_version(coll, tenant), tenant, datetime.now(UTC))

    _print(_run(action))


@masking.command("key")
@click.argument("tenant")
def show_key(tenant: str) -> None:
    """TENANT's hash key (hex), for producers masking in the SDK; needs
    AUDITSTREAM_MASKING_SECRET. Treat it as a secret."""
    settings = load_settings()
    if settings.masking_secret is None:
        raise click.ClickException("AUDITSTREAM_MASKING_SECRET is not set")
    click.echo(tenant_key(settings.masking_secret.get_secret_value(), tenant).hex())
