"""``auditstream streams …`` (destinations, dead letters) and ``auditstream streamer``.

The commands work on MongoDB directly, with the same validation as
``/v1/streams`` (audit_events/streams.py). Secrets are read from stdin or a
hidden prompt, never from the command line, and never printed. ``add``,
``update``, ``delete`` and ``redrive`` publish each change as the tenant's audit
event (``stream.destination.*``, actor ``cli:<user>``), as the API does; exit 1
when Kafka did not take it (the change is saved, but not in the trail).
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from pydantic import ValidationError

from audit_events.settings import AuditSettings, load_settings, mongo_client_options
from audit_events.storage import EVENTS_COLLECTION
from audit_events.stream_secrets import KEY_ENV, SecretKeyError, StreamSecrets, generate_key
from audit_events.streams import (
    DESTINATION_CREATED,
    DESTINATION_DELETED,
    DESTINATION_REDRIVEN,
    KINDS,
    STREAM_DEAD_LETTERS_COLLECTION,
    STREAMS_COLLECTION,
    StreamChangedConcurrently,
    StreamCreate,
    StreamFields,
    StreamLimitReached,
    audited_settings,
    destination_event,
    insert_in_a_slot,
    new_stream_document,
    save_stream_changes,
    stream_lag,
    stream_view,
    update_event,
    url_problem,
)
from auditstream.admin_events import SERVICE, cli_actor, publish_admin_event

T = TypeVar("T")
Db = Any


def _run(action: Callable[[AuditSettings, Db], Awaitable[T]]) -> T:
    from pymongo import AsyncMongoClient

    settings = load_settings()
    settings.require("mongo_uri")

    async def main() -> T:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_uri, tz_aware=True, **mongo_client_options(settings)
        )
        try:
            return await action(settings, client[settings.mongo_db])
        except SecretKeyError as exc:  # no key, or none that decrypts
            raise click.ClickException(str(exc)) from None
        finally:
            await client.close()

    return asyncio.run(main())


def _secret(from_stdin: bool, prompt: str) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    value: str = click.prompt(prompt, hide_input=True)
    return value


def _validate(model: type[StreamFields], data: dict[str, Any]) -> StreamFields:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise click.ClickException(f"{loc}: {first['msg']}") from None


def _check_url(settings: AuditSettings, url: str, kind: str) -> None:
    problem = url_problem(
        url,
        kind,
        allow_private=settings.streams_allow_private_hosts,
        allow_http=settings.streams_allow_http,
    )
    if problem:
        raise click.ClickException(problem)


def _filters(actions: str | None, outcomes: str | None) -> dict[str, Any] | None:
    if actions is None and outcomes is None:
        return None
    return {"actions": _split(actions), "outcomes": _split(outcomes)}


def _split(value: str | None) -> list[str]:
    return (value or "").replace(",", " ").split()


async def _status(db: Db, doc: dict[str, Any]) -> dict[str, Any]:
    view = stream_view(doc)
    lag, seconds = await stream_lag(db[EVENTS_COLLECTION], doc["tenant"], view["position"])
    view["lag_events"], view["lag_seconds"] = lag, seconds
    view["dead_letter_batches"] = await db[STREAM_DEAD_LETTERS_COLLECTION].count_documents(
        {"stream_id": doc["_id"]}
    )
    return view


async def _audit(settings: AuditSettings, event: dict[str, Any] | None) -> str | None:
    """Publish a change's audit event: None when published (or there is none), else
    the line saying it is not in the trail."""
    if event is None:
        return None
    why = await publish_admin_event(settings, event)
    if why is None:
        return None
    target = event["targets"][0]["id"]
    return (
        f"{target}: change saved, but its audit event ({event['action']}) was not "
        f"published: {why}; the trail lacks this change"
    )


def _unaudited(why: str | None) -> None:
    """After the command's output: exit 1 when the change is not in the trail."""
    if why is not None:
        click.echo(why, err=True)
        sys.exit(1)


def _line(v: dict[str, Any]) -> str:
    state = "enabled" if v["enabled"] else "disabled"
    err = f" last error {v['last_error_at']}: {v['last_error']}" if v.get("last_error") else ""
    return (
        f"{v['id']}  {v['tenant']}  {v['kind']}  {v['name']!r}  {v['url']}  {state}  "
        f"seq {v['position']}  lag {v['lag_events']} events / {v['lag_seconds']:.1f}s  "
        f"delivered {v['delivered']}  dead-letter batches {v['dead_letter_batches']}  "
        f"last success {v['last_success_at'] or '-'}{err}"
    )


