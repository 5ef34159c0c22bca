"""Shard leases: claim, renew, fail over, balance, release; all through conditional writes."""

from __future__ import annotations

import asyncio

from pipeline.sources.leases import LeaseManager, lease_key
from pipeline.state.memory import MemoryStore

SHARDS = ["shardId-000000000000", "shardId-000000000001", "shardId-000000000002",
          "shardId-000000000003"]


class ManualClock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def workers(store: MemoryStore, clock: ManualClock, *names: str) -> list[LeaseManager]:
    return [LeaseManager(store, "stream", name, lease_duration=10.0, clock=clock)
            for name in names]


async def owners(store: MemoryStore) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for shard in SHARDS:
        stored = await store.get(lease_key("stream", shard))
        out[shard] = None if stored is None else stored.value["owner"]
    return out


async def test_a_lone_worker_claims_every_shard_and_renews_its_leases() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    (w1,) = workers(store, clock, "w1")
    assert w1.renew_interval is not None and w1.renew_interval < w1.lease_duration
    assert await w1.acquire(SHARDS) == frozenset(SHARDS)
    first = await store.get(lease_key("stream", SHARDS[0]))
    clock.advance(3)
    assert await w1.acquire(SHARDS) == frozenset(SHARDS)
    renewed = await store.get(lease_key("stream", SHARDS[0]))
    assert first is not None and renewed is not None
    assert renewed.value["counter"] == first.value["counter"] + 1
    assert renewed.value["expires_at"] == first.value["expires_at"] + 3


async def test_two_workers_converge_to_an_even_split_without_sharing_a_shard() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    w1, w2 = workers(store, clock, "w1", "w2")
    await w1.acquire(SHARDS)  # alone at first: takes everything
    for _ in range(4):
        clock.advance(1)
        await w2.acquire(SHARDS)
        await w1.acquire(SHARDS)  # notices what was taken when its renewal fails
    assert len(w1.held) == len(w2.held) == 2
    assert w1.held.isdisjoint(w2.held)
    table = await owners(store)
    assert {s for s, o in table.items() if o == "w1"} == w1.held
    assert {s for s, o in table.items() if o == "w2"} == w2.held


async def test_an_odd_count_is_stable_and_does_not_thrash() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    w1, w2 = workers(store, clock, "w1", "w2")
    shards = SHARDS[:3]
    await w1.acquire(shards)
    history = []
    for _ in range(6):
        clock.advance(1)
        await w2.acquire(shards)
        await w1.acquire(shards)
        history.append((w1.held, w2.held))
    assert sorted([len(w1.held), len(w2.held)]) == [1, 2]
    assert history[-1] == history[-2] == history[-3]  # no lease moves once balanced


async def test_a_dead_workers_leases_are_taken_over_after_they_expire() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    w1, w2 = workers(store, clock, "w1", "w2")
    await w1.acquire(SHARDS[:2])
    await w2.acquire(SHARDS[2:])
    # w1 dies (stops renewing). Before its leases expire, w2 keeps its own share only.
    clock.advance(5)
    assert await w2.acquire(SHARDS) == frozenset(SHARDS[2:])
    clock.advance(6)  # past w1's expiry, and w1's heartbeat is gone too
    assert await w2.acquire(SHARDS) == frozenset(SHARDS)
    assert set((await owners(store)).values()) == {"w2"}


async def test_a_released_lease_is_claimed_at_once() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    w1, w2 = workers(store, clock, "w1", "w2")
    await w1.acquire(SHARDS)
    await w1.aclose()  # graceful shutdown gives every lease back
    assert set((await owners(store)).values()) == {None}
    assert await w2.acquire(SHARDS) == frozenset(SHARDS)


async def test_a_restarted_worker_takes_back_its_own_live_leases() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    (before,) = workers(store, clock, "w1")
    await before.acquire(SHARDS)
    (after,) = workers(store, clock, "w1")
    assert await after.acquire(SHARDS) == frozenset(SHARDS)


async def test_racing_claims_on_a_free_shard_have_exactly_one_winner() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    contenders = workers(store, clock, "a", "b", "c", "d")
    # Everybody heartbeats first, so each worker's fair share is one shard.
    for worker in contenders:
        await worker.acquire([])
    results = await asyncio.gather(*(w.acquire(SHARDS[:1]) for w in contenders))
    assert sum(len(r) for r in results) == 1


async def test_a_finished_shard_is_released_and_not_renewed() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    (w1,) = workers(store, clock, "w1")
    await w1.acquire(SHARDS)
    await w1.release(SHARDS[0])
    assert await w1.acquire(SHARDS[1:]) == frozenset(SHARDS[1:])
    assert (await owners(store))[SHARDS[0]] is None


async def test_three_workers_share_four_shards_and_a_joiner_gets_work() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    w1, w2, w3 = workers(store, clock, "w1", "w2", "w3")
    await w1.acquire(SHARDS)
    await w2.acquire(SHARDS)
    for _ in range(6):
        clock.advance(1)
        for w in (w3, w2, w1):
            await w.acquire(SHARDS)
    sizes = sorted(len(w.held) for w in (w1, w2, w3))
    assert sizes == [1, 1, 2]
    held = [s for w in (w1, w2, w3) for s in w.held]
    assert sorted(held) == sorted(SHARDS)  # every shard read, none by two workers


async def test_a_stale_heartbeat_is_not_counted_even_if_the_store_keeps_it() -> None:
    # The store's expiry lags (DynamoDB deletes TTL'd items late): its clock never moves here.
    clock, store_clock = ManualClock(), ManualClock()
    store = MemoryStore(store_clock)
    w1, w2 = workers(store, clock, "w1", "w2")
    await w1.acquire(SHARDS[:2])
    await w2.acquire(SHARDS[2:])
    clock.advance(11)  # w1 died more than a lease duration ago
    # Counted alone, w2's fair share is every shard, and w1's expired leases are free.
    assert await w2.acquire(SHARDS) == frozenset(SHARDS)
