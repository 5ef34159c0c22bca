"""The state-store contract: a small key-value store with TTLs and conditional writes.

Everything stateful in Riposte (Kinesis checkpoints, the correlation index,
baselines, the action and delivery ledgers, shared token buckets, leases) is
written against this interface, so the same code runs on the embedded SQLite
store and on DynamoDB for a fleet.

Values are JSON objects. Every write bumps ``version``; ``compare_and_set`` writes
only if the stored version is the one the caller read, which is how concurrent
workers (tasks or processes) agree without locks. Expired entries are invisible to
every read even before they are purged (DynamoDB's TTL deletes lazily, so the
contract must not depend on prompt deletion).

A read returns a value of its own: changing it changes nothing stored. A write
returns the entry as written, whose ``value`` is the very object the caller passed
in (every store keeps its own serialized copy, so neither changing that object
later nor changing the returned value reaches the store). Parsing back the JSON a
store has just made would cost as much as the write itself for large entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from pipeline.records import record


@record  # every state call returns one: a frozen dataclass's init costs 4x as much
class Stored:
    key: str
    value: dict[str, Any]
    version: int
    expires_at: float | None = None


@runtime_checkable
class StateStore(Protocol):
    async def get(self, key: str, *, consistent: bool = True) -> Stored | None:
        """The live entry at ``key``, or None if absent or expired."""
        ...

    async def put(self, key: str, value: dict[str, Any], *, ttl: float | None = None) -> Stored:
        """Unconditional write. ``ttl`` is seconds from the store's clock."""
        ...

    async def put_if_absent(
        self, key: str, value: dict[str, Any], *, ttl: float | None = None
    ) -> Stored | None:
        """Write only if no live entry exists; the new entry, or None if one existed."""
        ...

    async def compare_and_set(
        self, key: str, expected_version: int, value: dict[str, Any], *, ttl: float | None = None
    ) -> Stored | None:
        """Write only if the live entry has ``expected_version`` (0 = must be absent)."""
        ...

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        """Delete (optionally only at ``expected_version``); True if something was deleted."""
        ...

    async def scan(self, prefix: str, *, limit: int | None = None) -> list[Stored]:
        """Live entries whose key starts with ``prefix``, in key order."""
        ...

    async def get_many(self, keys: Sequence[str]) -> dict[str, Stored]:
        """The live entries among ``keys`` (absent and expired ones are left out).

        One round trip where the store allows it: hot paths that look up a whole
        batch (the delivery ledger) use this instead of one ``get`` per key.
        """
        ...

    async def put_many(self, entries: Sequence[tuple[str, dict[str, Any]]], *,
                       ttl: float | None = None) -> None:
        """Unconditional writes of several entries, each like ``put``."""
        ...

    async def aclose(self) -> None: ...
