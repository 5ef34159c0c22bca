"""The StateStore contract, run against every implementation.

MemoryStore is the reference; SqliteStore must behave identically (in memory and
on a file), and so must DynamoDbStore (against the moto server, opened through
the same ``open_store`` factory the service uses, with a fresh table per test).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.state.base import StateStore
from pipeline.state.memory import MemoryStore
from pipeline.state.sqlite import SqliteStore


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


Factory = Callable[[FakeClock, Path], Awaitable[StateStore]]


async def _memory(clock: FakeClock, tmp: Path) -> StateStore:
    return MemoryStore(clock)


async def _sqlite_memory(clock: FakeClock, tmp: Path) -> StateStore:
    return await SqliteStore.open(":memory:", clock=clock)


async def _sqlite_file(clock: FakeClock, tmp: Path) -> StateStore:
    return await SqliteStore.open(tmp / "state.db", clock=clock)


async def _sqlite_scratch(clock: FakeClock, tmp: Path) -> StateStore:
    return await SqliteStore.open(tmp / "scratch.db", clock=clock, scratch=True)


STORES: dict[str, Factory] = {
    "memory": _memory,
    "sqlite-memory": _sqlite_memory,
    "sqlite-file": _sqlite_file,
    "sqlite-scratch": _sqlite_scratch,
}
DYNAMODB = "dynamodb"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=[*sorted(STORES), DYNAMODB])
async def store(request: pytest.FixtureRequest, clock: FakeClock,
                tmp_path: Path) -> AsyncIterator[StateStore]:
    if request.param != DYNAMODB:
        made = await STORES[request.param](clock, tmp_path)
        try:
            yield made
        finally:
            await made.aclose()
        return
    request.getfixturevalue("moto_server")
    from pipeline.aws import AwsClients
    from pipeline.config import DynamoDbStateConfig
    from pipeline.state.factory import open_store

    aws = AwsClients("us-east-1")
    try:
        config = DynamoDbStateConfig(table=f"contract-{uuid.uuid4().hex[:12]}",
                                     create_if_missing=True)
        made = await open_store(config, aws, clock)
        try:
            yield made
        finally:
            await made.aclose()
    finally:
        await aws.aclose()


async def test_get_absent_is_none(store: StateStore) -> None:
    assert await store.get("nope") is None


async def test_put_then_get_round_trips_json_and_bumps_version(store: StateStore) -> None:
    value = {"s": "é✓", "n": 1.5, "i": -3, "b": True, "z": None, "l": [1, {"x": []}]}
    first = await store.put("k", value)
    assert first.version == 1 and first.value == value and first.expires_at is None
    second = await store.put("k", {"v": 2})
    assert second.version == 2
    got = await store.get("k")
    assert got is not None and got.value == {"v": 2} and got.version == 2


async def test_returned_values_are_copies(store: StateStore) -> None:
    await store.put("k", {"l": [1]})
    got = await store.get("k")
    assert got is not None
    got.value["l"].append(2)
    again = await store.get("k")
    assert again is not None and again.value == {"l": [1]}


async def test_writes_return_what_was_written_and_keep_their_own_copy(
        store: StateStore) -> None:
    # A write hands back the caller's own value (no parse of what was just stored);
    # whatever the caller then does to that object, or to the returned one, the store
    # keeps what it was given at the time of the write.
    value: dict[str, Any] = {"l": [1], "n": "x"}
    written = [await store.put("a", value),
               await store.put_if_absent("b", value),
               await store.compare_and_set("c", 0, value)]
    for stored in written:
        assert stored is not None and stored.value == {"l": [1], "n": "x"}
    first = written[0]
    assert first is not None
    value["l"].append(2)
    first.value["n"] = "changed"
    for key in ("a", "b", "c"):
        got = await store.get(key)
        assert got is not None and got.value == {"l": [1], "n": "x"}, key
    again = await store.compare_and_set("a", 1, {"v": [3]})
    assert again is not None and again.value == {"v": [3]} and again.version == 2


async def test_put_if_absent(store: StateStore) -> None:
    created = await store.put_if_absent("k", {"a": 1})
    assert created is not None and created.version == 1
    assert await store.put_if_absent("k", {"a": 2}) is None
    got = await store.get("k")
    assert got is not None and got.value == {"a": 1}


async def test_put_if_absent_replaces_an_expired_entry(store: StateStore,
                                                       clock: FakeClock) -> None:
    await store.put("k", {"a": 1}, ttl=10)
    assert await store.put_if_absent("k", {"a": 2}) is None
    clock.advance(10)
    created = await store.put_if_absent("k", {"a": 3}, ttl=5)
    assert created is not None and created.value == {"a": 3}
    assert created.version == 2  # versions keep counting over an expired entry
    assert created.expires_at == pytest.approx(clock.now() + 5)


async def test_compare_and_set(store: StateStore) -> None:
    assert await store.compare_and_set("k", 1, {"a": 1}) is None  # absent is version 0
    first = await store.compare_and_set("k", 0, {"a": 1})
    assert first is not None and first.version == 1
    assert await store.compare_and_set("k", 0, {"a": 2}) is None
    assert await store.compare_and_set("k", 2, {"a": 2}) is None
    second = await store.compare_and_set("k", 1, {"a": 2})
    assert second is not None and second.version == 2
    got = await store.get("k")
    assert got is not None and got.value == {"a": 2}


async def test_compare_and_set_on_expired_entry(store: StateStore, clock: FakeClock) -> None:
    stored = await store.put("k", {"a": 1}, ttl=1)
    clock.advance(2)
    # The expired entry is gone as far as CAS is concerned: its version no longer matches...
    assert await store.compare_and_set("k", stored.version, {"a": 2}) is None
    # ...and "must be absent" succeeds.
    replaced = await store.compare_and_set("k", 0, {"a": 3})
    assert replaced is not None and replaced.value == {"a": 3}


async def test_delete(store: StateStore) -> None:
    assert await store.delete("k") is False
    stored = await store.put("k", {"a": 1})
    assert await store.delete("k", expected_version=stored.version + 1) is False
    assert await store.get("k") is not None
    assert await store.delete("k", expected_version=stored.version) is True
    assert await store.get("k") is None
    await store.put("k", {"a": 1})
    assert await store.delete("k") is True
    assert await store.delete("k") is False


async def test_delete_of_expired_entry_is_false(store: StateStore, clock: FakeClock) -> None:
    await store.put("k", {"a": 1}, ttl=1)
    clock.advance(1)
    assert await store.delete("k") is False


async def test_ttl_expiry_on_the_store_clock(store: StateStore, clock: FakeClock) -> None:
    stored = await store.put("k", {"a": 1}, ttl=10)
    assert stored.expires_at == pytest.approx(clock.now() + 10)
    clock.advance(9.5)
    assert await store.get("k") is not None
    clock.advance(0.5)  # expires_at <= now: gone
    assert await store.get("k") is None
    assert await store.scan("k") == []


async def test_put_without_ttl_clears_an_earlier_ttl(store: StateStore,
                                                      clock: FakeClock) -> None:
    await store.put("k", {"a": 1}, ttl=5)
    await store.put("k", {"a": 2})
    clock.advance(100)
    got = await store.get("k")
    assert got is not None and got.value == {"a": 2} and got.expires_at is None


@pytest.mark.parametrize(("prefix", "expected"), [
    ("corr:gd:", ["corr:gd:a", "corr:gd:b", "corr:gd:b#1"]),
    ("corr:gd:b", ["corr:gd:b", "corr:gd:b#1"]),
    ("corr:gd:b#", ["corr:gd:b#1"]),
    ("corr:", ["corr:gd:a", "corr:gd:b", "corr:gd:b#1", "corr:gé", "corr:g\uffff"]),
    ("zzz", []),
    ("", ["corr:gd:a", "corr:gd:b", "corr:gd:b#1", "corr:gé", "corr:g\uffff", "corr;x"]),
])
async def test_scan_by_prefix_in_key_order(store: StateStore, prefix: str,
                                           expected: list[str]) -> None:
    for key in ["corr;x", "corr:gd:b#1", "corr:g\uffff", "corr:gd:a", "corr:gé", "corr:gd:b"]:
        await store.put(key, {"k": key})
    found = await store.scan(prefix)
    assert [s.key for s in found] == expected
    assert all(s.value == {"k": s.key} for s in found)


async def test_scan_limit_and_expiry(store: StateStore, clock: FakeClock) -> None:
    for i in range(5):
        await store.put(f"p:{i}", {"i": i}, ttl=10 if i % 2 else None)
    assert [s.key for s in await store.scan("p:", limit=2)] == ["p:0", "p:1"]
    clock.advance(10)
    assert [s.key for s in await store.scan("p:")] == ["p:0", "p:2", "p:4"]
    assert [s.key for s in await store.scan("p:", limit=2)] == ["p:0", "p:2"]


async def test_concurrent_cas_increments_lose_nothing(store: StateStore) -> None:
    async def bump(times: int) -> None:
        for _ in range(times):
            while True:
                cur = await store.get("counter")
                n = 0 if cur is None else cur.value["n"]
                if await store.compare_and_set("counter", 0 if cur is None else cur.version,
                                               {"n": n + 1}) is not None:
                    break

    await asyncio.gather(*(bump(25) for _ in range(4)))
    got = await store.get("counter")
    assert got is not None and got.value["n"] == 100 and got.version == 100


async def test_get_many_and_put_many(store: StateStore, clock: FakeClock) -> None:
    assert await store.get_many([]) == {}
    await store.put("m:a", {"n": 1})
    await store.put_many([("m:b", {"n": 2}), ("m:a", {"n": 3})], ttl=10)
    await store.put_many([])
    found = await store.get_many(["m:a", "m:b", "m:missing", "m:a"])
    assert {k: v.value for k, v in found.items()} == {"m:a": {"n": 3}, "m:b": {"n": 2}}
    assert found["m:a"].version == 2, "put_many bumps versions like put"
    keys = [f"m:k{i:04d}" for i in range(620)]  # more than one round trip's worth
    await store.put_many([(k, {"k": k}) for k in keys])
    assert len(await store.get_many(keys)) == 620
    clock.advance(11)
    assert set(await store.get_many(["m:a", "m:b"])) == set(), "expired entries are left out"
