"""``auditstream archiver`` and ``auditstream archive verify | status``."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from audit_events.settings import load_settings


@click.command("archiver")
def archiver() -> None:
    """Run the archiver: copy the events and checkpoints topics into segment files.

    Every record (key, value, headers, timestamp, partition, offset) goes into
    immutable gzip NDJSON segments under AUDITSTREAM_ARCHIVE_DIR (default
    <data dir>/archive), or in the S3-compatible bucket AUDITSTREAM_ARCHIVE_S3_BUCKET
    when set (AUDITSTREAM_ARCHIVE_S3_PREFIX, _ENDPOINT, _REGION, _ACCESS_KEY_ID,
    _SECRET_ACCESS_KEY), listed in a hash-chained manifest. Offsets (consumer
    group AUDITSTREAM_ARCHIVER_GROUP) are committed only once a segment and its
    manifest entry are durable (fsync'd, or the object store acknowledged the
    PUT); while the store is down the archiver retries and commits nothing. A
    topic whose history restarted starts a new epoch; older segments are never
    overwritten. SIGTERM publishes what is buffered, then exits. One archiver
    per archive.
    """
    from stream_processor.archive.archiver import ArchiveBusy, run_archiver

    try:
        run_archiver(load_settings())
    except ArchiveBusy as exc:
        raise click.ClickException(str(exc)) from None


@click.group("archive")
def archive() -> None:
    """Check the archive the archiver writes (see docs/archive.md)."""


def _storage(root: str | None) -> Any:
    from stream_processor.archive.storage import DirectoryStorage, archive_storage

    return DirectoryStorage(root) if root else archive_storage(load_settings())


@archive.command("verify")
@click.option(
    "--dir",
    "root",
    default=None,
    help="Archive directory (default: settings: the S3 bucket when set, else the directory).",
)
def verify(root: str | None) -> None:
    """Check the manifest's hash chain, every segment's SHA-256, record counts and offsets.

    Names each problem (missing segment, altered segment, reordered entries,
    broken chain, gap, unlisted segment file, ...). Exit status 0 when the
    archive verifies, 1 otherwise.
    """
    from audit_events.objectstore import ObjectStoreError
    from stream_processor.archive.verify import verify_archive

    storage = _storage(root)
    path = storage.describe()
    try:
        report = verify_archive(storage)
    except ObjectStoreError as exc:
        raise click.ClickException(f"cannot read the archive: {exc}") from None
    for problem in report.problems:
        click.secho(problem.line(), fg="red")
    status = "ok" if report.ok else f"{len(report.problems)} problems"
    click.echo(
        f"{path}: {report.entries} entries, {report.segments_checked} segments, "
        f"{report.records} records, {report.bytes:,} bytes: {status}"
    )
    sys.exit(0 if report.ok else 1)


@archive.command("status")
@click.option(
    "--dir",
    "root",
    default=None,
    help="Archive directory (default: settings: the S3 bucket when set, else the directory).",
)
@click.option("--offline", is_flag=True, help="Do not ask Kafka (no lag).")
def status(root: str | None, offline: bool) -> None:
    """Last segment and lag (records and seconds) of every partition."""
    from audit_events.objectstore import ObjectStoreError

    settings = load_settings()
    storage = _storage(root)
    path = storage.describe()
    try:
        rows = _status(storage, settings, offline)
    except ObjectStoreError as exc:
        raise click.ClickException(f"cannot read the archive: {exc}") from None
    if not rows:
        click.echo(f"{path}: nothing archived")
    for r in rows:
        lag = (
            ""
            if r.lag_records is None
            else f" lag {r.lag_records} records / {r.lag_seconds or 0:.1f}s"
        )
        last = f" last {r.last_segment} at {r.last_written}" if r.last_segment else ""
        click.echo(
            f"{r.topic}/{r.partition} epoch {r.epoch} archived to {r.archived_to} "
            f"({r.segments} segments){lag}{last}" + (f" [{r.note}]" if r.note else "")
        )


def _status(storage: Any, settings: Any, offline: bool) -> list[Any]:
    from audit_events.connections import kafka_client_options
    from stream_processor.archive.status import archive_status

    return asyncio.run(
        archive_status(
            storage,
            None if offline else settings.kafka_bootstrap,
            [settings.topic_events, settings.topic_checkpoints],
            kafka_client_options(settings),
        )
    )
