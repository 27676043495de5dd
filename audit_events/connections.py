"""Security options of every Kafka, MongoDB and Redis client, built once from the settings.

Every place that creates a client passes these keyword arguments, so one set
of ``AUDITSTREAM_KAFKA_*`` / ``AUDITSTREAM_MONGO_TLS_*`` / ``AUDITSTREAM_REDIS_TLS_*``
variables secures the API, the processor, the archiver, replay, the CLI and
the SDK alike (deploy/README.md, Securing the connections):

- :func:`kafka_client_options`: aiokafka producer, consumer and admin client
  (``security_protocol``, ``sasl_*``, ``ssl_context``);
- :func:`faust_broker_options`: the same for Faust (``broker_credentials``);
- :func:`mongo_tls_options`: PyMongo TLS files (credentials stay in the URI);
- :func:`redis_tls_options`: redis-py TLS files for a ``rediss://`` URL
  (the password stays in the URL).
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymongo.write_concern import WriteConcern

    from audit_events.settings import AuditSettings

#: The keys :func:`kafka_client_options` may return (all aiokafka client kinds accept them).
KAFKA_SECURITY_KEYS = frozenset(
    {
        "security_protocol",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_oauth_token_provider",
        "ssl_context",
    }
)


def kafka_uses_tls(settings: AuditSettings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def kafka_uses_sasl(settings: AuditSettings) -> bool:
    return settings.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def kafka_ssl_context(settings: AuditSettings) -> ssl.SSLContext | None:
    """The TLS context of the Kafka clients (None without TLS).

    Verifies the broker's certificate against ``kafka_ssl_cafile`` (the system
    store when unset) and its host name unless ``kafka_ssl_check_hostname`` is
    off; presents ``kafka_ssl_certfile``/``keyfile`` when set (mutual TLS).
    """
    if not kafka_uses_tls(settings):
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=settings.kafka_ssl_cafile or None
    )
    context.check_hostname = settings.kafka_ssl_check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if settings.kafka_ssl_certfile:
        password = settings.kafka_ssl_key_password
        context.load_cert_chain(
            settings.kafka_ssl_certfile,
            settings.kafka_ssl_keyfile or None,
            password.get_secret_value() if password is not None else None,
        )
    return context


class FileTokenProvider:
    """OAUTHBEARER token read from a file at every (re)authentication.

    The file is kept fresh by whatever issues the tokens (a projected service
    account token, a sidecar); a rotation needs no restart.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    async def token(self) -> str:
        return (await asyncio.to_thread(Path(self.path).read_text)).strip()

    def extensions(self) -> dict[str, str]:
        return {}


def _token_provider(path: str) -> Any:
    from aiokafka.abc import AbstractTokenProvider

    class Provider(FileTokenProvider, AbstractTokenProvider):  # type: ignore[misc]
        pass

    return Provider(path)


def kafka_client_options(settings: AuditSettings) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer``/``AIOKafkaConsumer``/``AIOKafkaAdminClient``.

    ``{"security_protocol": "PLAINTEXT"}`` by default; never includes
    ``bootstrap_servers`` or tuning options. The SASL password is a plain
    string here (aiokafka needs it), never logged by auditstream.
    """
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if kafka_uses_sasl(settings):
        mechanism = settings.kafka_sasl_mechanism
        options["sasl_mechanism"] = mechanism
        if mechanism == "OAUTHBEARER":
            options["sasl_oauth_token_provider"] = _token_provider(
                settings.kafka_sasl_oauth_token_file or ""
            )
        else:
            password = settings.kafka_sasl_password
            options["sasl_plain_username"] = settings.kafka_sasl_username
            options["sasl_plain_password"] = (
                password.get_secret_value() if password is not None else None
            )
    return options


def faust_broker_options(settings: AuditSettings) -> dict[str, Any]:
    """``faust.App`` keyword arguments giving its consumer and producer the same security.

    Faust derives aiokafka's ``security_protocol`` from the credentials class:
    ``SASLCredentials``/``OAuthCredentials`` (SASL_SSL when they carry a TLS
    context) or ``SSLCredentials`` (TLS only).
    """
    import faust

    context = kafka_ssl_context(settings)
    if kafka_uses_sasl(settings):
        if settings.kafka_sasl_mechanism == "OAUTHBEARER":
            provider = _token_provider(settings.kafka_sasl_oauth_token_file or "")
            return {
                "broker_credentials": faust.OAuthCredentials(oauth_cb=provider, ssl_context=context)
            }
        password = settings.kafka_sasl_password
        return {
            "broker_credentials": faust.SASLCredentials(
                username=settings.kafka_sasl_username,
                password=password.get_secret_value() if password is not None else None,
                ssl_context=context,
                mechanism=settings.kafka_sasl_mechanism,
            )
        }
    if context is not None:
        return {"broker_credentials": faust.SSLCredentials(context)}
    return {}


def mongo_tls_options(settings: AuditSettings) -> dict[str, Any]:
    """PyMongo TLS keyword arguments from the files settings (empty when none is set).

    The URI may carry the same options (``tls=true&tlsCAFile=…``); these exist so
    that a Kubernetes Secret mounted as files needs no URI editing.
    """
    options: dict[str, Any] = {}
    if settings.mongo_tls_ca_file:
        options["tls"] = True
        options["tlsCAFile"] = settings.mongo_tls_ca_file
    if settings.mongo_tls_certificate_key_file:
        options["tls"] = True
        options["tlsCertificateKeyFile"] = settings.mongo_tls_certificate_key_file
    return options


def mongo_write_concern(settings: AuditSettings) -> WriteConcern:
    """The write concern of every store writer: ``mongo_write_concern`` (``majority``
    or ``1``) with journaling as ``mongo_journal`` says."""
    from pymongo.write_concern import WriteConcern

    w: int | str = "majority" if settings.mongo_write_concern == "majority" else 1
    return WriteConcern(w=w, j=settings.mongo_journal)


def redis_tls_options(settings: AuditSettings) -> dict[str, Any]:
    """redis-py TLS keyword arguments (they apply to a ``rediss://`` URL; empty when unset)."""
    options: dict[str, Any] = {}
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = settings.redis_tls_ca_file
    if settings.redis_tls_certfile:
        options["ssl_certfile"] = settings.redis_tls_certfile
    if settings.redis_tls_keyfile:
        options["ssl_keyfile"] = settings.redis_tls_keyfile
    return options
