"""An easyaudit logging backend that records nothing (the benchmark's baseline)."""

from __future__ import annotations

from typing import Any


class NullBackend:
    def crud(self, info: dict[str, Any]) -> None:
        return None

    def login(self, info: dict[str, Any]) -> None:
        return None

    def request(self, info: dict[str, Any]) -> None:
        return None
