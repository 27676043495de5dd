"""One frozen settings object for every auditstream service.

Values come from ``AUDITSTREAM_*`` environment variables. Only the
``auditstream`` command line also reads a ``.env`` file from the current
directory (:func:`use_dotenv`): the SDK inside a host application (a Django
project, a script) never picks up whatever ``.env`` lies where it runs.
Connection URLs default to ``None``: ``auditstream up`` then starts a local
development server for that role, and a service started on its own refuses to
start, naming the missing variable (see :meth:`AuditSettings.require`).
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any, Literal, get_origin

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

ENV_PREFIX = "AUDITSTREAM_"
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


class SettingsError(Exception):
    """A setting is missing or invalid; the message is one line naming it."""


class AuditSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=None, extra="ignore", frozen=True
    )

    # --- Kafka -------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers, e.g. 'kafka:9092'."
    )
    kafka_idempotence: bool = Field(
        False, description="Idempotent producer (Apache Kafka: on; Tansu: off)."
    )
    kafka_partitions: int = Field(8, ge=1, le=1024)
    kafka_replication: int = Field(1, ge=1, le=16)
    topic_events: str = "audit.events"
    topic_dlq: str = "audit.events.dlq"
    topic_checkpoints: str = "audit.checkpoints"

    # --- MongoDB -----------------------------------------------------------
    mongo_uri: str | None = Field(None, description="MongoDB connection URI.")
    mongo_db: str = "auditstream"
    mongo_write_concern: Literal["majority", "1"] = "majority"
    mongo_journal: bool = True

    # --- Redis -------------------------------------------------------------
    redis_url: str | None = Field(None, description="Redis URL, e.g. redis://redis:6379/0.")
    cache_ttl_seconds: int = Field(300, ge=1, le=86_400)

    # --- Auth --------------------------------------------------------------
    jwt_secret: SecretStr | None = Field(
        None, min_length=32, description="HS256 signing secret, at least 32 bytes."
    )
    jwt_algorithms: list[Literal["HS256", "RS256", "ES256"]] = ["HS256"]
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    token_ttl_seconds: int = Field(3600, ge=60, le=30 * 86_400)
    jwks_path: str | None = Field(
        None, description="JWKS file with the RS256/ES256 verification keys (chosen by kid)."
    )
    jwks_url: str | None = Field(
        None, description="JWKS URL with the RS256/ES256 verification keys (chosen by kid)."
    )
    jwks_refresh_seconds: int = Field(
        300, ge=5, le=86_400, description="Re-read the JWKS this often (key rotation)."
    )
    jwt_leeway_seconds: int = Field(
        30, ge=0, le=300, description="Clock skew allowed on exp, nbf and iat."
    )
    login_max_failures_per_user: int = Field(
        5, ge=1, le=10_000, description="Failed logins per username per window before 429."
    )
    login_max_failures_per_ip: int = Field(
        20, ge=1, le=100_000, description="Failed logins per client IP per window before 429."
    )
    login_window_seconds: int = Field(
        900, ge=1, le=86_400, description="Window of the failed-login rate limits."
    )

    # --- Processor ---------------------------------------------------------
    processor_group: str = "auditstream-processor"
    batch_max_events: int = Field(1000, ge=1, le=100_000)
    batch_max_ms: int = Field(200, ge=1, le=60_000)
    kafka_fetch_max_wait_ms: int = Field(
        250,
        ge=1,
        le=30_000,
        description="Longest a processor fetch waits for new events (Faust's own is 1500).",
    )
    kafka_fetch_active_wait_ms: int = Field(
        50,
        ge=1,
        le=30_000,
        description=(
            "The processor's fetch wait while ?wait=true events arrive, on a broker that"
            " holds empty fetches (Tansu); KAFKA_FETCH_MAX_WAIT_MS 5 s after the last."
        ),
    )
    max_event_bytes: int = Field(256 * 1024, ge=1024, le=8 * 1024 * 1024)
    tenant_keys_only: bool = Field(
        True,
        description=(
            "Dead-letter a record whose Kafka key is not its event's tenant (the partition"
            " key: a tenant's events on two partitions chain in the reader's order, which"
            " replay does not reproduce). false stores them as before the check: for a"
            " topic written earlier by producers that did not key by tenant."
        ),
    )
    max_metadata_bytes: int = Field(64 * 1024, ge=256)
    max_metadata_depth: int = Field(8, ge=1, le=64)
    write_retry_seconds: float = Field(
        300.0, ge=1.0, description="How long a failing batch is retried before the worker exits."
    )
    processor_metrics_port: int = Field(9108, ge=0, le=65535)
    # --- API metrics port (helper H7, issue 21 item 7) ---------------------
    api_metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve the API's /metrics on this port (on AUDITSTREAM_API_HOST) and not on"
        " the API port, which then answers 404 there; unset: /metrics on the API port.",
    )
    # --- Processor metrics address (helper J, issue 20 item 5) ------------
    processor_metrics_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the worker's Prometheus endpoint binds (0.0.0.0: every interface).",
    )
    # --- Viewer: links from a target to the application (helper J, issue 20) --
    target_url_templates: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description=(
            'JSON {tenant or "*": {target type: "https://app.example/invoices/{id}"}}: the '
            "viewer links a target to its page in the application ({id}, {type}, {tenant})."
        ),
    )

    @field_validator("target_url_templates")
    @classmethod
    def _http_templates(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for tenant, templates in value.items():
            for kind, template in templates.items():
                if not re.match(r"^https?://[^\s]+$", template) or "{id}" not in template:
                    raise ValueError(
                        f"{tenant}/{kind}: a template is an http(s) URL containing {{id}}"
                    )
        return value

    # --- Tenant chain checkpoints (docs/chain.md) ------------------------
    checkpoint_signing_key: SecretStr | None = Field(
        None, description="Ed25519 private key, base64 of the raw 32 bytes (keys generate)."
    )
    checkpoint_public_key: str | None = Field(
        None, description="Ed25519 public key (base64, raw 32 bytes) that verifiers trust."
    )
    checkpoint_every_events: int = Field(1000, ge=1, le=10_000_000)
    checkpoint_every_seconds: float = Field(60.0, ge=0.1, le=86_400)

    # --- Topics and checkpoint keys in production (helper C, issue 13) -----
    checkpoint_retired_public_keys: str = Field(
        "",
        description="Comma-separated Ed25519 public keys (base64) of retired signing keys:"
        " checkpoints they signed keep verifying after a rotation (deploy/README.md).",
    )
    allow_unsigned_chains: bool = Field(
        False,
        description="Let the processor run without AUDITSTREAM_CHECKPOINT_SIGNING_KEY"
        " (no signed checkpoints: truncation of the store goes undetected).",
    )
    allow_finite_retention: bool = Field(
        False,
        description="Let the processor and the API start although the events topic would"
        " delete records (finite retention or compaction).",
    )

    @field_validator("checkpoint_retired_public_keys")
    @classmethod
    def _retired_keys_are_ed25519(cls, value: str) -> str:
        keys = [k.strip() for k in value.split(",") if k.strip()]
        for key in keys:
            _check_raw_key(key, "public")
        return ",".join(keys)

    @field_validator("checkpoint_public_key")
    @classmethod
    def _public_key_is_ed25519(cls, value: str | None) -> str | None:
        if not value:
            return None  # an empty variable (a ConfigMap entry left blank) means unset
        _check_raw_key(value, "public")
        return value

    @field_validator("checkpoint_signing_key")
    @classmethod
    def _signing_key_is_ed25519(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:  # a forgotten placeholder stops every service at start
            _check_raw_key(value.get_secret_value(), "private")
        return value

    # --- Control events: proof that the API issued them (docs/chain.md) -----
    control_signing_key: SecretStr | None = Field(
        None,
        description="Ed25519 private key (base64, raw 32 bytes) the API signs corrections and"
        " erasures with; only the API holds it (any pair from `auditstream keys generate`).",
    )
    control_public_keys: list[str] = Field(
        [],
        description="Ed25519 public keys (base64, raw 32 bytes) whose control-event signatures"
        " the processor and verifiers accept, chosen by key id (JSON list; rotation: old + new).",
    )

    @field_validator("control_signing_key")
    @classmethod
    def _control_signing_key_is_ed25519(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None  # an empty variable means unset (a service that must not sign)
        _check_raw_key(value.get_secret_value(), "private")
        return value

    @field_validator("control_public_keys")
    @classmethod
    def _control_public_keys_are_ed25519(cls, value: list[str]) -> list[str]:
        for key in value:
            _check_raw_key(key, "public")
        return value

    # --- Hostile input and store outages (helper E, issue 14) -------------
    dlq_max_record_bytes: int = Field(
        512 * 1024,
        ge=16 * 1024,
        le=1_000_000,
        description="Largest dead-letter record (key + value); a larger original is cut,"
        " with the size and SHA-256 of the whole (Kafka's default limit is 1 MiB).",
    )
    mongo_timeout_ms: int = Field(
        15_000,
        ge=100,
        le=600_000,
        description="Bound on every MongoDB call (PyMongo timeoutMS, also server selection"
        " and connect): a frozen store fails calls instead of hanging them.",
    )

    # --- Token revocation (helper G, issue 14 item 9; docs/api.md) ---------
    account_check_seconds: float = Field(
        5.0,
        ge=0.0,
        le=60.0,
        description="How long the API caches an account's disabled flag and token version:"
        " tokens of a disabled or re-keyed account stop working within this time.",
    )

    # --- API ---------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, ge=1, le=65535)
    api_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="API processes `auditstream api` runs on the one port (SO_REUSEPORT; the"
        " kernel spreads connections). One per core to use them all; they share the cache.",
    )
    max_batch_events: int = Field(1000, ge=1, le=100_000)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)

    # --- Local stack -------------------------------------------------------
    data_dir: str = ".auditstream"
    # --- `auditstream up`'s stable ports (helper P, issue 20 items 2, 3) ---
    # Each usual port + 100, so a real Kafka/MongoDB/Redis on its usual port is left alone.
    # 0: a free port picked at each start (the test suite).
    embedded_kafka_port: int = Field(
        9192, ge=0, le=65535, description="Port of the Kafka (Tansu) `auditstream up` starts."
    )
    embedded_mongo_port: int = Field(
        27117, ge=0, le=65535, description="Port of the MongoDB (SecantusDB) `up` starts."
    )
    embedded_redis_port: int = Field(
        6479, ge=0, le=65535, description="Port of the Redis `auditstream up` starts."
    )
    port_offset: int = Field(
        0,
        ge=0,
        le=20_000,
        description="Added by `auditstream up` to every port it uses; a non-zero offset also"
        " makes the default data dir .auditstream-<offset> (a second copy side by side).",
    )

    # --- Archive of the topics (helper I, issue 16; docs/archive.md) --------
    archive_dir: str | None = Field(
        None, description="Where the archiver writes segments (default <data dir>/archive)."
    )
    archiver_group: str = "auditstream-archiver"
    archive_segment_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="A segment closes at this many uncompressed bytes."
    )
    archive_segment_seconds: float = Field(
        30.0, gt=0, le=3600, description="A segment closes this long after its first record."
    )
    archiver_metrics_port: int = Field(9109, ge=0, le=65535)
    # S3-compatible target (helper H9; audit_events/objectstore.py): set the bucket to
    # archive there instead of the directory.
    archive_s3_bucket: str | None = Field(
        None, description="Archive into this S3 bucket instead of the archive directory."
    )
    archive_s3_prefix: str = Field(
        "auditstream/archive", description="Key prefix of the archive in the bucket."
    )
    archive_s3_endpoint: str | None = Field(
        None, description="S3-compatible endpoint URL (MinIO, Ceph, R2...); unset: AWS."
    )
    archive_s3_region: str | None = Field(None, description="Region (unset: from AWS_REGION).")
    archive_s3_access_key_id: str | None = Field(
        None, description="Access key id (unset: AWS_ACCESS_KEY_ID, web identity, instance role)."
    )
    archive_s3_secret_access_key: SecretStr | None = Field(None, description="Secret access key.")
    archive_s3_session_token: SecretStr | None = Field(None, description="Session token (STS).")
    archive_s3_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="Per request; a PUT not acknowledged by then is retried."
    )

    # --- Log streams (helper M, issue 17; docs/streams.md) -------------------
    streamer_metrics_port: int = Field(9110, ge=0, le=65535)
    streams_poll_seconds: float = Field(
        0.5, gt=0, le=60, description="How often the stream worker looks for new events."
    )
    streams_retry_base_seconds: float = Field(
        0.5, gt=0, le=600, description="First retry delay; doubles per attempt (full jitter)."
    )
    streams_retry_max_seconds: float = Field(60.0, gt=0, le=3600)
    streams_dead_letter_after_seconds: float = Field(
        600.0,
        gt=0,
        description="A batch failing this long goes to the destination's dead-letter list.",
    )
    streams_timeout_seconds: float = Field(10.0, gt=0, le=300)
    streams_lease_seconds: float = Field(
        30.0, ge=1, le=3600, description="One worker at a time delivers a destination (its lease)."
    )
    streams_ca_file: str | None = Field(
        None, description="Extra CA certificates (PEM) trusted for destinations' TLS."
    )
    streams_allow_private_hosts: bool = Field(
        False, description="Allow destinations on loopback/private addresses (development)."
    )
    streams_allow_http: bool = Field(False, description="Allow http:// destinations (development).")
    streams_secret_overlap_seconds: int = Field(
        86_400, ge=0, description="After a secret rotation the previous one signs this long too."
    )
    # Destination secrets encrypted at rest (helper H15; audit_events/stream_secrets.py).
    streams_secret_key: SecretStr | None = Field(
        None,
        description="API, streams CLI and stream worker only: the Fernet key destination"
        " secrets are stored encrypted with (`auditstream streams keygen`); unset: the API"
        " refuses to store a secret.",
    )
    streams_secret_retired_keys: SecretStr | None = Field(
        None,
        description="Comma-separated retired Fernet keys that still decrypt (key rotation;"
        " `auditstream streams encrypt-secrets` re-encrypts under the current key).",
    )

    @field_validator("streams_secret_key", "streams_secret_retired_keys", mode="before")
    @classmethod
    def _streams_secret_keys(cls, value: object) -> object:
        # blanked (compose: a role without it) means unset; otherwise every key must
        # be a Fernet key, checked here so a typo stops the service at start
        if value == "" or value is None:
            return None
        raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        from audit_events.stream_secrets import check_key, split_keys

        for key in split_keys(raw):
            check_key(key)
        return value

    # --- Masking before storage (helper H10, issue 17; docs/masking.md) -------
    masking_secret: SecretStr | None = Field(
        None,
        description="Processor, archiver and replay: the secret per-tenant HMAC keys of `hash`"
        " rules are derived from (HKDF-SHA256); unset: `hash` rules redact; the REPLACE-ME"
        " placeholder is refused. Never change it once used.",
    )
    masking_cache_seconds: float = Field(
        2.0, gt=0, le=60, description="How long the processor keeps a tenant's rules cached."
    )
    masking_delay_seconds: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="A rules change applies to events received this long after it is saved"
        " (more than the cache time plus clock skew).",
    )

    @field_validator("masking_secret", mode="before")
    @classmethod
    def _empty_masking_secret_is_unset(cls, value: object) -> object:
        # as for the other secrets: a blanked variable (compose) means unset, never a
        # key derived from the empty string
        if value == "":
            return None
        raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if "REPLACE-ME" in raw:
            # the shipped placeholder (.env.example, k8s Secrets): never a key, since the
            # secret can never change once events were hashed with it
            raise ValueError("masking_secret is the REPLACE-ME placeholder: set a random secret")
        return value

    # --- Auditing of reads (helper H12, issue 17; query_api/read_audit.py) ----
    read_audit: bool = Field(
        True,
        description="API role: every read of the log (list, get, history, export, verify)"
        " publishes an auditstream.log.* event (needs AUDITSTREAM_CONTROL_SIGNING_KEY).",
    )

    # --- Securing Kafka, MongoDB and Redis (helper K, issue 21 item 1) ----
    # Built into client keyword arguments by audit_events/connections.py.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka listener protocol (SASL_SSL: SASL over TLS)."
    )
    kafka_sasl_mechanism: KafkaSaslMechanism = Field(
        "SCRAM-SHA-512", description="SASL mechanism (with a SASL_* protocol)."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user (PLAIN, SCRAM).")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (PLAIN, SCRAM).")
    kafka_sasl_oauth_token_file: str | None = Field(
        None, description="OAUTHBEARER: file holding the current access token (re-read)."
    )
    kafka_ssl_cafile: str | None = Field(
        None, description="CA bundle the Kafka brokers' certificates are checked against."
    )
    kafka_ssl_certfile: str | None = Field(None, description="Client certificate (mutual TLS).")
    kafka_ssl_keyfile: str | None = Field(None, description="Client certificate's private key.")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="Password of that key.")
    kafka_ssl_check_hostname: bool = Field(
        True, description="Check that the broker's certificate names the host connected to."
    )
    mongo_tls_ca_file: str | None = Field(None, description="MongoDB CA file (turns TLS on).")
    mongo_tls_certificate_key_file: str | None = Field(
        None, description="MongoDB client certificate + key, one PEM file (turns TLS on)."
    )
    redis_tls_ca_file: str | None = Field(None, description="Redis CA file (rediss:// URL).")
    redis_tls_certfile: str | None = Field(None, description="Redis client certificate.")
    redis_tls_keyfile: str | None = Field(None, description="Redis client certificate's key.")
    # --- Processor probes (helper K, issue 21 item 2) ---------------------
    processor_liveness_seconds: float = Field(
        30.0,
        ge=2.0,
        le=3600,
        description="/healthz of a worker answers 503 when its batch loop has not stepped for"
        " this long (a batch being written: its retry deadline plus this).",
    )

    @field_validator(
        "jwt_secret",
        "checkpoint_signing_key",
        "control_signing_key",
        "archive_s3_secret_access_key",
        "archive_s3_session_token",
        mode="before",
    )
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        # compose blanks the secrets a role must not hold (docker-compose.yml): an
        # empty variable means unset, as for the public keys.
        return None if value == "" else value

    @model_validator(mode="before")
    @classmethod
    def _offset_copy_has_its_own_data_dir(cls, data: Any) -> Any:
        # helper P, issue 20 item 3: AUDITSTREAM_PORT_OFFSET alone selects a second copy.
        if isinstance(data, dict) and "data_dir" not in data:
            offset = str(data.get("port_offset", "0")).strip()
            if offset.isdigit() and int(offset):
                data = {**data, "data_dir": f".auditstream-{int(offset)}"}
        return data

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> AuditSettings:
        if self.kafka_security_protocol not in ("SASL_PLAINTEXT", "SASL_SSL"):
            return self
        if self.kafka_sasl_mechanism == "OAUTHBEARER":
            if not self.kafka_sasl_oauth_token_file:
                raise ValueError(
                    "AUDITSTREAM_KAFKA_SASL_OAUTH_TOKEN_FILE is required with OAUTHBEARER"
                )
        elif not self.kafka_sasl_username or self.kafka_sasl_password is None:
            raise ValueError(
                "AUDITSTREAM_KAFKA_SASL_USERNAME and AUDITSTREAM_KAFKA_SASL_PASSWORD are"
                f" required with {self.kafka_sasl_mechanism}"
            )
        return self

    def archive_path(self) -> str:
        """The archive directory: ``archive_dir`` or ``<data_dir>/archive``."""
        return self.archive_dir or os.path.join(self.data_dir, "archive")

    def require(self, *names: str) -> None:
        """Raise :class:`SettingsError` naming the first unset required setting."""
        for name in names:
            if getattr(self, name) is None:
                raise SettingsError(
                    f"missing setting {ENV_PREFIX}{name.upper()}: "
                    f"{type(self).model_fields[name].description or 'required'}"
                )


def mongo_client_options(settings: AuditSettings, *, operations: bool = True) -> dict[str, Any]:
    """Keyword arguments bounding an ``AsyncMongoClient`` by ``mongo_timeout_ms``.

    ``operations=False`` leaves single operations unbounded (only server
    selection and connecting are), for tools whose operations may rightly run
    long (``auditstream replay`` renaming a large collection).
    """
    ms = settings.mongo_timeout_ms
    options = {"serverSelectionTimeoutMS": ms, "connectTimeoutMS": ms}
    if operations:
        options["timeoutMS"] = ms
    from audit_events.connections import mongo_tls_options  # TLS files (issue 21)

    return {**options, **mongo_tls_options(settings)}


def _check_raw_key(key: str, kind: str) -> None:
    """Raise ``ValueError`` unless ``key`` is base64 of a raw 32-byte Ed25519 key."""
    try:
        raw = base64.b64decode(key, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        shown = "the value" if kind == "private" else repr(key[:12] + ("..." * (len(key) > 12)))
        raise ValueError(
            f"{shown} is not base64 of a raw 32-byte Ed25519 {kind} key"
            " (`auditstream keys generate`)"
        )


def settings_env(settings: AuditSettings) -> dict[str, str]:
    """``AUDITSTREAM_*`` variables reproducing ``settings`` in a child process.

    Secrets and unset values are left out; lists and dicts are JSON, as pydantic-settings
    reads them.
    """
    env: dict[str, str] = {}
    secrets = {"jwt_secret", "checkpoint_signing_key", "control_signing_key"}
    for name, value in settings.model_dump(exclude_none=True, exclude=secrets).items():
        if isinstance(value, (list, dict)):
            text = json.dumps(value)
        elif isinstance(value, SecretStr):  # e.g. the Kafka SASL password: children need it
            text = value.get_secret_value()
        elif isinstance(value, bool):
            text = str(value).lower()
        else:
            text = str(value)
        env[f"{ENV_PREFIX}{name.upper()}"] = text
    return env


# --- The running ``auditstream up`` stack (helper B, issue 13 item 8) ------
# ``up`` writes ``<data_dir>/stack.json`` (auditstream/stack_state.py): its pid,
# status and the AUDITSTREAM_* variables it gave its children (addresses, JWT
# secret, checkpoint keys). load_settings() falls back to those for every setting
# whose variable is unset, so the CLI run in the project folder finds the stack.
STACK_STATE_FILE = "stack.json"


def stack_state_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / STACK_STATE_FILE


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True


def read_stack_state(data_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The state file's content, or None when there is none or it is unreadable."""
    try:
        state = json.loads(stack_state_path(data_dir).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def running_stack_env(data_dir: str | os.PathLike[str]) -> dict[str, str]:
    """The running stack's AUDITSTREAM_* variables; empty when ``up`` is not running."""
    state = read_stack_state(data_dir)
    if not state or state.get("status") != "running":
        return {}
    pid = state.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return {}  # a killed ``up`` left its file: its addresses are dead
    env = state.get("env")
    if not isinstance(env, dict):
        return {}
    return {k: v for k, v in env.items() if isinstance(k, str) and isinstance(v, str)}


def _from_env_text(name: str, text: str) -> object:
    """An AUDITSTREAM_* string as pydantic-settings reads it: lists and dicts are JSON."""
    field = AuditSettings.model_fields[name]
    if get_origin(field.annotation) in (list, dict):
        return json.loads(text)
    return text


def _stack_fallback(settings: AuditSettings) -> dict[str, object]:
    """Values of the running stack for the settings that nothing set explicitly."""
    fill: dict[str, object] = {}
    for key, text in running_stack_env(settings.data_dir).items():
        name = key.removeprefix(ENV_PREFIX).lower()
        if (
            key.startswith(ENV_PREFIX)
            and name in AuditSettings.model_fields
            and name not in settings.model_fields_set
        ):
            try:
                fill[name] = _from_env_text(name, text)
            except ValueError:
                continue
    return fill


def _one_line(exc: ValidationError, source: str = "") -> str:
    err = exc.errors()[0]
    name = ENV_PREFIX + str(err["loc"][0]).upper() if err["loc"] else "?"
    return f"invalid setting {name}{source}: {err['msg']}"


def settings_error_line(exc: Exception) -> str | None:
    """One line naming the setting for a settings failure, None for anything else."""
    if isinstance(exc, SettingsError):
        return str(exc)
    if isinstance(exc, ValidationError) and exc.title == AuditSettings.__name__:
        return _one_line(exc)
    if isinstance(exc, PydanticSettingsError):
        found = re.search(r'field "(\w+)"', str(exc))
        name = ENV_PREFIX + found.group(1).upper() if found else "(unknown)"
        return f'invalid setting {name}: cannot be parsed (a list is JSON, e.g. ["HS256"])'
    return None


# The .env file load_settings() reads: none, except while the CLI runs.
_dotenv: Path | None = None


def use_dotenv(path: str | os.PathLike[str] | None) -> Path | None:
    """Make :func:`load_settings` also read ``path`` (``None``: no file); returns the
    previous one. Only the ``auditstream`` command line calls it (with ``.env``),
    for its own run."""
    global _dotenv
    previous, _dotenv = _dotenv, (None if path is None else Path(path))
    return previous


def load_settings(**overrides: object) -> AuditSettings:
    """Build the settings, turning a validation error into one clear line.

    Explicit values win: ``overrides``, then AUDITSTREAM_* variables, then the
    ``.env`` file when the CLI runs (:func:`use_dotenv`); a setting none of them
    sets comes from the running ``auditstream up`` stack of ``data_dir`` (its
    state file), then from the default.
    """
    env_file = overrides.pop("_env_file", _dotenv)  # an explicit one (tests) wins
    try:
        settings = AuditSettings(_env_file=env_file, **overrides)  # type: ignore[arg-type]
    except (ValidationError, PydanticSettingsError) as exc:
        raise SettingsError(settings_error_line(exc)) from None
    fill = _stack_fallback(settings)
    if not fill:
        return settings
    try:
        return AuditSettings(_env_file=env_file, **{**fill, **overrides})  # type: ignore[arg-type]
    except ValidationError as exc:
        where = f" (from {stack_state_path(settings.data_dir)})"
        raise SettingsError(_one_line(exc, where)) from None