@click.group("streams")
def streams() -> None:
    """Manage log-stream destinations (webhook, Splunk HEC, Datadog, syslog over TLS, S3;
    docs/streams.md).

    add, update, delete and redrive publish each change as the tenant's audit event
    (stream.destination.*, actor cli:<user>; never a secret) and exit 1 if Kafka did
    not take it (the change is saved). A tenant has at most 20 destinations."""


@streams.command("list")
@click.option("--tenant", default=None, help="Only this tenant's destinations.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of text.")
def list_(tenant: str | None, as_json: bool) -> None:
    """Every destination with its position, lag and health (never its secret)."""

    async def action(settings: AuditSettings, db: Db) -> list[dict[str, Any]]:
        query = {} if tenant is None else {"tenant": tenant}
        docs = await db[STREAMS_COLLECTION].find(query).sort("created_at", 1).to_list(None)
        return [await _status(db, d) for d in docs]

    for view in _run(action):
        click.echo(orjson.dumps(view).decode() if as_json else _line(view))


@streams.command("add")
@click.option("--tenant", required=True)
@click.option("--kind", required=True, type=click.Choice(KINDS))
@click.option("--name", required=True)
@click.option("--url", default=None, help="Destination URL (Datadog: default US1 intake).")
@click.option("--secret-stdin", is_flag=True, help="Read the secret/token from stdin.")
@click.option("--actions", default=None, help="Only these actions (comma/space separated).")
@click.option("--outcomes", default=None, help="Only these outcomes (comma/space separated).")
@click.option("--batch-size", type=int, default=None)
@click.option("--from-beginning", is_flag=True, help="Deliver the tenant's whole chain.")
@click.option("--access-key-id", default=None, help="s3: the access key id (secret: its key).")
@click.option("--region", default=None, help="s3: the bucket's region (default us-east-1).")
def add(
    tenant: str,
    kind: str,
    name: str,
    url: str | None,
    secret_stdin: bool,
    actions: str | None,
    outcomes: str | None,
    batch_size: int | None,
    from_beginning: bool,
    access_key_id: str | None,
    region: str | None,
) -> None:
    """Add a destination; prints its id. The secret is the webhook signing secret,
    the Splunk HEC token, the Datadog API key or the S3 secret access key (syslog:
    none; url syslog+tls://host:6514; s3: url s3://bucket/prefix or
    s3+https://host:port/bucket/prefix, with --access-key-id)."""
    data: dict[str, Any] = {
        "kind": kind,
        "name": name,
        "start": "beginning" if from_beginning else "now",
    }
    if kind != "syslog" or secret_stdin:  # syslog needs none (TLS server auth)
        data["secret"] = _secret(secret_stdin, "Secret / token")
    if url is not None:
        data["url"] = url
    if batch_size is not None:
        data["batch_size"] = batch_size
    if access_key_id is not None:
        data["access_key_id"] = access_key_id
    if region is not None:
        data["region"] = region
    if (f := _filters(actions, outcomes)) is not None:
        data["filters"] = f
    body = _validate(StreamCreate, data)
    assert isinstance(body, StreamCreate)

    async def action(settings: AuditSettings, db: Db) -> tuple[str, str | None]:
        doc = new_stream_document(
            tenant,
            body,
            head_seq=0,
            by=cli_actor(),
            stream_id="st_" + secrets.token_hex(12),
            now=datetime.now(UTC),
            box=StreamSecrets.from_settings(settings),
        )
        _check_url(settings, doc["url"] or "", kind)
        if body.start == "now":
            head = await db[EVENTS_COLLECTION].find_one(
                {"tenant": tenant, "seq": {"$exists": True}}, {"seq": 1}, sort=[("seq", -1)]
            )
            doc["position"] = int(head["seq"]) if head else 0
        try:  # one of the tenant's slots, as POST /v1/streams takes
            await insert_in_a_slot(db[STREAMS_COLLECTION], doc)
        except (StreamLimitReached, StreamChangedConcurrently) as exc:
            raise click.ClickException(str(exc)) from None
        metadata = {**audited_settings(doc), "position": doc["position"]}
        event = destination_event(
            doc, DESTINATION_CREATED, actor=cli_actor(), service=SERVICE, metadata=metadata
        )
        return str(doc["_id"]), await _audit(settings, event)

    stream_id, why = _run(action)
    click.echo(stream_id)
    _unaudited(why)


@streams.command("show")
@click.argument("stream_id")
def show(stream_id: str) -> None:
    """One destination as JSON: configuration (no secret), lag, last success, last error."""

    async def action(settings: AuditSettings, db: Db) -> dict[str, Any] | None:
        doc = await db[STREAMS_COLLECTION].find_one({"_id": stream_id})
        return None if doc is None else await _status(db, doc)

    view = _run(action)
    if view is None:
        raise click.ClickException(f"no stream {stream_id!r}")
    click.echo(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())


