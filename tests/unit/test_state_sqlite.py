"""SqliteStore specifics: the file, WAL, purging, lock handling and several processes."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import RetriableError
from pipeline.state.sqlite import SqliteStore, _Kind, prefix_upper_bound

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM kv").fetchone()[0])


@pytest.mark.parametrize(("prefix", "upper"), [
    ("abc", "abd"),
    ("a:", "a;"),
    ("", None),
    ("a\U0010ffff", "b"),
    ("\U0010ffff", None),
    ("x\ud7ff", "x\ue000"),  # skips the surrogate block, which UTF-8 cannot hold
])
def test_prefix_upper_bound(prefix: str, upper: str | None) -> None:
    assert prefix_upper_bound(prefix) == upper


async def test_file_uses_wal_and_an_expiry_index(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
    try:
        await store.put("k", {"a": 1})
    finally:
        await store.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(kv)")}
    assert "kv_expires_at" in indexes


async def test_reopened_file_keeps_data_and_versions(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "s.db"
    store = await SqliteStore.open(path)
    await store.put("k", {"a": 1})
    await store.put("k", {"a": 2})
    await store.aclose()
    store = await SqliteStore.open(path)
    try:
        got = await store.get("k")
        assert got is not None and got.value == {"a": 2} and got.version == 2
        assert await store.compare_and_set("k", 2, {"a": 3}) is not None
    finally:
        await store.aclose()


async def test_purge_expired_deletes_only_expired_rows(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path, clock=clock)
    try:
        await store.put("keep", {"a": 1})
        await store.put("later", {"a": 1}, ttl=100)
        for i in range(3):
            await store.put(f"old:{i}", {"a": i}, ttl=5)
        clock.t += 5
        assert await store.get("old:0") is None  # invisible before any purge
        assert _rows(path) == 5
        assert await store.purge_expired() == 3
        assert _rows(path) == 2
        assert await store.purge_expired() == 0
    finally:
        await store.aclose()


async def test_background_purge_runs_periodically(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path, clock=clock, purge_interval=0.02)
    try:
        await store.put("old", {"a": 1}, ttl=1)
        clock.t += 2
        for _ in range(100):
            if _rows(path) == 0:
                break
            await asyncio.sleep(0.01)
        assert _rows(path) == 0
    finally:
        await store.aclose()


async def test_lock_held_too_long_is_retriable(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path, busy_timeout=0.05)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
        with pytest.raises(RetriableError) as info:
            await store.put("k", {"a": 1})
        assert info.value.reason == "state_busy"
        holder.execute("ROLLBACK")
        assert (await store.put("k", {"a": 1})).version == 1
    finally:
        holder.close()
        await store.aclose()


def _writing_to_a_new_file(path: Path) -> sqlite3.Connection:
    """Another connection in the middle of a write to a file still in rollback-journal mode."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO other VALUES (1)")
    return holder


async def test_opening_waits_out_a_writer_on_a_new_file(tmp_path: Path) -> None:
    # Another process is writing to a file still in rollback-journal mode (as when
    # workers of one host start together). Switching it to WAL then fails at once with
    # "database is locked", SQLite skipping the busy wait to avoid a deadlock: open()
    # must keep trying within its busy timeout rather than fail the worker's start.
    path = tmp_path / "s.db"
    holder = _writing_to_a_new_file(path)
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        store = await SqliteStore.open(path, busy_timeout=5.0)
        try:
            assert (await store.put("k", {"a": 1})).version == 1
        finally:
            await store.aclose()
    finally:
        release.join()
        holder.close()
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        check.close()


async def test_opening_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    holder = _writing_to_a_new_file(path)
    try:
        with pytest.raises(RetriableError, match="database is locked"):
            await SqliteStore.open(path, busy_timeout=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


class Paused:
    """Holds the store's worker thread inside a call, so what is queued meanwhile forms ONE
    batch when released (the batch a busy pipeline would make on its own)."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.gate = threading.Event()
        self.entered = threading.Event()

    def _hold(self) -> None:
        self.entered.set()
        self.gate.wait(10)

    async def __aenter__(self) -> Paused:
        self.task = asyncio.ensure_future(self.store._call(self._hold, kind=_Kind.ALONE))
        await asyncio.to_thread(self.entered.wait, 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.gate.set()
        await self.task


async def _queued(*coros: Any) -> list[asyncio.Future[Any]]:
    """Start calls and let each reach the worker's queue."""
    futures = [asyncio.ensure_future(c) for c in coros]
    await asyncio.sleep(0.01)
    return futures


@pytest.fixture
async def file_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "s.db")
    yield store
    await store.aclose()


