"""Where the archive lives: a local directory or an S3-compatible bucket.

Both targets keep the same layout (``segments/<topic>/<partition>/e<epoch>/…``
and a manifest) and the same guarantees, each with its own primitive:

- a segment is published: directory: temp file, fsync, rename, fsync of the
  directory; bucket: the PUT acknowledged (200), create-only (``If-None-Match:
  *``), so an object is never replaced;
- a manifest append: directory: appended to ``manifest.ndjson`` and fsync'd;
  bucket: one object per append, ``manifest/<first entry n>.ndjson``, a
  create-only PUT after the segments' PUTs were acknowledged. The manifest is
  the parts in key order, concatenated: the same bytes as the file;
- a half-written segment: directory: a ``.tmp`` name, removed at start; bucket:
  never visible (a PUT is all or nothing); a segment no entry names (a crash
  between the two steps) is removed at start on both;
- one writer: directory: ``flock`` on ``.lock``; bucket: the create-only manifest
  part (a second archiver's append of the same entry number fails).

A retried S3 PUT whose acknowledgement was lost finds its own bytes at the key
and counts as done; anything else there is an error (:class:`ArchiveBusy`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from audit_events.objectstore import ObjectExists, ObjectStore, S3Location
from audit_events.settings import AuditSettings
from stream_processor.archive import files

MANIFEST = "manifest.ndjson"
MANIFEST_PARTS = "manifest/"
SEGMENTS = "segments"
LOCK = ".lock"


class ArchiveBusy(RuntimeError):
    """Another archiver holds (or wrote to) this archive."""


class ArchiveStorage(Protocol):
    """What the archive needs of a place to live (paths are relative, ``/``-separated)."""

    def describe(self) -> str: ...

    def read_manifest(self) -> bytes | None:
        """The manifest's bytes, one entry per line; None when there is none."""

    async def append_manifest(self, first_n: int, data: bytes) -> None:
        """Durably append ``data`` (whole lines, the first being entry ``first_n``)."""

    def cut_manifest(self, size: int) -> None:
        """Drop manifest bytes past ``size`` (a torn append)."""

    async def put_segment(self, rel: str, data: bytes) -> None:
        """Durably publish a segment: afterwards it is complete under ``rel``."""

    def read_segment(self, rel: str) -> bytes:
        """A segment's bytes (:class:`FileNotFoundError` when missing)."""

    def list_segment_files(self) -> list[str]:
        """Every file under ``segments/``, listed or not, temporary ones included."""

    def delete(self, rel: str) -> None: ...

    def lock(self) -> contextlib.AbstractContextManager[None]: ...


class DirectoryStorage:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def read_manifest(self) -> bytes | None:
        path = self.root / MANIFEST
        return path.read_bytes() if path.exists() else None

    async def append_manifest(self, first_n: int, data: bytes) -> None:
        self._append(data)

    def _append(self, data: bytes) -> None:
        path = self.root / MANIFEST
        created = not path.exists()
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if created:
            files.fsync_dir(self.root)

    def cut_manifest(self, size: int) -> None:
        with open(self.root / MANIFEST, "r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())

    async def put_segment(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        files.make_dirs(path.parent, self.root)
        files.publish(path, data)

    def read_segment(self, rel: str) -> bytes:
        path = self.root / rel
        if not path.is_file():
            raise FileNotFoundError(rel)
        return path.read_bytes()

    def list_segment_files(self) -> list[str]:
        seg_root = self.root / SEGMENTS
        if not seg_root.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix() for p in seg_root.rglob("*") if p.is_file()
        )

    def delete(self, rel: str) -> None:
        (self.root / rel).unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on the directory for this process."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ArchiveBusy(f"another archiver is writing {self.root}") from None
            yield
        finally:
            os.close(fd)


class ObjectStorage:
    """The archive in an S3-compatible bucket (see the module docstring)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def describe(self) -> str:
        return self.store.location.describe()

    def read_manifest(self) -> bytes | None:
        keys = [k for k in self.store.list_keys(MANIFEST_PARTS) if k.endswith(".ndjson")]
        if not keys:
            return None
        with ThreadPoolExecutor(max_workers=8) as pool:  # one GET per part, in parallel
            parts = list(pool.map(self.store.get, keys))
        return b"".join(parts)

    async def append_manifest(self, first_n: int, data: bytes) -> None:
        try:
            await self.store.put_idempotent(
                f"{MANIFEST_PARTS}{first_n:020d}.ndjson", data, "application/x-ndjson"
            )
        except ObjectExists:
            raise ArchiveBusy(
                f"manifest entry {first_n} of {self.describe()} was written by someone else: "
                "another archiver is writing this archive"
            ) from None

    def cut_manifest(self, size: int) -> None:  # a PUT is whole: no torn part
        return None

    async def put_segment(self, rel: str, data: bytes) -> None:
        try:
            await self.store.put_idempotent(rel, data, "application/gzip")
        except ObjectExists:
            raise ArchiveBusy(
                f"{rel} in {self.describe()} holds other bytes: another archiver is writing "
                "this archive"
            ) from None

    def read_segment(self, rel: str) -> bytes:
        return self.store.get(rel)

    def list_segment_files(self) -> list[str]:
        return self.store.list_keys(f"{SEGMENTS}/")

    def delete(self, rel: str) -> None:
        self.store.delete(rel)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:  # fenced by the create-only manifest parts
        yield


def s3_location(settings: AuditSettings) -> S3Location | None:
    """The archive's bucket from the settings, or None (the directory target)."""
    if not settings.archive_s3_bucket:
        return None

    def secret(value: object) -> str | None:
        if value is None:
            return None
        get = getattr(value, "get_secret_value", None)
        return str(get()) if get is not None else str(value)

    return S3Location(
        bucket=settings.archive_s3_bucket,
        prefix=settings.archive_s3_prefix,
        endpoint=settings.archive_s3_endpoint,
        region=settings.archive_s3_region,
        access_key_id=settings.archive_s3_access_key_id,
        secret_access_key=secret(settings.archive_s3_secret_access_key),
        session_token=secret(settings.archive_s3_session_token),
        timeout_seconds=settings.archive_s3_timeout_seconds,
    )


def archive_storage(settings: AuditSettings) -> ArchiveStorage:
    """The configured target: the bucket when ``archive_s3_bucket`` is set, else the directory."""
    location = s3_location(settings)
    if location is not None:
        return ObjectStorage(ObjectStore(location))
    return DirectoryStorage(settings.archive_path())


def as_storage(root: str | Path | ArchiveStorage) -> ArchiveStorage:
    """A directory path (as every caller passed before the S3 target) or a storage."""
    if isinstance(root, (str, Path)):
        return DirectoryStorage(root)
    return root