@streams.command("update")
@click.argument("stream_id")
@click.option("--name", default=None)
@click.option("--url", default=None)
@click.option(
    "--rotate-secret",
    is_flag=True,
    help="Read a new secret (stdin with --secret-stdin); the old one stays valid for the "
    "overlap (AUDITSTREAM_STREAMS_SECRET_OVERLAP_SECONDS).",
)
@click.option("--secret-stdin", is_flag=True)
@click.option("--actions", default=None)
@click.option("--outcomes", default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--enable/--disable", default=None)
def update(
    stream_id: str,
    name: str | None,
    url: str | None,
    rotate_secret: bool,
    secret_stdin: bool,
    actions: str | None,
    outcomes: str | None,
    batch_size: int | None,
    enable: bool | None,
) -> None:
    """Change the named fields of a destination."""
    data: dict[str, Any] = {}
    for key, value in (("name", name), ("url", url), ("batch_size", batch_size)):
        if value is not None:
            data[key] = value
    if enable is not None:
        data["enabled"] = enable
    if (f := _filters(actions, outcomes)) is not None:
        data["filters"] = f
    if rotate_secret:
        data["secret"] = _secret(secret_stdin, "New secret / token")
    body = _validate(StreamFields, data)

    async def action(settings: AuditSettings, db: Db) -> tuple[bool, str | None]:
        doc = await db[STREAMS_COLLECTION].find_one({"_id": stream_id})
        if doc is None:
            return False, None
        if body.url is not None:
            _check_url(settings, body.url, doc["kind"])
        try:  # as PUT /v1/streams/{id}: a concurrent rotation is chained, not lost
            saved = await save_stream_changes(
                db[STREAMS_COLLECTION],
                {"_id": stream_id},
                body,
                overlap_seconds=settings.streams_secret_overlap_seconds,
                box=StreamSecrets.from_settings(settings),
            )
        except StreamChangedConcurrently as exc:
            raise click.ClickException(str(exc)) from None
        if saved is None:  # deleted meanwhile
            return False, None
        event = update_event(*saved, actor=cli_actor(), service=SERVICE)  # None: no change
        return True, await _audit(settings, event)

    found, why = _run(action)
    if not found:
        raise click.ClickException(f"no stream {stream_id!r}")
    click.echo(f"{stream_id} updated")
    _unaudited(why)


def dev_streams_env(settings: AuditSettings, data_dir: Path) -> dict[str, str]:
    """The destination-secret key for ``auditstream up``'s children: the configured
    one, otherwise a development key kept under the data dir (``streams_secret_key``,
    0600), so secrets stored by one run still open in the next."""
    if settings.streams_secret_key is not None:
        return {KEY_ENV: settings.streams_secret_key.get_secret_value()}
    path = data_dir / "streams_secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(generate_key() + "\n")
        path.chmod(0o600)
    return {KEY_ENV: path.read_text().strip()}


@streams.command("keygen")
def keygen() -> None:
    """Print a new key for AUDITSTREAM_STREAMS_SECRET_KEY (Fernet, 32 random bytes).

    Give it to the API, this CLI and the stream worker only. To rotate: the new
    key as AUDITSTREAM_STREAMS_SECRET_KEY, the old one in
    AUDITSTREAM_STREAMS_SECRET_RETIRED_KEYS, run `auditstream streams
    encrypt-secrets`, then drop the retired key.
    """
    click.echo(generate_key())


@streams.command("encrypt-secrets")
def encrypt_secrets() -> None:
    """Re-encrypt every destination's secrets under the current key.

    Encrypts secrets stored in plain (before encryption at rest) and those
    encrypted with a retired key (AUDITSTREAM_STREAMS_SECRET_RETIRED_KEYS). Safe
    to run again and beside a running API and stream worker: a destination
    changed meanwhile is left to its own update (which re-encrypts too).
    """

    async def action(settings: AuditSettings, db: Db) -> tuple[int, int, int, list[str]]:
        box = StreamSecrets.from_settings(settings)
        if not box.can_seal:
            raise SecretKeyError(f"{KEY_ENV} is not set")
        rewritten = current = changed = 0
        lost: list[str] = []
        async for doc in db[STREAMS_COLLECTION].find({}):
            if "secret" in box.unreadable(doc):
                lost.append(str(doc["_id"]))
                continue
            changes = box.migration(doc)
            if not changes:
                current += 1
                continue
            # Only if the stored values are still the ones read (a concurrent PUT wins).
            match = {"_id": doc["_id"], **{k: doc.get(k) for k in changes}}
            done = await db[STREAMS_COLLECTION].update_one(match, {"$set": changes})
            if done.modified_count:
                rewritten += 1
            else:
                changed += 1
        return rewritten, current, changed, lost

    rewritten, current, changed, lost = _run(action)
    click.echo(
        f"{rewritten} re-encrypted, {current} already under the current key"
        + (f", {changed} changed meanwhile (run again)" if changed else "")
    )
    if lost:  # a lost or missing retired key: give these destinations a new secret
        raise click.ClickException(
            f"{len(lost)} destination(s) have a secret no configured key decrypts "
            f"(set it again with `auditstream streams update ID --rotate-secret`): "
            + ", ".join(lost)
        )


@streams.command("delete")
@click.argument("stream_id")
def delete(stream_id: str) -> None:
    """Remove a destination and its dead-letter list."""

    async def action(settings: AuditSettings, db: Db) -> tuple[bool, str | None]:
        # the pre-image: this command removed it (a concurrent delete finds nothing)
        gone = await db[STREAMS_COLLECTION].find_one_and_delete({"_id": stream_id})
        await db[STREAM_DEAD_LETTERS_COLLECTION].delete_many({"stream_id": stream_id})
        if gone is None:
            return False, None
        event = destination_event(
            gone,
            DESTINATION_DELETED,
            actor=cli_actor(),
            service=SERVICE,
            metadata=audited_settings(gone),
        )
        return True, await _audit(settings, event)

    found, why = _run(action)
    if not found:
        raise click.ClickException(f"no stream {stream_id!r}")
    click.echo(f"{stream_id} deleted")
    _unaudited(why)


@streams.command("dead-letters")
@click.argument("stream_id")
def dead_letters(stream_id: str) -> None:
    """The destination's dead-letter batches: seq range, events, error, when."""

    async def action(settings: AuditSettings, db: Db) -> list[dict[str, Any]]:
        cursor = db[STREAM_DEAD_LETTERS_COLLECTION].find({"stream_id": stream_id}, {"events": 0})
        items: list[dict[str, Any]] = await cursor.sort([("at", 1), ("_id", 1)]).to_list(None)
        return items

    for item in _run(action):
        click.echo(f"seq {item['first_seq']}..{item['last_seq']}  at {item['at']}  {item['error']}")


@streams.command("redrive")
@click.argument("stream_id")
def redrive(stream_id: str) -> None:
    """Deliver the destination's dead-letter batches again, oldest first.

    A delivered batch leaves the list; the first failure stops (exit status 1)
    and keeps the rest. Events carry their ids as idempotency keys, so a
    receiver that already has some of them can drop the duplicates. A redrive
    that delivered batches is published as the tenant's audit event
    stream.destination.redriven (batches, events, the error that stopped it).
    """
    from stream_processor.streams.worker import redrive as run_redrive

    async def action(settings: AuditSettings, db: Db) -> tuple[int, int, str | None, str | None]:
        doc = await db[STREAMS_COLLECTION].find_one({"_id": stream_id})
        if doc is None:
            return 0, 0, f"no stream {stream_id!r}", None
        batches, events, error = await run_redrive(settings, stream_id)
        if not batches:  # nothing delivered: nothing changed
            return batches, events, error, None
        metadata = {"batches": batches, "events": events, "error": error}
        event = destination_event(
            doc, DESTINATION_REDRIVEN, actor=cli_actor(), service=SERVICE, metadata=metadata
        )
        return batches, events, error, await _audit(settings, event)

    batches, events, error, why = _run(action)
    click.echo(f"{stream_id}: {batches} batches, {events} events redelivered")
    if error:
        click.secho(f"stopped: {error}", fg="red")
    if why is not None:
        click.echo(why, err=True)
    if error or why is not None:
        sys.exit(1)


@click.command("streamer")
def streamer() -> None:
    """Run the stream worker: deliver every tenant's stored events to its destinations.

    Reads stored events by (tenant, seq) from MongoDB, so erased events go out
    as tombstones and corrections as correction events. Each destination keeps
    its own position (the last delivered seq), retries with exponential
    backoff and jitter, and after AUDITSTREAM_STREAMS_DEAD_LETTER_AFTER_SECONDS
    moves a failing batch to its dead-letter list (`auditstream streams
    redrive`). Several workers share destinations (one lease each).
    Prometheus metrics on AUDITSTREAM_STREAMER_METRICS_PORT.
    """
    from stream_processor.streams.worker import run_streamer

    run_streamer(load_settings())
