"""``auditstream up``: the whole pipeline on one machine.

Starts (or reuses, when configured) Kafka, MongoDB and Redis, then one
processor worker and the API as child processes; prints the URLs and a
development token once ``/readyz`` answers 200, then supervises them
(:class:`Supervisor`): whatever exits is restarted with capped exponential
backoff, one line each time, and nothing else is stopped because of it.

Ctrl-C/SIGTERM: the API stops first (no new 202s), then the worker drains the
consumer group's lag to 0 (progress every 2 s; the embedded Tansu keeps its log
in memory, so stopping it with a lag would lose accepted events), then the worker
and the servers stop. A second Ctrl-C/SIGTERM stops at once (exit status 1).
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
from auditstream.masking_cli import dev_masking_env
from auditstream.stack_state import publish as publish_stack
from auditstream.streams_cli import dev_streams_env
from auditstream.trust_cli import CONTROL_SIGNING_ENV, dev_checkpoint_env, dev_control_env
from auditstream.up_guard import (
    PortUse,
    Tracker,
    kill_hint,
    port_clash,
    previous_note,
    stale_stack,
    wait_for_previous_watchdog,
)

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


def _probe_url(settings: AuditSettings, path: str) -> str:
    """The processor worker's probe ``path``, as ``up`` reaches it."""
    host = settings.processor_metrics_host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.processor_metrics_port}{path}"


def _effective(settings: AuditSettings) -> AuditSettings:
    """``settings`` with AUDITSTREAM_PORT_OFFSET added to every port ``up`` uses
    (the children get the resulting ports and offset 0)."""
    off = settings.port_offset
    if not off:
        return settings
    names = [
        "api_port",
        "processor_metrics_port",
        "archiver_metrics_port",
        "streamer_metrics_port",
        "embedded_kafka_port",
        "embedded_mongo_port",
        "embedded_redis_port",
    ]
    update: dict[str, object] = {"port_offset": 0}
    for name in names:
        port = getattr(settings, name)
        if port:  # 0 stays 0 (off, or a free port)
            if port + off > 65535:
                raise EmbeddedError(
                    f"{ENV_PREFIX}{name.upper()} {port} + AUDITSTREAM_PORT_OFFSET {off} > 65535"
                )
            update[name] = port + off
    return settings.model_copy(update=update)


def _port_plan(settings: AuditSettings) -> list[PortUse]:
    """Every fixed port ``up`` is about to use, with the setting that moves it."""
    uses = [PortUse(settings.api_host, settings.api_port, "query API", f"{ENV_PREFIX}API_PORT")]
    for port, what, name in (
        (settings.processor_metrics_port, "processor metrics", "PROCESSOR_METRICS_PORT"),
        (settings.archiver_metrics_port, "archiver metrics", "ARCHIVER_METRICS_PORT"),
        (settings.streamer_metrics_port, "stream worker metrics", "STREAMER_METRICS_PORT"),
    ):
        if port:
            host = settings.processor_metrics_host  # the three endpoints share it
            uses.append(PortUse(host, port, what, f"{ENV_PREFIX}{name}"))
    for url, port, what, name in (
        (settings.kafka_bootstrap, settings.embedded_kafka_port, "Kafka", "EMBEDDED_KAFKA_PORT"),
        (settings.mongo_uri, settings.embedded_mongo_port, "MongoDB", "EMBEDDED_MONGO_PORT"),
        (settings.redis_url, settings.embedded_redis_port, "Redis", "EMBEDDED_REDIS_PORT"),
    ):
        if not url and port:
            uses.append(PortUse("127.0.0.1", port, what, f"{ENV_PREFIX}{name}"))
    return uses


def _preflight(settings: AuditSettings, data_dir: Path) -> str | None:
    """One line saying why nothing can start, or None: a stale stack, a taken port."""
    if wait_for_previous_watchdog(data_dir):
        click.echo("  • the previous up was killed; its watchdog stopped its processes")
    note = previous_note(data_dir)
    if note:  # what became of the events the in-memory Kafka held
        lost = "lost" in note
        click.secho(f"  {'!' if lost else '•'} {note}", fg="red" if lost else None, err=lost)
    stale = stale_stack(data_dir)
    if stale:
        listed = ", ".join(f"{role} pid {pid}" for role, pid in stale)
        return (
            f"processes of an earlier auditstream up still run on {data_dir} ({listed}) "
            f"and hold its storage; stop them with: {kill_hint([pid for _, pid in stale])}"
        )
    return port_clash(_port_plan(settings))


