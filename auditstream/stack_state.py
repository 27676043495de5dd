"""The state file of a running ``auditstream up``: ``<data_dir>/stack.json``.

``up`` calls :func:`publish` once the stack is ready. The file (mode 0600: it
holds the JWT secret and the checkpoint keys) records ``up``'s pid, when it
started and the ``AUDITSTREAM_*`` variables its children run with: the Kafka,
MongoDB and Redis addresses, the API address, the JWT secret, the checkpoint
keys and every other setting ``up`` was given. When ``up`` exits, the file is
marked ``stopped`` and the variables are dropped; a killed ``up`` leaves it
``running`` with a dead pid, which readers treat as stopped.

Readers: :func:`audit_events.settings.load_settings` (the fallback for unset
variables, so every CLI command run in the project folder finds the stack) and
``auditstream status``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from audit_events.settings import ENV_PREFIX, pid_alive, read_stack_state, stack_state_path


def _write(path: Path, state: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``state``, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(state, out, indent=2, sort_keys=True)
        out.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def publish(data_dir: str | os.PathLike[str], env: Mapping[str, str]) -> Path:
    """Write the state of the stack this process runs; mark it stopped at exit.

    ``env`` is the environment ``up`` gives its children; only its
    ``AUDITSTREAM_*`` variables are kept.
    """
    path = stack_state_path(data_dir)
    state = {
        "status": "running",
        "pid": os.getpid(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": str(Path(data_dir).resolve()),
        "env": {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)},
    }
    _write(path, state)
    atexit.register(mark_stopped, path, os.getpid())
    return path


def mark_stopped(path: Path, pid: int) -> None:
    """Mark the state file stopped (and drop its secrets) if ``pid`` wrote it."""
    state = read_stack_state(path.parent)
    if not state or state.get("pid") != pid or state.get("status") != "running":
        return
    env = state.pop("env", {})
    state["status"] = "stopped"
    state["stopped_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    state["addresses"] = {k: v for k, v in env.items() if k in _ADDRESS_VARS}
    with contextlib.suppress(OSError):
        _write(path, state)


# --- auditstream status ----------------------------------------------------------

_ADDRESS_VARS = (
    f"{ENV_PREFIX}KAFKA_BOOTSTRAP",
    f"{ENV_PREFIX}MONGO_URI",
    f"{ENV_PREFIX}REDIS_URL",
)


@dataclass
class Service:
    name: str
    address: str  # as shown (passwords masked)
    answers: bool
    detail: str = ""


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _host_ports(address: str) -> list[tuple[str, int]]:
    """(host, port) pairs of a bootstrap list or a URL (mongodb://a:1,b:2/…)."""
    rest = address.split("://", 1)[1] if "://" in address else address
    rest = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
    out = []
    for item in rest.split(","):
        host, _, port = item.strip().rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


def _tcp_answers(address: str, timeout: float = 1.0) -> bool:
    for host, port in _host_ports(address):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            continue
    return False


def _http_status(url: str, timeout: float = 3.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def probe(env: Mapping[str, str]) -> list[Service]:
    """What the stack's variables point at, and whether each address answers."""
    services = []
    for name, var in (
        ("kafka", "KAFKA_BOOTSTRAP"),
        ("mongodb", "MONGO_URI"),
        ("redis", "REDIS_URL"),
    ):
        address = env.get(f"{ENV_PREFIX}{var}")
        if address:
            services.append(Service(name, _hide_password(address), _tcp_answers(address)))
    host = env.get(f"{ENV_PREFIX}API_HOST", "127.0.0.1")
    port = env.get(f"{ENV_PREFIX}API_PORT", "8080")
    api = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    ready = _http_status(f"{api}/readyz")
    services.append(
        Service(
            "api",
            api,
            ready is not None,
            "not answering" if ready is None else f"/readyz {ready}",
        )
    )
    metrics = env.get(f"{ENV_PREFIX}PROCESSOR_METRICS_PORT", "9108")
    if metrics.isdigit() and int(metrics) > 0:
        url = f"http://127.0.0.1:{metrics}/metrics"
        code = _http_status(url)
        services.append(
            Service(
                "processor",
                url,
                code == 200,
                "not answering" if code is None else f"metrics {code}",
            )
        )
    return services


def describe(data_dir: str | os.PathLike[str]) -> tuple[str, dict[str, str] | None]:
    """(one headline about ``up`` in ``data_dir``, its variables when it runs)."""
    path = stack_state_path(data_dir)
    state = read_stack_state(data_dir)
    if state is None:
        return f"auditstream up is not running here (no {path}); start it with `make run`", None
    pid = state.get("pid")
    since = state.get("started_at", "?")
    if state.get("status") == "running" and isinstance(pid, int) and pid_alive(pid):
        env = state.get("env")
        return f"auditstream up is running (pid {pid}, since {since}); state {path}", (
            env if isinstance(env, dict) else {}
        )
    if state.get("status") == "running":
        return (
            f"auditstream up (pid {pid}, started {since}) is gone without stopping its "
            f"stack (killed?); its state {path} is stale",
            None,
        )
    return f"auditstream up stopped at {state.get('stopped_at', '?')} (state {path})", None
