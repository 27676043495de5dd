"""S3-compatible object storage, shared by the archive and the S3 log-stream destination.

One small interface (:class:`ObjectStore`: put, get, list_keys, delete) over
`obstore <https://developmentseed.org/obstore/>`_, the Python binding of the
Rust ``object_store`` crate (the one Apache Arrow, DataFusion and Delta use).
Why obstore rather than fsspec/s3fs or aiobotocore:

- **conditional writes**: ``put(..., mode="create")`` sends ``If-None-Match: *``,
  so a segment or manifest part is never overwritten, even by a second writer
  (s3fs has no such mode; aiobotocore has it only as raw request parameters);
- **native sync and async** calls with full type hints (``py.typed``): the
  archiver puts asynchronously, ``archive verify`` and replay read synchronously,
  and mypy --strict checks both (s3fs/fsspec are untyped; aiobotocore is async only);
- **no Python dependencies**: one wheel, where aiobotocore pins botocore
  (and so boto3) to exact versions that clash with other packages;
- bounded retries with backoff and timeouts are client options, and it is
  maintained (Development Seed, monthly releases).

obstore is imported only when a store is built, so the core keeps pydantic as
its only hard dependency; it comes with the ``processor`` extra.

Credentials: given explicitly, or, when unset, from the standard ``AWS_*``
environment variables, web identity or the instance metadata (obstore's chain).
Secrets never appear in ``repr``, :meth:`S3Location.describe` or error messages
(errors carry the method, URL and status only).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from obstore.store import S3Store


class ObjectStoreError(RuntimeError):
    """The object store did not acknowledge an operation (down, refused, timed out)."""


class ObjectExists(ObjectStoreError):
    """A create-only put found the key taken."""


@dataclass(frozen=True)
class S3Location:
    """Where objects go: a bucket, a key prefix, and how to reach and sign in to it."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None  # S3-compatible servers (MinIO, Ceph, R2, moto); None: AWS
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    timeout_seconds: float = 30.0
    max_retries: int = 3

    def describe(self) -> str:
        """``s3://bucket/prefix`` (and the endpoint): for logs and messages, no secret."""
        where = f"s3://{self.bucket}/{self.prefix.strip('/')}".rstrip("/")
        return f"{where} at {self.endpoint}" if self.endpoint else where


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


class ObjectStore:
    """put/get/list_keys/delete of whole objects under ``location.prefix``.

    Keys are relative to the prefix. ``put`` returns only once the store has
    acknowledged the object (a 200 to the PUT): the caller may then rely on it.
    Errors: :class:`FileNotFoundError` for a missing key, :class:`ObjectExists`
    for a create-only put on a taken key, :class:`ObjectStoreError` otherwise.
    """

    def __init__(self, location: S3Location) -> None:
        self.location = location
        self._store: S3Store | None = None

    def __repr__(self) -> str:
        return f"ObjectStore({self.location.describe()})"

    def _s3(self) -> S3Store:
        if self._store is None:
            from obstore.store import S3Store

            loc = self.location
            config: dict[str, Any] = {}
            if loc.endpoint:
                config["endpoint"] = loc.endpoint
            if loc.region:
                config["region"] = loc.region
            elif loc.endpoint:
                config["region"] = "us-east-1"  # S3-compatible servers mostly ignore it
            if loc.access_key_id:
                config["access_key_id"] = loc.access_key_id
            if loc.secret_access_key:
                config["secret_access_key"] = loc.secret_access_key
            if loc.session_token:
                config["session_token"] = loc.session_token
            timeout = timedelta(seconds=loc.timeout_seconds)
            self._store = S3Store(
                loc.bucket,
                prefix=loc.prefix.strip("/") or None,
                config=config,  # type: ignore[arg-type]
                client_options={
                    "allow_http": bool(loc.endpoint and loc.endpoint.startswith("http://")),
                    "timeout": timeout,
                    "connect_timeout": min(timeout, timedelta(seconds=5)),
                },
                retry_config={
                    "max_retries": loc.max_retries,
                    "backoff": {
                        "init_backoff": timedelta(milliseconds=100),
                        "max_backoff": timedelta(seconds=2),
                        "base": 2,
                    },
                    "retry_timeout": timeout,
                },
            )
        return self._store

    @contextlib.contextmanager
    def _errors(self, op: str, key: str) -> Iterator[None]:
        from obstore.exceptions import AlreadyExistsError, BaseError, NotFoundError

        try:
            yield
        except (NotFoundError, FileNotFoundError) as exc:
            raise FileNotFoundError(f"{self.location.describe()}: {key} not found") from exc
        except AlreadyExistsError as exc:
            raise ObjectExists(f"{self.location.describe()}: {key} exists") from exc
        except (BaseError, OSError, RuntimeError) as exc:
            if isinstance(exc, ObjectStoreError):
                raise
            raise ObjectStoreError(
                f"{op} {key} on {self.location.describe()} failed: {_first_line(exc)}"
            ) from None

    async def put(
        self, key: str, data: bytes, *, create_only: bool = False, content_type: str | None = None
    ) -> None:
        """Store ``data`` at ``key``; with ``create_only`` never replace an object."""
        import obstore

        with self._errors("PUT", key):
            await obstore.put_async(
                self._s3(),
                key,
                data,
                mode="create" if create_only else "overwrite",
                attributes={"Content-Type": content_type} if content_type else None,
            )

    async def put_idempotent(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """A create-only put that succeeds when ``key`` already holds exactly ``data``
        (a retried PUT whose first acknowledgement was lost); :class:`ObjectExists`
        when it holds anything else."""
        try:
            await self.put(key, data, create_only=True, content_type=content_type)
        except ObjectExists:
            if await self.get_async(key) != data:
                raise
        return None

    def get(self, key: str) -> bytes:
        import obstore

        with self._errors("GET", key):
            return bytes(obstore.get(self._s3(), key).bytes())
        raise AssertionError("unreachable")  # pragma: no cover

    async def get_async(self, key: str) -> bytes:
        import obstore

        with self._errors("GET", key):
            result = await obstore.get_async(self._s3(), key)
            return bytes(await result.bytes_async())
        raise AssertionError("unreachable")  # pragma: no cover

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (relative to the store's prefix), sorted."""
        import obstore

        keys: list[str] = []
        with self._errors("LIST", prefix or "/"):
            keys.extend(
                str(meta["path"]) for meta in obstore.list(self._s3(), prefix or None).collect()
            )
        return sorted(keys)

    async def list_keys_async(self, prefix: str = "") -> list[str]:
        return await asyncio.to_thread(self.list_keys, prefix)

    def delete(self, key: str) -> None:
        import obstore

        with self._errors("DELETE", key):
            obstore.delete(self._s3(), key)