def run_up(settings: AuditSettings, timeout: float) -> int:
    data_dir = Path(settings.data_dir).resolve()
    try:
        settings = _effective(settings)
        with _single_instance(data_dir):
            problem = _preflight(settings, data_dir)
            if problem:
                click.secho(f"error: {problem}", fg="red", err=True)
                return 1
            tracker = Tracker(data_dir)
            tracker.start_watchdog()
            try:
                return _run(settings, data_dir, timeout, tracker)
            finally:
                tracker.finish()  # the watchdog stops whatever is still alive
    except AlreadyRunning as exc:
        click.secho(
            f"error: auditstream up is already running on {data_dir} (pid {exc}); stop it "
            "first, or start another copy with AUDITSTREAM_PORT_OFFSET=100",
            fg="red",
            err=True,
        )
        return 1
    except EmbeddedError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        return 1


def _run(settings: AuditSettings, data_dir: Path, timeout: float, tracker: Tracker) -> int:
    started: list[Server] = []
    signals = _Signals(data_dir / "logs" / "up.log")
    signals.install()
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env[f"{ENV_PREFIX}DATA_DIR"] = str(data_dir)
    env.update(settings_env(settings))
    secret = (
        settings.jwt_secret.get_secret_value() if settings.jwt_secret else _dev_secret(data_dir)
    )
    env[f"{ENV_PREFIX}JWT_SECRET"] = secret
    env.update(dev_checkpoint_env(settings, data_dir))  # signed chain checkpoints
    env.update(dev_control_env(settings, data_dir))  # control-event proof (API signs)
    env.update(dev_streams_env(settings, data_dir))  # destination secrets at rest
    env.update(dev_masking_env(settings, data_dir))  # `hash` masking rules' key
    click.secho("auditstream up — starting the pipeline", bold=True)
    embedded: list[Server] = []
    worker: Server | None = None
    archiver: Server | None = None
    streamer: Server | None = None
    api: Server | None = None
    try:
        for role, url, factory, port in (
            (
                "KAFKA_BOOTSTRAP",
                settings.kafka_bootstrap,
                kafka_server,
                settings.embedded_kafka_port,
            ),
            ("MONGO_URI", settings.mongo_uri, mongo_server, settings.embedded_mongo_port),
            ("REDIS_URL", settings.redis_url, redis_server, settings.embedded_redis_port),
        ):
            if url:
                click.echo(f"  • {role.split('_')[0].lower()}: using configured {url}")
                continue
            server = factory(data_dir, port or None)
            server.on_spawn = _tracked(tracker)
            t = _step(f"starting {server.name} on 127.0.0.1:{server.port}")
            server.start()
            started.append(server)
            embedded.append(server)
            env[f"{ENV_PREFIX}{role}"] = server.url
            if role == "KAFKA_BOOTSTRAP":  # in memory: a killed up's watchdog drains it
                tracker.drain_before_stop(
                    server.url, settings.processor_group, settings.topic_events
                )
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
        archiver = Server(  # issue 16: the archive under <data dir>/archive
            "archiver",
            "archiver",
            0,
            "",
            [python, "-m", "auditstream", "archiver"],
            data_dir / "logs" / "archiver.log",
        )
        streamer = Server(  # issue 17: log streams to the tenants' destinations
            "streamer",
            "stream worker",
            0,
            "",
            [python, "-m", "auditstream", "streamer"],
            data_dir / "logs" / "streamer.log",
        )
        api = Server(
            "api",
            "query API",
            settings.api_port,
            f"http://{settings.api_host}:{settings.api_port}",
            [python, "-m", "auditstream", "api"],
            data_dir / "logs" / "api.log",
        )
        for proc in (worker, archiver, streamer, api):
            proc.on_spawn = _tracked(tracker)
            t = _step(f"starting the {proc.name}")
            _spawn(proc, env)
            started.append(proc)
            _done(t)
        t = _step("waiting for the API to listen and /readyz to answer 200")
        wait_for_port(api.port, timeout, api.proc)
        _wait_ready(f"{api.url}/readyz", [worker, api], timeout)
        if settings.processor_metrics_port:  # else it has no probe to ask
            # The worker joins its consumer group seconds after the API answers;
            # until then nothing is stored (the banner's ?wait=true would answer 202).
            _done(t)
            t = _step("waiting for the processor worker to join its consumer group")
            _wait_ready(_probe_url(settings, "/readyz"), [worker, api], timeout)
        for p in started:  # /readyz came from *our* API, with everything still up
            if p.proc is not None and p.proc.poll() is not None:
                raise EmbeddedError(
                    f"{p.name} exited with status {p.proc.returncode}; see {p.log_path}"
                )
        _done(t)
        publish_stack(data_dir, env)  # stack.json: the CLI beside `make run` finds this stack
        from query_api.auth import mint_token

        dev = settings.model_copy(update={"jwt_secret": SecretStr(secret)})
        token = mint_token(
            dev, subject="dev", tenant="demo", scopes=DEV_SCOPES, ttl_seconds=12 * 3600
        )
        _banner(api.url, token, data_dir, env)
    except KeyboardInterrupt:
        click.echo("\nstopping …")
        if worker in started and any(s.role == "kafka" for s in started):
            # The in-memory Kafka may hold accepted events already (the API answers,
            # and an SDK publishes, before the worker joined): drain as after the banner.
            services = [s for s in (worker, archiver, streamer, api) if s in started]
            return _graceful_stop(
                settings, env, Supervisor(env, embedded, services), signals, started
            )
        return _shutdown(started, 0)
    except EmbeddedError as exc:
        click.secho(f"\nerror: {exc}", fg="red", err=True)
        return _shutdown(started, 1)
    supervisor = Supervisor(env, embedded, [worker, archiver, streamer, api])
    try:
        while True:
            supervisor.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("\nstopping …")
    return _graceful_stop(settings, env, supervisor, signals, started)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Signals:
    """SIGINT/SIGTERM/SIGHUP: the first raises KeyboardInterrupt; later ones set ``forced``.

    SIGHUP (the terminal closed) also sends ``up``'s own output to ``log_path``:
    the terminal is gone, and writing to it would fail half-way through the stop.
    """

    def __init__(self, log_path: Path) -> None:
        self.count = 0
        self.log_path = log_path

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            with contextlib.suppress(OSError):
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                for std in (1, 2):
                    os.dup2(fd, std)
                os.close(fd)
        self.count += 1
        if self.count == 1:
            raise KeyboardInterrupt

    @property
    def forced(self) -> bool:
        return self.count > 1


