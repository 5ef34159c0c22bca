"""The action ledger: one state-store entry per (incident or finding, action kind, resource).

Every decision goes through a conditional write here before anything is done, so
a redelivered message, a newer revision of the same incident or a second worker
finds the entry and does nothing. An enforce decision first *claims* its entry
(state ``claimed``, with the plan stored before any call is made); a claim older
than ``claim_timeout`` belongs to a worker that died between apply and the ledger
update, and whoever finds it re-describes the resource (verify) before deciding
whether anything still has to be applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.clock import Clock
from pipeline.state.base import StateStore, Stored

LEDGER_PREFIX = "ledger:"
INDEX_PREFIX = "action:"
RESERVE_PREFIX = "reserve:"
PAUSED_KEY = "containment:paused"

# States. ``claimed`` is the only non-final one an enforce decision passes through.
CLAIMED = "claimed"
RECORDED = "recorded"
PLANNED = "planned"
SKIPPED = "skipped"
AWAITING_APPROVAL = "awaiting_approval"
VERIFIED = "verified"
FAILED = "failed"
ROLLING_BACK = "rolling_back"
ROLLED_BACK = "rolled_back"
REJECTED = "rejected"

# A later decision in a mode that acts may replace these; every other state is final.
SUPERSEDABLE = frozenset({RECORDED, PLANNED, SKIPPED})


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    version: int
    value: dict[str, Any]

    @property
    def state(self) -> str:
        return str(self.value.get("state", ""))

    @property
    def action_id(self) -> str:
        return str(self.value.get("action_id", ""))


def _entry(stored: Stored | None) -> Entry | None:
    return None if stored is None else Entry(stored.key, stored.version, stored.value)


class Ledger:
    def __init__(self, store: StateStore, clock: Clock, *, ttl: float,
                 claim_timeout: float) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self.claim_timeout = claim_timeout

    @staticmethod
    def key(subject: str, kind: str, resource_key: str) -> str:
        return f"{LEDGER_PREFIX}{subject}|{kind}|{resource_key}"

    async def read(self, key: str) -> Entry | None:
        return _entry(await self.store.get(key))

    async def write(self, key: str, expected_version: int, value: dict[str, Any]
                    ) -> Entry | None:
        """Compare-and-set (0 = must be absent); None when someone else got there first."""
        value = {**value, "updated": self.clock.now()}
        return _entry(await self.store.compare_and_set(key, expected_version, value,
                                                       ttl=self.ttl))

    async def release(self, entry: Entry) -> bool:
        """Give a claim back (a retriable failure): the redelivery may claim it again."""
        return await self.store.delete(entry.key, expected_version=entry.version)

    def stale(self, entry: Entry) -> bool:
        claimed_at = float(entry.value.get("claimed_at", 0.0))
        return entry.state == CLAIMED and self.clock.now() - claimed_at >= self.claim_timeout

    async def index(self, action_id: str, key: str) -> None:
        await self.store.put(f"{INDEX_PREFIX}{action_id}", {"ledger_key": key}, ttl=self.ttl)

    async def key_for(self, action_id: str) -> str | None:
        found = await self.store.get(f"{INDEX_PREFIX}{action_id}")
        return None if found is None else str(found.value["ledger_key"])

    async def for_subject(self, subject: str) -> list[Entry]:
        return [Entry(s.key, s.version, s.value)
                for s in await self.store.scan(f"{LEDGER_PREFIX}{subject}|")]

    async def entries(self, limit: int | None = None) -> list[Entry]:
        return [Entry(s.key, s.version, s.value)
                for s in await self.store.scan(LEDGER_PREFIX, limit=limit)]


class Reservations:
    """Numbers handed out once across the fleet (NACL rule numbers), with a TTL.

    A reservation only has to cover the time from plan to apply (or to approval
    expiry): once applied, the entry in the ACL itself marks the number as used.
    """

    def __init__(self, store: StateStore, *, ttl: float) -> None:
        self.store = store
        self.ttl = ttl

    @staticmethod
    def _key(namespace: str, value: int) -> str:
        return f"{RESERVE_PREFIX}{namespace}:{value:05d}"

    async def reserve(self, namespace: str, value: int, owner: str) -> bool:
        key = self._key(namespace, value)
        if await self.store.put_if_absent(key, {"owner": owner}, ttl=self.ttl) is not None:
            return True
        held = await self.store.get(key)
        return held is not None and held.value.get("owner") == owner

    async def reserved(self, namespace: str, value: int) -> bool:
        return await self.store.get(self._key(namespace, value)) is not None


async def is_paused(store: StateStore) -> bool:
    flag = await store.get(PAUSED_KEY)
    return bool(flag is not None and flag.value.get("paused"))
