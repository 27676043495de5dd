"""``auditstream keys generate | verify | replay`` — the trust commands."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from audit_events.chain import (
    checkpoint_keys,
    control_keys,
    generate_keypair,
    load_private_key,
    public_key_b64,
)
from audit_events.codec import _parse_time
from audit_events.retention import describe_marker
from audit_events.settings import AuditSettings, load_settings, mongo_client_options
from audit_events.storage import EVENTS_COLLECTION
from audit_events.store_adapter import chain_head


def _settings() -> AuditSettings:
    """The settings; a SettingsError becomes one line, exit 2, in the command group."""
    settings = load_settings()
    settings.require("mongo_uri")
    return settings


def _time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return _parse_time(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an RFC 3339 time") from None


@click.group("keys")
def keys() -> None:
    """Checkpoint signing keys (Ed25519)."""


@keys.command("generate")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write checkpoint_signing_key / checkpoint_public_key files (0600) here.",
)
def keys_generate(out: Path | None) -> None:
    """Print a new key pair as AUDITSTREAM_* settings (or write it under --out)."""
    private, public = generate_keypair()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, value in (("checkpoint_signing_key", private), ("checkpoint_public_key", public)):
            path = out / name
            path.write_text(value + "\n")
            path.chmod(0o600)
        click.echo(f"wrote {out / 'checkpoint_signing_key'} and {out / 'checkpoint_public_key'}")
        return
    click.echo(f"AUDITSTREAM_CHECKPOINT_SIGNING_KEY={private}")
    click.echo(f"AUDITSTREAM_CHECKPOINT_PUBLIC_KEY={public}")


@click.command("verify")
@click.option("--tenant", default=None, help="One tenant (default: every tenant in the store).")
@click.option("--since", default=None, help="Verify events received at or after (RFC 3339).")
@click.option("--until", default=None, help="... and before this time (RFC 3339).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--pushgateway",
    default=None,
    metavar="URL",
    help="Push the result to this Prometheus Pushgateway (job auditstream-verify):"
    " auditstream_verify_chains, auditstream_verify_failed_chains,"
    " auditstream_verify_last_run_timestamp_seconds (deploy/prometheus/alerts.yml).",
)
def verify(
    tenant: str | None, since: str | None, until: str | None, quiet: bool, pushgateway: str | None
) -> None:
    """Walk the tenant chains: content hashes, links, signed checkpoints, truncation.

    Also checks each control event's proof and that every erasure and correction
    is backed by one (AUDITSTREAM_CONTROL_PUBLIC_KEYS). A bad chain is reported
    by the first bad event's seq and id. Exit status 0 when every chain
    verifies, 1 otherwise.
    """
    settings = _settings()
    chains, failed = asyncio.run(_verify(settings, tenant, _time(since), _time(until), quiet))
    if pushgateway:
        push_verify_result(pushgateway, chains, failed)
    sys.exit(0 if failed == 0 else 1)


def push_verify_result(url: str, chains: int, failed: int, job: str = "auditstream-verify") -> None:
    """Push one scheduled verify's result for the verify-failure alert (a one-shot
    command has no endpoint to scrape, so it pushes: prometheus_client's client)."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    Gauge("auditstream_verify_chains", "Chains verified", registry=registry).set(chains)
    Gauge("auditstream_verify_failed_chains", "Chains that did not verify", registry=registry).set(
        failed
    )
    Gauge(
        "auditstream_verify_last_run_timestamp_seconds",
        "Unix time the verify run ended",
        registry=registry,
    ).set_to_current_time()
    push_to_gateway(url, job=job, registry=registry, timeout=10)