# Restart delays: BACKOFF_FIRST, doubling per quick exit, at most BACKOFF_MAX; a
# service that ran STABLE_AFTER seconds starts again from BACKOFF_FIRST.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0


@dataclass
class _Watch:
    server: Server
    embedded: bool
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    quick_exits: int = 0
    restart_at: float | None = None


class Supervisor:
    """Restarts what exits, with capped exponential backoff; never stops the rest.

    Worker and API: one line per exit, then a restart after the backoff.
    Embedded servers: MongoDB (SecantusDB, on disk) and Redis (a cache) are
    restarted on the same port. Kafka (Tansu) keeps its log in memory: when it
    dies that log is gone — every event that got 202 but was not stored yet is
    lost and the topic can no longer rebuild the store. That is said loudly;
    the services are stopped at once (a client that outlived the broker would
    auto-create the topics on the new one without the spec's configs), Tansu is
    restarted empty on the same port, and the services restart after it, each
    creating the topics from the spec first.
    """

    def __init__(self, env: dict[str, str], embedded: list[Server], services: list[Server]):
        self.env = env
        self.watches = [_Watch(s, True) for s in embedded] + [_Watch(s, False) for s in services]

    def watch(self, name: str) -> _Watch:
        return next(w for w in self.watches if w.server.role == name)

    def check(self) -> None:
        now = time.monotonic()
        for w in self.watches:
            proc = w.server.proc
            if w.restart_at is None:
                if proc is not None and proc.poll() is None:
                    continue
                self._exited(w, now)
            if w.restart_at is not None and now >= w.restart_at:
                self._restart(w)

    def _exited(self, w: _Watch, now: float) -> None:
        code = w.server.proc.returncode if w.server.proc is not None else None
        ran = now - w.started_at
        w.quick_exits = 0 if ran >= STABLE_AFTER else w.quick_exits + 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, w.quick_exits - 1))
        w.restart_at = now + delay
        w.restarts += 1
        line = (
            f"  ! {w.server.name} exited with status {code} after {ran:.1f}s; "
            f"restarting in {delay:.1f}s (restart {w.restarts}; log {w.server.log_path})"
        )
        if w.embedded and w.server.role == "kafka":
            click.secho(
                "  !!! Kafka (Tansu) died. Its log was in memory: every event that got 202 "
                "but was not stored yet is LOST, and the topic can no longer rebuild the "
                "store (do not run `auditstream replay` against it). Restarting it empty; "
                "use a real Kafka (AUDITSTREAM_KAFKA_BOOTSTRAP) where that matters.",
                fg="red",
                bold=True,
                err=True,
            )
        click.secho(line, fg="red" if w.embedded else "yellow", err=w.embedded)
        if w.embedded and w.server.role == "kafka":
            # Stop every service now, before the empty broker is back: a client
            # that outlived the broker would auto-create the topics on it without
            # the spec's configs (the processor and API then refuse to start).
            # Restarted, each creates the topics from the spec before anything else.
            for other in self.watches:
                if not other.embedded and other.restart_at is None:
                    other.server.stop(timeout=5.0)

    def _restart(self, w: _Watch) -> None:
        try:
            if w.embedded:
                w.server.start()
            else:
                _spawn(w.server, self.env)
        except (EmbeddedError, OSError) as exc:
            w.quick_exits += 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, w.quick_exits - 1))
            click.secho(
                f"  ! could not restart {w.server.name}: {exc}; next try in {delay:.1f}s",
                fg="red",
                err=True,
            )
            w.restart_at = time.monotonic() + delay
            return
        w.started_at, w.restart_at = time.monotonic(), None

    def stop_service(self, name: str) -> None:
        """Stop ``name`` for good (no restart)."""
        w = self.watch(name)
        self.watches.remove(w)
        w.server.stop()


