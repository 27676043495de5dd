"""``auditstream up``: the whole pipeline on one machine.

Starts (or reuses, when configured) Kafka, MongoDB and Redis, then one
processor worker and the API as child processes; prints the URLs and a
development token once ``/readyz`` answers 200; on Ctrl-C/SIGTERM stops
everything it started in reverse order.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import click
from pydantic import SecretStr

from audit_events.settings import ENV_PREFIX, AuditSettings, settings_env
from auditstream.embedded import (
    EmbeddedError,
    Server,
    kafka_server,
    mongo_server,
    redis_server,
    wait_for_port,
)
from auditstream.trust_cli import dev_checkpoint_env

DEV_SCOPES = ["events:read", "events:write", "events:admin"]


class AlreadyRunning(Exception):
    pass


@contextlib.contextmanager
def _single_instance(data_dir: Path) -> Iterator[IO[str]]:
    data_dir.mkdir(parents=True, exist_ok=True)
    lock_path = data_dir / "up.lock"
    handle: IO[str] = open(lock_path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        handle.close()
        raise AlreadyRunning(pid) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield handle
    finally:
        handle.close()


def _dev_secret(data_dir: Path) -> str:
    path = data_dir / "jwt_secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def _step(label: str) -> float:
    click.echo(f"  • {label} … ", nl=False)
    return time.monotonic()


def _done(started: float, note: str = "ok") -> None:
    click.secho(f"{note} ({time.monotonic() - started:.1f}s)", fg="green")


def _wait_ready(url: str, procs: list[Server], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for p in procs:
            if p.proc is not None and p.proc.poll() is not None:
                raise EmbeddedError(
                    f"{p.name} exited with status {p.proc.returncode}; see {p.log_path}"
                )
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise EmbeddedError(f"not ready after {timeout:.0f}s: {last}")


def run_up(settings: AuditSettings, timeout: float) -> int:
    data_dir = Path(settings.data_dir).resolve()
    try:
        with _single_instance(data_dir):
            return _run(settings, data_dir, timeout)
    except AlreadyRunning as exc:
        click.secho(
            f"auditstream up is already running (pid {exc}); stop it first.", fg="red", err=True
        )
        return 1


def _run(settings: AuditSettings, data_dir: Path, timeout: float) -> int:
    started: list[Server] = []
    stopping = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_signal)
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env[f"{ENV_PREFIX}DATA_DIR"] = str(data_dir)
    env.update(settings_env(settings))
    secret = (
        settings.jwt_secret.get_secret_value() if settings.jwt_secret else _dev_secret(data_dir)
    )
    env[f"{ENV_PREFIX}JWT_SECRET"] = secret
    env.update(dev_checkpoint_env(settings, data_dir))  # signed chain checkpoints
    click.secho("auditstream up — starting the pipeline", bold=True)
    try:
        for role, url, factory in (
            ("KAFKA_BOOTSTRAP", settings.kafka_bootstrap, kafka_server),
            ("MONGO_URI", settings.mongo_uri, mongo_server),
            ("REDIS_URL", settings.redis_url, redis_server),
        ):
            if url:
                click.echo(f"  • {role.split('_')[0].lower()}: using configured {url}")
                continue
            server = factory(data_dir)
            t = _step(f"starting {server.name} on 127.0.0.1:{server.port}")
            server.start()
            started.append(server)
            env[f"{ENV_PREFIX}{role}"] = server.url
            _done(t)
        python = sys.executable
        worker = Server(
            "processor",
            "processor worker",
            0,
            "",
            [python, "-m", "auditstream", "processor"],
            data_dir / "logs" / "processor.log",
        )
        api = Server(
            "api",
            "query API",
            settings.api_port,
            f"http://{settings.api_host}:{settings.api_port}",
            [python, "-m", "auditstream", "api"],
            data_dir / "logs" / "api.log",
        )
        for proc in (worker, api):
            t = _step(f"starting the {proc.name}")
            _spawn(proc, env)
            started.append(proc)
            _done(t)
        t = _step("waiting for the API to listen and /readyz to answer 200")
        wait_for_port(api.port, timeout, api.proc)
        _wait_ready(f"{api.url}/readyz", [worker, api], timeout)
        _done(t)
        from query_api.auth import mint_token

        dev = settings.model_copy(update={"jwt_secret": SecretStr(secret)})
        token = mint_token(
            dev, subject="dev", tenant="demo", scopes=DEV_SCOPES, ttl_seconds=12 * 3600
        )
        _banner(api.url, token, data_dir)
        while True:
            for proc in started:
                if proc.proc is not None and proc.proc.poll() is not None:
                    raise EmbeddedError(
                        f"{proc.name} exited with status "
                        f"{proc.proc.returncode}; see {proc.log_path}"
                    )
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("\nstopping …")
        return _shutdown(started, 0)
    except EmbeddedError as exc:
        click.secho(f"\nerror: {exc}", fg="red", err=True)
        return _shutdown(started, 1)


def _spawn(proc: Server, env: dict[str, str]) -> None:
    import subprocess

    proc.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(proc.log_path, "ab") as log:
        proc.proc = subprocess.Popen(
            proc.argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _shutdown(started: list[Server], code: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for server in reversed(started):
        t = _step(f"stopping {server.name}")
        server.stop()
        _done(t, "stopped")
    return code


def _banner(url: str, token: str, data_dir: Path) -> None:
    click.echo()
    click.secho("auditstream is ready", fg="green", bold=True)
    click.echo(f"  API     {url}")
    click.echo(f"  Docs    {url}/docs")
    click.echo(f"  Logs    {data_dir / 'logs'}")
    click.echo("  Token   (tenant demo, scopes events:read events:write events:admin, 12 h)")
    click.echo(f"  {token}")
    click.echo()
    click.echo("Try it:")
    click.echo(f"  export TOKEN={token}")
    click.echo(
        f"  curl -s -X POST '{url}/v1/events?wait=true' -H \"Authorization: Bearer $TOKEN\" "
        "-H 'Content-Type: application/json' \\\n"
        '    -d \'{"tenant":"demo","action":"invoice.update",'
        '"actor":{"id":"alice"},"targets":[{"type":"invoice","id":"42"}]}\''
    )
    click.echo(f"  curl -s '{url}/v1/events' -H \"Authorization: Bearer $TOKEN\"")
    click.echo()
    click.echo("Press Ctrl-C to stop everything.")
