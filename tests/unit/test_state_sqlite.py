"""SqliteStore specifics: the file, WAL, purging, lock handling and several processes."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest

from pipeline.errors import RetriableError
from pipeline.state.sqlite import SqliteStore, prefix_upper_bound

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