def _graceful_stop(
    settings: AuditSettings,
    env: dict[str, str],
    supervisor: Supervisor,
    signals: _Signals,
    started: list[Server],
) -> int:
    """API first (no new 202s), then drain the worker's lag to 0, then the rest.

    Whatever goes wrong on the way, every started process is stopped.
    """
    forced = True
    try:
        if any(w.server.role == "api" for w in supervisor.watches):
            t = _step("stopping the query API (no new events accepted)")
            supervisor.stop_service("api")
            _done(t, "stopped")
        # Only an embedded Kafka loses what it holds when it stops; a real one keeps it.
        if any(s.role == "kafka" for s in started):
            bootstrap = env[f"{ENV_PREFIX}KAFKA_BOOTSTRAP"]
            forced = not _drain(bootstrap, settings, supervisor, signals)
        else:
            forced = False
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        for server in _stop_order(started):
            if server.proc is None or server.proc.poll() is not None:
                continue  # the API, stopped above; or a server that died
            if server.role == "kafka" and not forced:
                _report_late(env[f"{ENV_PREFIX}KAFKA_BOOTSTRAP"], settings)
            t = _step(f"stopping {server.name}")
            if server.role == "kafka":
                server.kill()  # in memory: nothing to flush, and no acknowledgement after this
            else:  # the archiver drains the topics for up to 10 s, then publishes
                server.stop(timeout=ARCHIVER_STOP_SECONDS if server.role == "archiver" else 10.0)
            _done(t, "stopped")
    return 1 if forced else 0


