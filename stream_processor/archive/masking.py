"""The archive's masked copy: the tenants' masking rules, read from MongoDB through one
client for the archiver's life, and a wait (never an unmasked copy) while MongoDB is
away (docs/archive.md, "MongoDB down"; docs/masking.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from audit_events.masking import MASKING_COLLECTION
from audit_events.schema import limits_from
from audit_events.settings import AuditSettings, SettingsError, mongo_client_options
from stream_processor.masking import RecordMasker, RuleCache, archived_records
from stream_processor.records import Record

log = logging.getLogger("auditstream.archiver")
RETRY_MAX_SECONDS = 5.0


class MaskingUnavailable(Exception):
    """The rules could not be read and the archiver is stopping: nothing was archived
    from the records at hand (they stay in the topic for the next start)."""


class ArchiveRules:
    """The tenants' masking rules for the archiver, from one ``AsyncMongoClient``.

    The client is created at the first load (inside the archiver's event loop) and
    kept until :meth:`close`: PyMongo reconnects it by itself once MongoDB is back,
    so an outage neither opens a client per attempt nor loses the connection pool.
    """

    def __init__(self, settings: AuditSettings) -> None:
        if not settings.mongo_uri:
            raise SettingsError(
                "missing setting AUDITSTREAM_MONGO_URI: the archiver loads the tenants' "
                "masking rules from MongoDB (collection masking_rules) to mask its copy"
            )
        self.settings = settings
        self.client: Any = None  # AsyncMongoClient, once a load needs it
        self.clients_opened = 0
        self.failures = 0  # loads that failed (MongoDB away), for tests and logs
        secret = settings.masking_secret
        rules = RuleCache(
            self._load,
            secret.get_secret_value().encode() if secret is not None else None,
            cache_seconds=settings.masking_cache_seconds,
            delay_seconds=settings.masking_delay_seconds,
        )
        self.masker = RecordMasker(
            rules, settings.topic_events, limits_from(settings), settings.max_event_bytes
        )

    async def _load(self, tenants: list[str]) -> list[dict[str, Any]]:
        if self.client is None:
            from pymongo import AsyncMongoClient

            self.client = AsyncMongoClient(
                self.settings.mongo_uri, tz_aware=True, **mongo_client_options(self.settings)
            )
            self.clients_opened += 1
        coll = self.client[self.settings.mongo_db][MASKING_COLLECTION]
        docs: list[dict[str, Any]] = await coll.find({"tenant": {"$in": tenants}}).to_list(None)
        return docs

    async def records(
        self,
        messages: list[Any],
        record_of: Callable[[Any], Record],
        stop: asyncio.Event | None,
    ) -> list[tuple[Record, Record, int]]:
        """``(record as in the topic, record to archive, timestamp type)`` per message,
        masked as the processor stores them. While the rules cannot be read (MongoDB
        down) this waits and tries again, with backoff up to 5 s, for as long as it
        takes; it never returns an unmasked copy. Raises :class:`MaskingUnavailable`
        once ``stop`` is set."""
        delay, since = 0.2, time.monotonic()
        while True:
            try:
                out = await archived_records(self.masker, messages, record_of, retry_seconds=0)
            except Exception as exc:
                self.failures += 1
                if stop is not None and stop.is_set():
                    raise MaskingUnavailable(str(exc)) from exc
                log.warning(
                    "masking rules unavailable for %.0fs, archiving waits (retrying in %.1fs): %s",
                    time.monotonic() - since,
                    delay,
                    exc,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for((stop or asyncio.Event()).wait(), delay)
                delay = min(RETRY_MAX_SECONDS, delay * 2)
                continue
            if delay > 0.2:  # this call waited
                log.warning("masking rules readable again: archiving resumes")
            return out

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()
