"""``auditstream emit`` and ``auditstream loadgen``: publish events from the shell.

Both talk to Kafka directly through the producer SDK (AUDITSTREAM_KAFKA_BOOTSTRAP,
AUDITSTREAM_TOPIC_EVENTS, AUDITSTREAM_KAFKA_IDEMPOTENCE).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import click
import orjson

from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings, load_settings
from producers.config import ProducerConfig
from producers.errors import BufferFull, InvalidEvent, ProducerError
from producers.producer import AuditProducer

CHUNK = 500


def _config(spool: Path | None, **overrides: Any) -> ProducerConfig:
    # a SettingsError becomes one line naming the setting, exit 2, in the command group
    settings: AuditSettings = load_settings()
    return ProducerConfig.from_settings(settings, spool_path=spool, **overrides)


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=what)
        out[key] = value
    return out


def _json_or_text(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


spool_option = click.option(
    "--spool",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="SQLite spool for events Kafka does not acknowledge (default: none, fail instead).",
)


@click.command()
@click.option("--tenant", help="Tenant (required for a single event).")
@click.option("--action", help="Dotted verb, e.g. invoice.update (required for a single event).")
@click.option("--actor", help="Actor id (a user unless --actor-type says otherwise).")
@click.option("--actor-type", default=None, help="Actor type, e.g. service.")
@click.option("--target", "targets", multiple=True, help="TYPE:ID of an affected object.")
@click.option("--crud", type=click.Choice(["c", "r", "u", "d"]), default=None)
@click.option("--outcome", type=click.Choice(["success", "failure", "denied"]), default=None)
@click.option("--description", default=None)
@click.option("--change", "changes", multiple=True, help="FIELD=OLD:NEW (JSON values allowed).")
@click.option("--meta", "meta", multiple=True, help="KEY=VALUE metadata (JSON values allowed).")
@click.option("--id", "event_id", default=None, help="Event id (idempotency key).")
@click.option(
    "--file",
    "-f",
    "source",
    type=click.File("r"),
    default=None,
    help="NDJSON events, one per line ('-' for stdin) instead of flags.",
)
@spool_option
def emit(
    tenant: str | None,
    action: str | None,
    actor: str | None,
    actor_type: str | None,
    targets: tuple[str, ...],
    crud: str | None,
    outcome: str | None,
    description: str | None,
    changes: tuple[str, ...],
    meta: tuple[str, ...],
    event_id: str | None,
    source: TextIO | None,
    spool: Path | None,
) -> None:
    """Publish one event from flags, or NDJSON events from --file/stdin.

    \b
      auditstream emit --tenant acme --action invoice.update --actor alice \\
          --target invoice:42 --change total=10:12
      auditstream emit -f events.ndjson      # or: ... | auditstream emit -f -

    With a file, every line is validated; rejected lines are reported with their
    number and reason, and the exit status is 1 if any line was rejected.
    """
    if source is None and not sys.stdin.isatty() and not (tenant or action):
        source = click.get_text_stream("stdin")
    if source is not None:
        sys.exit(asyncio.run(_emit_lines(source, _config(spool))))
    fields: dict[str, Any] = {"tenant": tenant, "action": action, "id": event_id}
    if actor:
        fields["actor"] = {"id": actor, **({"type": actor_type} if actor_type else {})}
    fields["targets"] = list(targets)
    fields.update(crud=crud, outcome=outcome, description=description)
    change_map = {}
    for field, spec in _pairs(changes, "--change").items():
        old, _, new = spec.partition(":")
        change_map[field] = (_json_or_text(old), _json_or_text(new))
    fields["changes"] = change_map
    fields["metadata"] = {k: _json_or_text(v) for k, v in _pairs(meta, "--meta").items()}
    sys.exit(asyncio.run(_emit_one(fields, _config(spool))))


async def _emit_one(fields: dict[str, Any], config: ProducerConfig) -> int:
    try:
        async with AuditProducer(config) as producer:
            receipt = await producer.emit(**fields)
    except InvalidEvent as exc:
        raise click.ClickException(str(exc)) from None
    except ProducerError as exc:
        raise click.ClickException(f"not published: {exc}") from None
    where = (
        f"partition {receipt.partition} offset {receipt.offset}"
        if receipt.status == "acknowledged"
        else "spooled until Kafka is reachable"
    )
    click.echo(f"{receipt.id} {receipt.status} ({where})")
    return 0


def _numbered(lines: TextIO) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield number, line


async def _emit_lines(lines: TextIO, config: ProducerConfig) -> int:
    """Validate every line, publish the valid ones in chunks, report; 1 if any rejected."""
    rejected: list[tuple[int, str]] = []
    accepted = spooled = 0
    try:
        async with AuditProducer(config) as producer:
            chunk: list[AuditEvent] = []
            numbered = list(_numbered(lines)) if lines.seekable() else None
            items = numbered if numbered is not None else _numbered(lines)
            with click.progressbar(
                items,
                length=len(numbered) if numbered is not None else None,
                label="emitting",
                file=sys.stderr,
            ) as bar:
                for number, line in bar:
                    try:
                        data = orjson.loads(line)
                        if not isinstance(data, dict):
                            raise InvalidEvent([("event", "a line must be a JSON object")])
                        chunk.append(producer.prepare(data))
                    except orjson.JSONDecodeError as exc:
                        rejected.append((number, f"not JSON: {exc}"))
                    except InvalidEvent as exc:
                        rejected.append((number, str(exc)))
                    if len(chunk) >= CHUNK:
                        receipts = await producer.emit_batch(chunk)
                        accepted += len(receipts)
                        spooled += sum(r.status == "spooled" for r in receipts)
                        chunk = []
                if chunk:
                    receipts = await producer.emit_batch(chunk)
                    accepted += len(receipts)
                    spooled += sum(r.status == "spooled" for r in receipts)
    except ProducerError as exc:
        raise click.ClickException(f"stopped after {accepted} accepted events: {exc}") from None
    for number, reason in rejected:
        click.echo(f"line {number}: {reason}", err=True)
    note = f" ({spooled} spooled)" if spooled else ""
    click.echo(f"accepted {accepted}{note}, rejected {len(rejected)}")
    return 1 if rejected else 0


@click.command()
@click.option("--rate", type=float, default=0.0, show_default=True, help="Events/s (0: max).")
@click.option("--count", type=int, default=10_000, show_default=True)
@click.option("--tenants", type=int, default=20, show_default=True)
@click.option("--seed", type=int, default=None, help="Same seed, same events (ids included).")
@spool_option
def loadgen(rate: float, count: int, tenants: int, seed: int | None, spool: Path | None) -> None:
    """Publish COUNT realistic events over TENANTS tenants (Zipf-skewed) at RATE/s."""
    if count < 1 or tenants < 1:
        raise click.BadParameter("--count and --tenants must be at least 1")
    acked, seconds = asyncio.run(_loadgen(rate, count, tenants, seed, _config(spool)))
    click.echo(
        f"published {count} events over {tenants} tenants in {seconds:.2f}s "
        f"({count / seconds:,.0f}/s), acknowledged {acked}"
    )


async def _loadgen(
    rate: float, count: int, tenants: int, seed: int | None, config: ProducerConfig
) -> tuple[int, float]:
    from producers.loadgen import generate_events

    started = time.perf_counter()
    async with AuditProducer(config) as producer:
        for sent, event in enumerate(generate_events(count, tenants, seed), start=1):
            await emit_paced(producer, event)
            if rate and sent % max(1, int(rate / 50)) == 0:
                ahead = sent / rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
        acked = producer.stats().acknowledged
    return acked, time.perf_counter() - started


async def emit_paced(producer: AuditProducer, event: AuditEvent) -> None:
    """``emit_nowait``, waiting while the buffer is full (backpressure, no spool needed)."""
    while True:
        try:
            producer.emit_nowait(event)
            return
        except BufferFull:
            await asyncio.sleep(0.002)