async def test_queued_writes_share_one_commit_and_each_stays_atomic(
        file_store: SqliteStore, tmp_path: Path) -> None:
    before = file_store._worker.transactions
    async with Paused(file_store):
        futures = await _queued(
            *(file_store.put_if_absent("same", {"n": i}) for i in range(20)),
            *(file_store.put(f"k{i}", {"n": i}) for i in range(20)))
    results = await asyncio.gather(*futures)
    assert file_store._worker.transactions == before + 1
    # Conditional writes inside one transaction still race correctly: one winner.
    assert sum(r is not None for r in results[:20]) == 1
    assert _rows(tmp_path / "s.db") == 21  # visible to another connection: committed
    assert (await file_store.get("same")) is not None


async def test_a_scratch_file_skips_the_journal_on_disk_and_rolls_back_still(
        tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path, scratch=True)
    try:
        db = store._db()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "memory"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 0
        await store.put_rows([("a", b'{"n": 1}', None, 1)])
        # A batch that fails part-way leaves nothing of itself: the savepoint rolls back.
        with pytest.raises(sqlite3.IntegrityError):
            await store.put_rows([("b", b'{"n": 2}', None, 1),
                                  (None, b"{}", None, 1)])  # type: ignore[list-item]
        assert await store.get("b") is None
        assert (await store.get("a")) is not None
    finally:
        await store.aclose()
    assert not (tmp_path / "s.db-wal").exists() and not (tmp_path / "s.db-journal").exists()


async def test_a_failing_call_does_not_fail_its_batch(file_store: SqliteStore,
                                                     tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "s.db", isolation_level=None) as other:
        other.execute("INSERT INTO kv (key, value, version) VALUES ('bad', x'ff00', 1)")
    async with Paused(file_store):
        bad_read, write, bad_many, many = await _queued(
            file_store.get("bad"), file_store.put("ok", {"a": 1}),
            file_store.put_many([("m1", {"a": 1}), (None, {"a": 2})]),  # type: ignore[list-item]
            file_store.put_many([("m3", {"a": 3}), ("m4", {"a": 4})]))
    with pytest.raises(ValueError):  # the stored value is not JSON
        await bad_read
    with pytest.raises(sqlite3.IntegrityError):
        await bad_many
    assert (await write).version == 1
    await many
    # The failed put_many is all or nothing, even inside a shared transaction.
    assert await file_store.get("m1") is None
    assert {k for k in await file_store.get_many(["ok", "m3", "m4"])} == {"ok", "m3", "m4"}


async def test_batch_whose_transaction_cannot_start_fails_whole_and_retriably(
        tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path, busy_timeout=0.05)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        async with Paused(store):
            holder.execute("BEGIN IMMEDIATE")
            futures = await _queued(*(store.put(f"k{i}", {"i": i}) for i in range(5)))
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(r, RetriableError) and r.reason == "state_busy" for r in results)
        holder.execute("ROLLBACK")
        assert _rows(path) == 0
    finally:
        holder.close()
        await store.aclose()


async def test_closed_store_refuses_calls() -> None:
    store = await SqliteStore.open(":memory:")
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(RuntimeError):
        await store.get("k")


_WORKER = """
import asyncio, os, sys, time
from pipeline.state.sqlite import SqliteStore

async def main(path, go, times):
    store = await SqliteStore.open(path, busy_timeout=10)
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    conflicts = 0
    for _ in range(times):
        while True:
            cur = await store.get("counter")
            n = 0 if cur is None else cur.value["n"]
            done = await store.compare_and_set(
                "counter", 0 if cur is None else cur.version, {"n": n + 1})
            if done is not None:
                break
            conflicts += 1
    await store.aclose()
    print("conflicts", conflicts, flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_two_processes_cas_on_one_file_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    go = tmp_path / "go"
    times = 300
    # Create the file (and WAL mode) first so both workers open an existing database.
    store = await SqliteStore.open(path)
    await store.aclose()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WORKER, str(path), str(go), str(times),
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"ready"
    go.touch()
    outputs = [await asyncio.wait_for(p.communicate(), 60) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        assert out.startswith(b"conflicts")
    store = await SqliteStore.open(path)
    try:
        got = await store.get("counter")
    finally:
        await store.aclose()
    assert got is not None
    assert got.value["n"] == 2 * times
    assert got.version == 2 * times


async def test_open_store_factory_opens_the_configured_sqlite_file(tmp_path: Path) -> None:
    from pipeline.aws import AwsClients
    from pipeline.config import SqliteStateConfig
    from pipeline.state.factory import open_store

    aws = AwsClients("us-east-1")
    try:
        store = await open_store(SqliteStateConfig(path=str(tmp_path / "f.db")), aws,
                                 FakeClock())
        try:
            assert isinstance(store, SqliteStore)
            stored = await store.put("k", {"a": 1}, ttl=10)
            assert stored.expires_at == FakeClock().now() + 10  # the given clock is used
        finally:
            await store.aclose()
    finally:
        await aws.aclose()
    assert (tmp_path / "f.db").exists()
