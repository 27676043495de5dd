"""``auditstream retention …`` and ``auditstream purge`` (issue 16; docs/archive.md, "Retention").

``retention set/show/clear`` work on MongoDB directly, with the validation of
``PUT /v1/retention``; like it, ``set`` and ``clear`` publish the change as the
tenant's audit event ``retention.policy.changed`` (actor ``cli:<user>``).
``purge`` runs the purge job once (a cron job, a Kubernetes CronJob) or every
``--every`` seconds: it deletes from MongoDB only what the archive holds and
verifies (stream_processor/retention.py).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson
from pydantic import ValidationError

from audit_events.retention import RetentionPolicy, policy_view, set_policy
from audit_events.settings import AuditSettings, load_settings, mongo_client_options
from auditstream.admin_events import SERVICE, cli_actor, publish_admin_event

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
            return await action(settings, client[settings.mongo_db])
        finally:
            await client.close()

    return asyncio.run(main())


def _print(view: Any) -> None:
    click.echo(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())


async def _publish_change(
    settings: AuditSettings, tenant: str, by: str, metadata: dict[str, Any]
) -> str | None:
    """Publish the change as the tenant's audit event, as ``PUT /v1/retention`` does
    (query_api/admin_requests.py ``publish_change``); None once Kafka acknowledged it,
    else why not (the change is saved either way)."""
    from query_api.retention import CHANGED_ACTION

    return await publish_admin_event(
        settings,
        {
            "tenant": tenant,
            "action": CHANGED_ACTION,
            "crud": "u",
            "actor": {"id": by, "type": "admin"},
            "targets": [{"type": "retention_policy", "id": tenant}],
            "source": {"service": SERVICE},
            "metadata": metadata,
        },
    )


def _save(tenant: str, days: int | None) -> None:
    try:
        RetentionPolicy(days=days)
    except ValidationError as exc:
        raise click.BadParameter(exc.errors()[0]["msg"], param_hint="--days") from None
    failure: list[str] = []

    async def action(settings: AuditSettings, db: Any) -> dict[str, Any]:
        by = cli_actor()
        saved = await set_policy(db, tenant, days, by=by)
        view = await policy_view(db, tenant, saved)
        why = await _publish_change(
            settings, tenant, by, {"days": days, "version": view["version"]}
        )
        view["audited"] = why is None
        failure.extend([why] if why is not None else [])
        return view

    _print(_run(action))
    if failure:
        click.echo(
            f"retention of {tenant} saved, but its audit event (retention.policy.changed) was not "
            f"published: {failure[0]}; the trail lacks this change",
            err=True,
        )
        sys.exit(1)


@click.group()
def retention() -> None:
    """A tenant's retention in the hot store (MongoDB); the archive keeps everything."""


@retention.command("set")
@click.argument("tenant")
@click.option(
    "--days", type=int, required=True, help="Keep events N days after they were received."
)
def set_retention(tenant: str, days: int) -> None:
    """Keep TENANT's events DAYS days in MongoDB; `auditstream purge` then deletes
    older ones once the archive holds them. The change is published as TENANT's
    audit event retention.policy.changed (exit 1 if Kafka did not take it: saved,
    but not in the trail)."""
    _save(tenant, days)


@retention.command("clear")
@click.argument("tenant")
def clear_retention(tenant: str) -> None:
    """Keep TENANT's events forever (the default); published like `set`."""
    _save(tenant, None)


@retention.command("show")
@click.argument("tenant")
def show_retention(tenant: str) -> None:
    """TENANT's policy and its last purge (JSON)."""

    async def action(settings: AuditSettings, db: Any) -> dict[str, Any]:
        return await policy_view(db, tenant)

    _print(_run(action))


@click.command()
@click.option(
    "--tenant", default=None, help="Only this tenant (default: every tenant with a policy)."
)
@click.option(
    "--every",
    type=float,
    default=None,
    help="Run again every SECONDS until stopped (default: once).",
)
def purge(tenant: str | None, every: float | None) -> None:
    """Delete events older than their tenant's retention from MongoDB, only those the
    archive holds and verifies; record a purge marker so the chain still verifies.

    Prints one JSON line per tenant: purged, through_seq, segment, note (why less
    or nothing was purged: not archived yet, or held back by a log stream that has
    not delivered those events). Exit 1 when a tenant's candidates could not be purged
    because the archive does not verify or the stored chain does not link.
    """
    from stream_processor.retention import run_purge

    settings = load_settings()
    while True:
        results = asyncio.run(run_purge(settings, tenant=tenant))
        failed = False
        for result in results:
            click.echo(orjson.dumps(result.as_dict()).decode())
            note = result.note or ""
            # a note may start with why a log stream held K back ("held at seq ...; ...")
            failed |= any(s in note for s in ("the archive does not verify", "the stored chain"))
        if every is None:
            sys.exit(1 if failed else 0)
        time.sleep(every)
