"""WriteBackStore: the StateStore contract for a single owner, plus what write-back adds.

The contract suite runs unchanged against the layer over each local store, once
with room for everything and once with a map of one entry (so nearly every call
goes through eviction, a write-back and a read from the backing store).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from pipeline.state.base import StateStore
from pipeline.state.memory import MemoryStore
from pipeline.state.sqlite import SqliteStore
from pipeline.state.writeback import RowWriter, WriteBackStore, _Bloom
from tests.unit import test_state_contract as contract
from tests.unit.test_state_contract import FakeClock

# The contract's tests, collected here against this module's ``store`` fixture.
globals().update({name: getattr(contract, name) for name in dir(contract)
                  if name.startswith("test_")})

Backing = Callable[[FakeClock, Path], Awaitable[StateStore]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def _memory(clock: FakeClock, tmp: Path) -> StateStore:
    return MemoryStore(clock)


async def _sqlite_file(clock: FakeClock, tmp: Path) -> StateStore:
    return await SqliteStore.open(tmp / "state.db", clock=clock)


class _ContractOnly:
    """A store seen through the StateStore contract alone: no ``put_rows``, so the layer
    writes back with ``put_many`` (what it does over any other store)."""

    def __init__(self, inner: StateStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "put_rows":
            raise AttributeError(name)
        return getattr(self._inner, name)


async def _plain_sqlite(clock: FakeClock, tmp: Path) -> StateStore:
    plain = _ContractOnly(await SqliteStore.open(tmp / "state.db", clock=clock))
    assert not isinstance(plain, RowWriter)
    return cast(StateStore, plain)


BACKINGS: dict[str, Backing] = {"memory": _memory, "sqlite-rows": _sqlite_file,
                                "sqlite-put-many": _plain_sqlite}
# (entries, bytes of values): room for everything, one entry, a few small values' bytes.
SIZES = {"roomy": (20_000, 1 << 20), "tiny": (1, 1 << 20), "few-bytes": (20_000, 64)}


@pytest.fixture(params=[f"{b}/{s}" for b in sorted(BACKINGS) for s in sorted(SIZES)])
async def store(request: pytest.FixtureRequest, clock: FakeClock,
                tmp_path: Path) -> AsyncIterator[StateStore]:
    backing_name, size = request.param.split("/")
    entries, size_bytes = SIZES[size]
    made = await WriteBackStore.wrap(await BACKINGS[backing_name](clock, tmp_path), clock,
                                     max_entries=entries, max_bytes=size_bytes)
    try:
        yield made
    finally:
        await made.aclose()


def _rows(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT key, version FROM kv").fetchall())


async def test_writes_reach_the_file_on_eviction_and_at_close(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "state.db"
    backing = await SqliteStore.open(path, clock=clock)
    assert isinstance(backing, RowWriter)
    store = await WriteBackStore.wrap(backing, clock, max_entries=4)
    await store.put("a", {"n": 1})
    await store.put("a", {"n": 2})
    assert await store.put_if_absent("b", {"n": 1}, ttl=60) is not None
    await store.put("c", {"n": 1})
    await store.put("d", {"n": 1})
    assert _rows(path) == {}, "nothing written while the map has room"
    await store.put("e", {"n": 1})
    # Over the bound: the least recently used quarter-plus went out, at its versions.
    assert _rows(path) == {"a": 2, "b": 1}
    cas = await store.compare_and_set("c", 1, {"n": 2})
    assert cas is not None and cas.version == 2
    again = await store.put("a", {"n": 3})  # read back from the file
    assert again.version == 3 and store.backing_reads == 1
    await store.aclose()
    assert _rows(path) == {"a": 3, "b": 1, "c": 2, "d": 1, "e": 1}
    reopened = await SqliteStore.open(path, clock=clock)
    try:
        got = await reopened.get("b")
        assert got is not None and got.value == {"n": 1}
        assert got.expires_at == pytest.approx(clock.now() + 60)
    finally:
        await reopened.aclose()


async def test_the_byte_budget_bounds_the_map_as_the_entry_count_does(tmp_path: Path) -> None:
    """Few large values (incidents of a hundred findings) must not hold unbounded memory
    under a generous entry bound: the values' bytes bound the map too."""
    clock = FakeClock()
    path = tmp_path / "state.db"
    store = await WriteBackStore.wrap(await SqliteStore.open(path, clock=clock), clock,
                                      max_entries=1000, max_bytes=2000)
    big = {"members": "x" * 300}
    for i in range(20):
        await store.put(f"incident:{i}", big)
        assert store._bytes <= 2000 + 400
    assert 0 < len(store._map) < 20  # evicted by bytes, far under the entry bound
    assert store._bytes == sum(len(e.blob or b"") for e in store._map.values())
    assert len(_rows(path)) == 20 - len(store._map)
    await store.put("incident:0", {"members": "y"})  # read back, rewritten, smaller
    assert (await store.get("incident:0")).value == {"members": "y"}  # type: ignore[union-attr]
    assert await store.delete("incident:0")
    assert store._bytes == sum(len(e.blob or b"") for e in store._map.values())
    for i in range(1, 20):
        got = await store.get(f"incident:{i}")
        assert got is not None and got.value == big and got.version == 1
    await store.aclose()


