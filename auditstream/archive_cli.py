"""``auditstream archiver`` and ``auditstream archive verify | status``."""

from __future__ import annotations

import asyncio
import sys

import click

from audit_events.settings import load_settings


@click.command("archiver")
def archiver() -> None:
    """Run the archiver: copy the events and checkpoints topics into segment files.

    Every record (key, value, headers, timestamp, partition, offset) goes into
    immutable gzip NDJSON segments under AUDITSTREAM_ARCHIVE_DIR (default
    <data dir>/archive), listed in a hash-chained manifest. Offsets (consumer
    group AUDITSTREAM_ARCHIVER_GROUP) are committed only once a segment and its
    manifest entry are fsync'd. A topic whose history restarted starts a new
    epoch; older segments are never overwritten. SIGTERM publishes what is
    buffered, then exits. One archiver per archive directory (a lock file).
    """
    from stream_processor.archive.archiver import ArchiveBusy, run_archiver

    try:
        run_archiver(load_settings())
    except ArchiveBusy as exc:
        raise click.ClickException(str(exc)) from None


@click.group("archive")
def archive() -> None:
    """Check the archive the archiver writes (see docs/archive.md)."""


@archive.command("verify")
@click.option("--dir", "root", default=None, help="Archive directory (default: settings).")
def verify(root: str | None) -> None:
    """Check the manifest's hash chain, every segment's SHA-256, record counts and offsets.

    Names each problem (missing segment, altered segment, reordered entries,
    broken chain, gap, unlisted segment file, ...). Exit status 0 when the
    archive verifies, 1 otherwise.
    """
    from stream_processor.archive.verify import verify_archive

    path = root or load_settings().archive_path()
    report = verify_archive(path)
    for problem in report.problems:
        click.secho(problem.line(), fg="red")
    status = "ok" if report.ok else f"{len(report.problems)} problems"
    click.echo(
        f"{path}: {report.entries} entries, {report.segments_checked} segments, "
        f"{report.records} records, {report.bytes:,} bytes: {status}"
    )
    sys.exit(0 if report.ok else 1)


@archive.command("status")
@click.option("--dir", "root", default=None, help="Archive directory (default: settings).")
@click.option("--offline", is_flag=True, help="Do not ask Kafka (no lag).")
def status(root: str | None, offline: bool) -> None:
    """Last segment and lag (records and seconds) of every partition."""
    from audit_events.connections import kafka_client_options
    from stream_processor.archive.status import archive_status

    settings = load_settings()
    path = root or settings.archive_path()
    rows = asyncio.run(
        archive_status(
            path,
            None if offline else settings.kafka_bootstrap,
            [settings.topic_events, settings.topic_checkpoints],
            kafka_client_options(settings),
        )
    )
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
