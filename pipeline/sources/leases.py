"""Shard leases over the state store, like the Kinesis Client Library's lease table.

In a fleet every worker discovers the same shards; a lease says which worker
reads which shard. A lease lives at ``kinesis:lease:<stream>:<shard>`` as
``{owner, counter, expires_at}``. Every change is a conditional write
(``put_if_absent`` for a shard never leased, ``compare_and_set`` otherwise), so
two workers can never both believe they took the same lease from the same state.

Each call of ``acquire`` (every ``lease_duration / 3`` seconds, from the source's
discovery loop) does one pass:

1. heartbeat: ``kinesis:worker:<stream>:<worker>`` with a TTL of one lease
   duration, so the live workers can be counted;
2. renew the leases this worker holds (a failed renewal means another worker took
   the lease: the source stops that shard's reader);
3. claim free leases (never leased, released, or expired because their owner
   stopped renewing) up to this worker's fair share, ``ceil(shards / workers)``;
4. when still under the fair share, take one lease from the most loaded worker
   (one per pass, as the KCL does, so the fleet converges without thrashing).

A worker that dies stops renewing; its leases expire after ``lease_duration`` and
the next pass of any other worker claims them, so failover takes one lease
duration plus one renewal interval. During a handover two workers may briefly
read the same shard; checkpoints only move forward, so the cost is duplicates,
never loss. Expiry compares ``expires_at`` with the injected clock, which assumes
workers' clocks agree to well within a lease duration (NTP does far better).
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from pipeline.clock import WALL_CLOCK, Clock
from pipeline.state.base import StateStore, Stored

log = logging.getLogger(__name__)


def lease_prefix(stream: str) -> str:
    return f"kinesis:lease:{stream}:"


def lease_key(stream: str, shard_id: str) -> str:
    return f"{lease_prefix(stream)}{shard_id}"


def worker_prefix(stream: str) -> str:
    return f"kinesis:worker:{stream}:"


@dataclass(frozen=True, slots=True)
class Lease:
    shard_id: str
    owner: str | None
    counter: int
    expires_at: float
    version: int

    def live(self, now: float) -> bool:
        return self.owner is not None and self.expires_at > now


def _lease(shard_id: str, stored: Stored) -> Lease:
    value = stored.value
    owner = value.get("owner")
    return Lease(shard_id, owner if isinstance(owner, str) else None,
                 int(value.get("counter", 0)), float(value.get("expires_at", 0.0)),
                 stored.version)


class LeaseManager:
    """One worker's view of the lease table for one stream (a ``ShardOwnership``)."""

    def __init__(self, store: StateStore, stream: str, worker_id: str, *,
                 lease_duration: float = 15.0, clock: Clock = WALL_CLOCK) -> None:
        self.store = store
        self.stream = stream
        self.worker_id = worker_id
        self.lease_duration = lease_duration
        self.clock = clock
        self.renew_interval: float | None = lease_duration / 3
        self._held: dict[str, Lease] = {}
        self._rng = random.Random()  # noqa: S311 - spreading claims, not cryptography

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    def _value(self, counter: int, owner: str | None) -> dict[str, Any]:
        now = self.clock.now()
        return {"owner": owner, "counter": counter,
                "expires_at": now + self.lease_duration if owner else now}

    async def _write(self, shard_id: str, current: Lease | None, owner: str | None
                     ) -> Lease | None:
        """Conditionally replace ``current`` (None = never leased); the new lease or None."""
        key = lease_key(self.stream, shard_id)
        counter = (current.counter if current else 0) + 1
        value = self._value(counter, owner)
        if current is None:
            stored = await self.store.put_if_absent(key, value)
        else:
            stored = await self.store.compare_and_set(key, current.version, value)
        return None if stored is None else _lease(shard_id, stored)

    async def _live_workers(self) -> int:
        now = self.clock.now()
        await self.store.put(f"{worker_prefix(self.stream)}{self.worker_id}",
                             {"worker": self.worker_id, "seen": now},
                             ttl=self.lease_duration)
        # Judge liveness by ``seen`` too, not only by the store's TTL, so a store whose
        # expiry lags (DynamoDB) or runs on another clock cannot inflate the count.
        beats = await self.store.scan(worker_prefix(self.stream))
        live = sum(1 for b in beats
                   if float(b.value.get("seen", 0.0)) > now - self.lease_duration)
        return max(1, live)

    async def acquire(self, eligible: Collection[str]) -> frozenset[str]:
        wanted = set(eligible)
        now = self.clock.now()
        workers = await self._live_workers()
        prefix = lease_prefix(self.stream)
        table = {s.key[len(prefix):]: _lease(s.key[len(prefix):], s)
                 for s in await self.store.scan(prefix)}

        # Renew what we hold; anything changed under us was taken by another worker.
        for shard_id, mine in list(self._held.items()):
            current = table.get(shard_id)
            renewed = None
            if (shard_id in wanted and current is not None
                    and current.version == mine.version and current.owner == self.worker_id):
                renewed = await self._write(shard_id, current, self.worker_id)
            if renewed is None:
                del self._held[shard_id]
                if shard_id in wanted:
                    log.info("kinesis lease lost", extra={"stream": self.stream,
                                                          "shard": shard_id,
                                                          "worker": self.worker_id})
                continue
            self._held[shard_id] = table[shard_id] = renewed

        share = math.ceil(len(wanted) / workers)
        # Claim free leases: never leased, released, or expired. In a random order, as the
        # KCL does, so workers starting together do not all race for the same shard first.
        free = sorted(wanted - set(self._held))
        self._rng.shuffle(free)
        for shard_id in free:
            if len(self._held) >= share:
                break
            current = table.get(shard_id)
            # A lease still in our name after a restart with the same worker id is ours again.
            if current is not None and current.live(now) and current.owner != self.worker_id:
                continue
            taken = await self._write(shard_id, current, self.worker_id)
            if taken is not None:
                self._held[shard_id] = table[shard_id] = taken
                log.info("kinesis lease claimed",
                         extra={"stream": self.stream, "shard": shard_id,
                                "worker": self.worker_id,
                                "previous_owner": current.owner if current else None})

        # Balance: take one lease from the most loaded worker if we are under our share.
        if len(self._held) < share:
            load = Counter(lease.owner for s, lease in table.items()
                           if s in wanted and lease.live(now) and lease.owner != self.worker_id)
            if load:
                victim, count = load.most_common(1)[0]
                if count > share:
                    candidates = sorted(s for s, lease in table.items()
                                        if s in wanted and lease.owner == victim
                                        and lease.live(now))
                    if candidates:
                        shard_id = candidates[-1]
                        taken = await self._write(shard_id, table[shard_id], self.worker_id)
                        if taken is not None:
                            self._held[shard_id] = taken
                            log.info("kinesis lease taken to balance the fleet",
                                     extra={"stream": self.stream, "shard": shard_id,
                                            "worker": self.worker_id,
                                            "previous_owner": victim})
        return frozenset(self._held)

    async def release(self, shard_id: str) -> None:
        """Give the lease up now (shard finished, or shutting down) instead of letting it expire."""
        mine = self._held.pop(shard_id, None)
        if mine is None:
            return
        current = await self.store.get(lease_key(self.stream, shard_id))
        if current is None or current.version != mine.version:
            return  # renewed by someone else meanwhile: not ours to release
        await self._write(shard_id, _lease(shard_id, current), None)

    async def aclose(self) -> None:
        for shard_id in list(self._held):
            try:
                await self.release(shard_id)
            except Exception:
                log.exception("releasing a kinesis lease failed; it will expire",
                              extra={"stream": self.stream, "shard": shard_id})
        try:
            await self.store.delete(f"{worker_prefix(self.stream)}{self.worker_id}")
        except Exception:
            log.exception("removing the worker heartbeat failed; it will expire",
                          extra={"stream": self.stream, "worker": self.worker_id})