async def _verify(
    settings: AuditSettings,
    tenant: str | None,
    since: datetime | None,
    until: datetime | None,
    quiet: bool,
) -> tuple[int, int]:
    """Verify the chains; returns (chains verified, chains bad)."""
    from pymongo import AsyncMongoClient

    from query_api.verify import gather_checkpoints, known_tenants, verify_tenant

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(  # long walks: ops unbounded
        settings.mongo_uri, tz_aware=True, **mongo_client_options(settings, operations=False)
    )
    events = client[settings.mongo_db][EVENTS_COLLECTION]
    key = checkpoint_keys(settings)  # the current key and the retired ones, by key id
    if not key:
        click.secho("warning: no checkpoint public key configured", fg="yellow", err=True)
    failed = 0
    try:
        tenants = [tenant] if tenant else await known_tenants(settings, events)
        for name in tenants:
            checkpoints, sources = await gather_checkpoints(settings, events, name)
            head = await chain_head(events, name, {"seq": 1})
            total = int(head["seq"]) if head else 0
            started = time.perf_counter()
            out = open(os.devnull, "w") if quiet else None  # noqa: SIM115, ASYNC230
            with click.progressbar(length=total, label=name, file=out) as bar:
                done = 0

                def progress(n: int) -> None:
                    nonlocal done
                    bar.update(n - done)
                    done = n

                report = await verify_tenant(
                    events,
                    name,
                    checkpoints,
                    key,
                    since=since,
                    until=until,
                    on_progress=progress,
                    control_keys=control_keys(settings),
                )
            if out is not None:
                out.close()
            rate = report.checked / max(time.perf_counter() - started, 1e-9)
            kafka = "unreachable" if sources["kafka"] is None else sources["kafka"]
            line = (
                f"{name}: {report.checked} events checked ({rate:,.0f}/s), head seq "
                f"{report.head_seq}, checkpoints {report.checkpoints} "
                f"(mongodb {sources['mongodb']}, kafka {kafka}), "
                f"unsigned tail {report.unsigned_tail}, erased {report.erased}, "
                f"corrected {report.corrected}"
            )
            if report.purged:  # issue 16: the walk started after the purged, archived prefix
                line += "; " + describe_marker(report.purged)
            if report.ok:
                click.secho(f"ok  {line}", fg="green")
            else:
                failed += 1
                click.secho(
                    f"BAD {name}: first bad seq {report.first_bad_seq}"
                    + (f" (event {report.first_bad_id})" if report.first_bad_id else "")
                    + f": {report.reason} "
                    f"({report.detail}); {report.checked} events verified before it",
                    fg="red",
                )
    finally:
        await client.close()
    return len(tenants), failed


@click.command("replay")
@click.option("--since", default=None, help="Replay from this time (offsets-for-times).")
@click.option(
    "--fresh",
    is_flag=True,
    help="Start the rebuild over (drops events_replay, the replay's own copy) instead of "
    "resuming a crashed replay. Never touches the live store.",
)
@click.option(
    "--no-swap",
    is_flag=True,
    help="Only build events_replay; leave the live store as it is.",
)
@click.option("--batch", type=int, default=1000, show_default=True, help="Records per write.")
@click.option(
    "--no-archive",
    is_flag=True,
    help="Replay the events topic only, not the archiver's archive (AUDITSTREAM_ARCHIVE_DIR).",
)
def replay(since: str | None, fresh: bool, no_swap: bool, batch: int, no_archive: bool) -> None:
    """Rebuild the store from the archive and the events topic; swap it in only if complete.

    When the archiver's archive exists (<data dir>/archive, or
    AUDITSTREAM_ARCHIVE_DIR), its records come first, every epoch in order,
    then the topic from where the archive ends (from its start when the
    topic's history restarted since). With --since, the events received
    before it are copied from the live store, and both the archive and the
    topic are read from that time on.

    Builds a fresh collection (events_replay) while live ingestion continues,
    verifies it, then pauses writers briefly (see docs/chain.md) and swaps it
    in only when it covers the live store: every tenant's rebuilt chain reaches
    the stored head with the same hash, no tenant has fewer events, and the
    chains verify (hashes, links, signed checkpoints). Otherwise the live store
    stays untouched, events_replay is kept for inspection and one line says
    what the topic lacks (exit status 1). No option drops stored events.
    Resumable after a crash.
    """
    from audit_events.objectstore import ObjectStoreError
    from stream_processor.archive.reader import ArchiveError
    from stream_processor.replay import Replayer

    settings = _settings()
    settings.require("kafka_bootstrap")  # before the progress bar: one line, exit 2
    started = time.perf_counter()
    with click.progressbar(length=0, label="replaying", show_pos=True) as bar:

        def progress(done: int, total: int) -> None:
            bar.length = max(total, 1)
            rate = done / max(time.perf_counter() - started, 1e-9)
            bar.label = f"replaying ({rate:,.0f} events/s)"
            bar.update(done - bar.pos)

        try:
            result = asyncio.run(
                Replayer(
                    settings, batch_size=batch, on_progress=progress, archive=not no_archive
                ).run(since=_time(since), fresh=fresh, swap=not no_swap)
            )
        except ArchiveError as exc:
            click.secho(f"replay refused: the archive is damaged: {exc}", fg="red", err=True)
            sys.exit(1)
        except ObjectStoreError as exc:
            click.secho(
                f"replay refused: the archive cannot be read ({exc}); the live store is "
                "unchanged. Bring the archive back, or replay the topic alone with --no-archive",
                fg="red",
                err=True,
            )
            sys.exit(1)
    click.echo(
        f"{result.records} records in {result.seconds:.1f}s ({result.rate:,.0f} events/s): "
        f"{result.inserted} stored, {result.duplicates} duplicates, {result.rejected} rejected"
        + (" (resumed)" if result.resumed else "")
        + (
            f"; {result.archived_records} from the archive ({result.archive_epochs} "
            "partition histories)"
            if result.archived_records
            else ""
        )
    )
    if no_swap:
        click.echo("built events_replay; the live store is unchanged (--no-swap)")
        sys.exit(0)
    if result.refusal is not None:
        click.secho(result.refusal, fg="red", err=True)
        sys.exit(1)
    click.echo(
        f"swapped in; counts live {result.live_count} / replayed {result.replay_count}; "
        f"writers paused {result.fenced_seconds:.1f}s"
    )
    for report in result.reports:
        status = "ok " if report.ok else "BAD"
        click.echo(
            f"{status} {report.tenant}: {report.checked} checked"
            + ("" if report.ok else f"; seq {report.first_bad_seq} {report.reason}")
        )
    sys.exit(0 if result.ok else 1)


