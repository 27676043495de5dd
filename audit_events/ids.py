"""Event ids: UUIDv7 (time-ordered), generated when a client supplies none.

Python 3.11's :mod:`uuid` has no ``uuid7`` (added in 3.14), so the RFC 9562
layout is written here in a few lines rather than pulling in a dependency.
"""

from __future__ import annotations

import os
import time
import uuid


def uuid7(now_ns: int | None = None) -> str:
    """Return a new RFC 9562 UUIDv7 string: 48-bit ms timestamp, then random bits."""
    ms = (now_ns if now_ns is not None else time.time_ns()) // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & (2**48 - 1)) << 80 | rand & (2**80 - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))