ARCHIVER_STOP_SECONDS = 30.0
# The worker before the archiver: the archiver, stopped last of the services, reads
# what the topics hold then, so the archive covers every event the worker stored
# (replay rebuilds from it once the in-memory Kafka is gone). Kafka right after
# them: a producer publishing straight to it (the SDK) spools from then on.
STOP_ORDER = ("api", "streamer", "processor", "archiver", "kafka", "redis", "mongodb")


def _stop_order(started: list[Server]) -> list[Server]:
    rank = {role: i for i, role in enumerate(STOP_ORDER)}
    return sorted(started, key=lambda s: rank.get(s.role, -1))


def _report_late(bootstrap: str, settings: AuditSettings) -> None:
    """Say how many events producers published straight to the embedded Kafka
    after the drain (the worker is stopped: they are lost with it)."""
    import asyncio

    from auditstream.drain import LagReader

    async def late() -> int:
        async with LagReader(bootstrap, settings.processor_group, settings.topic_events) as r:
            return await r.lag()

    try:
        count = asyncio.run(asyncio.wait_for(late(), 10))
    except Exception:
        return
    if count:
        click.secho(
            f"  ! {count:,} events published straight to Kafka (e.g. by the SDK) during the "
            "stop were not stored and are lost with the in-memory Kafka: stop such "
            "producers before Ctrl-C (the SDK spools while Kafka is down)",
            fg="red",
            err=True,
        )


DRAIN_REPORT_EVERY = 2.0


def _drain(
    bootstrap: str, settings: AuditSettings, supervisor: Supervisor, signals: _Signals
) -> bool:
    """Keep the worker running (and restarted) until the group's lag is 0.

    Returns False when a second Ctrl-C/SIGTERM cut it short.
    """
    import asyncio

    from auditstream.drain import lag_readings

    async def run() -> bool:
        t = time.monotonic()
        last_report = 0.0
        lag: int | None = None
        group, topic = settings.processor_group, settings.topic_events
        async with contextlib.aclosing(lag_readings(bootstrap, group, topic)) as readings:
            async for lag, why in readings:
                if signals.forced:
                    break
                supervisor.check()
                if lag == 0:
                    click.echo(
                        f"  • drained: every accepted event is stored ({time.monotonic() - t:.1f}s)"
                    )
                    return True
                now = time.monotonic()
                if now - last_report >= DRAIN_REPORT_EVERY:
                    last_report = now
                    what = why or f"{lag:,} events accepted but not stored yet"
                    click.echo(
                        f"  • draining: {what}; the worker keeps storing "
                        "(Ctrl-C again to stop now and lose them)"
                    )
        click.secho(
            f"  ! stopped before draining: {lag if lag is not None else 'an unknown number of'} "
            "accepted events were not stored and are lost with the in-memory Kafka",
            fg="red",
            err=True,
        )
        return False

    return asyncio.run(run())


def _spawn(proc: Server, env: dict[str, str]) -> None:
    import subprocess

    if proc.role != "api":  # only the API may sign corrections and erasures
        env = {k: v for k, v in env.items() if k != CONTROL_SIGNING_ENV}
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
    if proc.on_spawn is not None:
        proc.on_spawn(proc)


def _tracked(tracker: Tracker) -> Callable[[Server], None]:
    def spawned(server: Server) -> None:
        if server.proc is not None:
            tracker.spawned(server.role, server.proc.pid)

    return spawned


def _shutdown(started: list[Server], code: int) -> int:
    """Stop everything at once (start-up failed or was interrupted)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    for server in reversed(started):
        t = _step(f"stopping {server.name}")
        server.stop()
        _done(t, "stopped")
    return code


APP_VARIABLES = ("KAFKA_BOOTSTRAP", "MONGO_URI", "REDIS_URL")


def _banner(url: str, token: str, data_dir: Path, env: dict[str, str]) -> None:
    click.echo()
    click.secho("auditstream is ready", fg="green", bold=True)
    click.echo(f"  API     {url}")
    click.echo(f"  Docs    {url}/docs")
    click.echo(f"  Logs    {data_dir / 'logs'}")
    click.echo()
    click.echo("For an application (same addresses at every start; see README 'Ports'):")
    for name in APP_VARIABLES:
        click.echo(f"  export {ENV_PREFIX}{name}='{env[ENV_PREFIX + name]}'")
    click.echo()
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
