"""An in-process state store: the reference semantics, used by tests and replay previews."""

from __future__ import annotations

import bisect
import copy
from collections.abc import Sequence
from typing import Any

from pipeline.clock import WALL_CLOCK, Clock
from pipeline.state.base import Stored


class MemoryStore:
    def __init__(self, clock: Clock = WALL_CLOCK) -> None:
        self.clock = clock
        self._data: dict[str, Stored] = {}
        self._keys: list[str] = []

    def _live(self, key: str) -> Stored | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires_at is not None and entry.expires_at <= self.clock.now():
            return None
        return entry

    def _write(self, key: str, value: dict[str, Any], ttl: float | None, version: int) -> Stored:
        expires = None if ttl is None else self.clock.now() + ttl
        entry = Stored(key, copy.deepcopy(value), version, expires)
        if key not in self._data:
            bisect.insort(self._keys, key)
        self._data[key] = entry
        return Stored(key, value, version, expires)  # as written: see StateStore

    async def get(self, key: str, *, consistent: bool = True) -> Stored | None:
        entry = self._live(key)
        return None if entry is None else Stored(key, copy.deepcopy(entry.value), entry.version,
                                                 entry.expires_at)

    async def put(self, key: str, value: dict[str, Any], *, ttl: float | None = None) -> Stored:
        current = self._data.get(key)
        return self._write(key, value, ttl, (current.version if current else 0) + 1)

    async def put_if_absent(self, key: str, value: dict[str, Any], *,
                            ttl: float | None = None) -> Stored | None:
        if self._live(key) is not None:
            return None
        current = self._data.get(key)
        return self._write(key, value, ttl, (current.version if current else 0) + 1)

    async def compare_and_set(self, key: str, expected_version: int, value: dict[str, Any], *,
                              ttl: float | None = None) -> Stored | None:
        live = self._live(key)
        if (live.version if live else 0) != expected_version:
            return None
        current = self._data.get(key)
        return self._write(key, value, ttl, (current.version if current else 0) + 1)

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        live = self._live(key)
        if live is None or (expected_version is not None and live.version != expected_version):
            return False
        del self._data[key]
        self._keys.remove(key)
        return True

    async def scan(self, prefix: str, *, limit: int | None = None) -> list[Stored]:
        out: list[Stored] = []
        start = bisect.bisect_left(self._keys, prefix)
        for key in self._keys[start:]:
            if not key.startswith(prefix):
                break
            entry = self._live(key)
            if entry is not None:
                out.append(Stored(key, copy.deepcopy(entry.value), entry.version,
                                  entry.expires_at))
                if limit is not None and len(out) >= limit:
                    break
        return out

    async def get_many(self, keys: Sequence[str]) -> dict[str, Stored]:
        found = {}
        for key in keys:
            entry = await self.get(key)
            if entry is not None:
                found[key] = entry
        return found

    async def put_many(self, entries: Sequence[tuple[str, dict[str, Any]]], *,
                       ttl: float | None = None) -> None:
        for key, value in entries:
            await self.put(key, value, ttl=ttl)

    async def aclose(self) -> None:
        return None
