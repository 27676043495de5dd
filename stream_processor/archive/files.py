"""Durable file operations: a file is published whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the directory entries of ``path`` (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, root: Path) -> None:
    """``mkdir -p path`` with every new directory's entry fsync'd (up to ``root``)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p == root or p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_dir(d.parent)


def publish(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name, fsync it, rename it to ``path``, fsync the dir.

    A crash leaves either nothing at ``path`` or all of ``data``; never a part.
    Temporary names start with ``.`` and end with ``.tmp`` (the archiver removes
    leftovers at start).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