def dev_checkpoint_env(settings: AuditSettings, data_dir: Path) -> dict[str, str]:
    """Checkpoint key settings for child processes of ``auditstream up``.

    Uses the configured key; otherwise a development key pair kept under the
    data dir (``checkpoint_signing_key`` 0600, ``checkpoint_public_key``).
    """
    prefix = "AUDITSTREAM_CHECKPOINT_"
    if settings.checkpoint_signing_key is not None:
        env = {f"{prefix}SIGNING_KEY": settings.checkpoint_signing_key.get_secret_value()}
        if settings.checkpoint_public_key:
            env[f"{prefix}PUBLIC_KEY"] = settings.checkpoint_public_key
        return env
    private_path = data_dir / "checkpoint_signing_key"
    public_path = data_dir / "checkpoint_public_key"
    if not private_path.exists():
        private, public = generate_keypair()
        private_path.write_text(private + "\n")
        private_path.chmod(0o600)
        public_path.write_text(public + "\n")
    return {
        f"{prefix}SIGNING_KEY": private_path.read_text().strip(),
        f"{prefix}PUBLIC_KEY": public_path.read_text().strip(),
    }


CONTROL_SIGNING_ENV = "AUDITSTREAM_CONTROL_SIGNING_KEY"


def dev_control_env(settings: AuditSettings, data_dir: Path) -> dict[str, str]:
    """Control-event key settings for child processes of ``auditstream up``.

    The API signs corrections and erasures with the private key (``up`` gives
    it to the API only); every service gets the public keys. Uses the configured
    key; otherwise a development key kept under the data dir
    (``control_signing_key``, 0600).
    """
    if settings.control_signing_key is not None:
        private = settings.control_signing_key.get_secret_value()
    else:
        private_path = data_dir / "control_signing_key"
        if not private_path.exists():
            private_path.parent.mkdir(parents=True, exist_ok=True)
            private_path.write_text(generate_keypair()[0] + "\n")
            private_path.chmod(0o600)
        private = private_path.read_text().strip()
    publics = list(settings.control_public_keys)
    own = public_key_b64(load_private_key(private))
    if own not in publics:
        publics.append(own)
    return {CONTROL_SIGNING_ENV: private, "AUDITSTREAM_CONTROL_PUBLIC_KEYS": json.dumps(publics)}