async def test_a_throw_away_store_is_not_written_at_close(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "state.db"
    store = await WriteBackStore.wrap(await SqliteStore.open(path, clock=clock), clock,
                                      keep=False)
    await store.put("a", {"n": 1})
    await store.aclose()
    assert _rows(path) == {}


async def test_a_fresh_store_is_not_read_for_keys_it_cannot_hold(tmp_path: Path) -> None:
    clock = FakeClock()
    store = await WriteBackStore.wrap(await SqliteStore.open(tmp_path / "s.db", clock=clock),
                                      clock, max_entries=10)
    try:
        for i in range(100):
            assert await store.put_if_absent(f"k{i}", {"i": i}) is not None
        assert store.backing_reads == 0
        # Evicted after their flush: read back from the file, with their versions.
        assert len(store._map) <= 10
        got = await store.get("k0")
        assert got is not None and got.value == {"i": 0} and got.version == 1
        assert store.backing_reads == 1
        assert await store.put_if_absent("k1", {"i": -1}) is None
    finally:
        await store.aclose()


async def test_an_existing_store_is_read_before_deciding(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "s.db"
    first = await SqliteStore.open(path, clock=clock)
    await first.put("seen", {"n": 1})
    await first.put("seen", {"n": 2})
    await first.aclose()
    store = await WriteBackStore.wrap(await SqliteStore.open(path, clock=clock), clock)
    try:
        assert await store.put_if_absent("seen", {"n": 3}) is None
        got = await store.get("seen")
        assert got is not None and got.version == 2 and got.value == {"n": 2}
        written = await store.compare_and_set("seen", 2, {"n": 3})
        assert written is not None and written.version == 3
    finally:
        await store.aclose()
    assert _rows(path) == {"seen": 3}


async def test_delete_then_recreate_restarts_the_version_in_the_file(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "s.db"
    store = await WriteBackStore.wrap(await SqliteStore.open(path, clock=clock), clock)
    await store.put("k", {"n": 1})
    await store.put("k", {"n": 2})
    await store.flush()
    assert _rows(path) == {"k": 2}
    assert await store.delete("k", expected_version=2)
    again = await store.put("k", {"n": 3})
    assert again.version == 1
    await store.aclose()
    assert _rows(path) == {"k": 1}


async def test_scan_sees_unflushed_writes_and_deletes(tmp_path: Path) -> None:
    clock = FakeClock()
    store = await WriteBackStore.wrap(await SqliteStore.open(tmp_path / "s.db", clock=clock),
                                      clock)
    try:
        await store.put("p:a", {"n": 1})
        await store.put("p:b", {"n": 1}, ttl=5)
        await store.put("q:a", {"n": 1})
        await store.flush()
        await store.put("p:c", {"n": 1})
        await store.put("q:b", {"n": 1})
        assert await store.delete("p:a")
        clock.advance(5)
        assert [s.key for s in await store.scan("p:")] == ["p:c"]
        assert [s.key for s in await store.scan("q")] == ["q:a", "q:b"]
        assert await store.get("p:a") is None
    finally:
        await store.aclose()


def test_the_filter_of_written_keys_never_forgets_one() -> None:
    bloom = _Bloom(bits=1 << 12)  # small, so that it is nearly full
    keys = [f"baseline:user{i}:network:10.0.{i % 256}.0/24" for i in range(3000)]
    assert keys[0] not in bloom
    for key in keys:
        bloom.add(key)
    assert all(key in bloom for key in keys)
