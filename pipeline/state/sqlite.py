"""The embedded state store: one SQLite file, safe for several tasks and processes.

Why SQLite: one process (or a few on one host) needs durable correlation state,
ledgers and checkpoints without running a database. Why it is safe to share:

* every conditional write is ONE SQL statement (``INSERT ... ON CONFLICT ... WHERE``,
  ``UPDATE ... WHERE version = ?``), so the check and the write are atomic inside
  SQLite's own write lock, across connections and processes alike;
* WAL mode lets readers run beside the single writer, and ``busy_timeout`` makes a
  writer wait for the lock instead of failing at once; a lock still held after the
  timeout becomes a ``RetriableError`` (the message is redelivered, not lost).

All SQLite calls run on ONE dedicated worker thread that owns the connection, so
the event loop never blocks on disk and the connection is never shared between
threads. The thread answers queued calls in batches (one event-loop wake-up per
batch), which keeps the cost of crossing threads low under concurrency.

Group commit: when a batch holds several writes, the thread runs it as ONE
``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction instead of one commit per write
(a commit is most of a small write's cost: WAL frame, locks, index pages). Each
statement is still atomic on its own, and no caller hears about its write before
the COMMIT that makes it durable; if that COMMIT fails, every call of the batch
gets the error, as if none of them had run. Transactions are capped at
``_MAX_GROUP`` calls so another process sharing the file never waits long.

Expiry follows :mod:`pipeline.state.memory`: an expired row is invisible to every
read at once and deleted later by :meth:`SqliteStore.purge_expired` (called
periodically when ``purge_interval`` is given).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from pipeline.clock import WALL_CLOCK, Clock
from pipeline.errors import RetriableError
from pipeline.state.base import Stored

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv ("
    " key TEXT PRIMARY KEY NOT NULL,"
    " value BLOB NOT NULL,"
    " version INTEGER NOT NULL,"
    " expires_at REAL"
    ")",  # a rowid table: values of a few KB stay in-page (WITHOUT ROWID would overflow them)
    "CREATE INDEX IF NOT EXISTS kv_expires_at ON kv(expires_at) WHERE expires_at IS NOT NULL",
)

# A row is live when it has no expiry or its expiry is in the future (same as
# MemoryStore). Statements are plain literals: only values are ever bound.
_SQL_GET = (
    "SELECT value, version, expires_at FROM kv "
    "WHERE key = :key AND (expires_at IS NULL OR expires_at > :now)"
)
_SQL_PUT = (
    "INSERT INTO kv (key, value, version, expires_at) VALUES (:key, :value, 1, :exp) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, version = kv.version + 1, "
    "expires_at = excluded.expires_at RETURNING version"
)
# Keys per IN (...) lookup: well under SQLite's limit on bound parameters.
_MANY_CHUNK = 500
# Absent, or present but expired: the conflict branch only fires for an expired row.
_SQL_PUT_IF_ABSENT = (
    "INSERT INTO kv (key, value, version, expires_at) VALUES (:key, :value, 1, :exp) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, version = kv.version + 1, "
    "expires_at = excluded.expires_at "
    "WHERE kv.expires_at IS NOT NULL AND kv.expires_at <= :now RETURNING version"
)
_SQL_CAS = (
    "UPDATE kv SET value = :value, version = version + 1, expires_at = :exp "
    "WHERE key = :key AND version = :expected "
    "AND (expires_at IS NULL OR expires_at > :now) RETURNING version"
)
_SQL_DELETE = (
    "DELETE FROM kv WHERE key = :key AND (expires_at IS NULL OR expires_at > :now)"
)
_SQL_DELETE_AT = (
    "DELETE FROM kv WHERE key = :key AND version = :expected "
    "AND (expires_at IS NULL OR expires_at > :now)"
)
_SQL_SCAN = (
    "SELECT key, value, version, expires_at FROM kv WHERE key >= :lo AND key < :hi "
    "AND (expires_at IS NULL OR expires_at > :now) ORDER BY key LIMIT :limit"
)
_SQL_SCAN_OPEN = (
    "SELECT key, value, version, expires_at FROM kv WHERE key >= :lo "
    "AND (expires_at IS NULL OR expires_at > :now) ORDER BY key LIMIT :limit"
)
_SQL_PURGE = "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= :now"
# Rows written together (put_many, and a single owner's write-back in
# pipeline/state/writeback.py): each row has its own expiry, and its version grows by
# the number of writes it stands for (1 for put_many).
# Bound by position to a write-back row as it comes: (key, value, expires_at, version step).
_SQL_PUT_ROW = (
    "INSERT INTO kv (key, value, version, expires_at) VALUES (?1, ?2, ?4, ?3) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, version = kv.version + ?4, "
    "expires_at = excluded.expires_at"
)


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``.

    SQLite compares TEXT bytewise (UTF-8), which orders like Python's code-point
    order, so ``key >= prefix AND key < upper`` is a primary-key range scan.
    None means "no upper bound" (empty prefix, or only U+10FFFF characters).
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last == 0x10FFFF:
            continue
        nxt = last + 1
        if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be stored as UTF-8
            nxt = 0xE000
        return "".join(chars) + chr(nxt)
    return None


class _Kind(enum.Enum):
    READ = "read"
    WRITE = "write"
    # Runs outside any transaction and alone (connect, close: PRAGMAs cannot be in one).
    ALONE = "alone"
    # A write that must run inside an explicit transaction even when it is alone.
    ATOMIC = "atomic"


_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...],
             _Kind]
_Result = tuple["asyncio.Future[Any]", Any, BaseException | None]
# Calls per group-commit transaction at most.
_MAX_GROUP = 256


class _Transactions(Protocol):
    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def active(self) -> bool: ...


def _deliver(results: list[_Result]) -> None:
    for future, value, error in results:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


def _all_failed(jobs: list[_Job], exc: BaseException
                ) -> list[tuple[asyncio.AbstractEventLoop, _Result]]:
    """Every call of a group answered with ``exc`` (its transaction did not happen)."""
    return [(job[0], (job[1], None, exc)) for job in jobs]


class _Worker:
    """The one thread that owns the connection.

    It drains every queued call before waking the event loop once with all their
    results, so under concurrency the cost of crossing threads (a futex wake and a
    self-pipe write) is paid per batch, not per call; the writes of a batch share
    one commit (see the module docstring).
    """

    def __init__(self, txn: _Transactions) -> None:
        self._txn = txn
        self.transactions = 0  # group-commit transactions committed (tests, diagnostics)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="riposte-sqlite", daemon=True)
        self._thread.start()

    def submit(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any],
               fn: Callable[..., Any], args: tuple[Any, ...], kind: _Kind) -> None:
        self._queue.put((loop, future, fn, args, kind))

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            jobs = [self._queue.get()]
            while True:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in jobs
            results: list[tuple[asyncio.AbstractEventLoop, _Result]] = []
            group: list[_Job] = []
            for job in jobs:
                if job is None:
                    continue
                if job[4] is _Kind.ALONE or len(group) >= _MAX_GROUP:
                    results += self._run_group(group)
                    group = []
                if job[4] is _Kind.ALONE:
                    results += self._run_group([job])
                else:
                    group.append(job)
            results += self._run_group(group)
            by_loop: dict[asyncio.AbstractEventLoop, list[_Result]] = {}
            for loop, result in results:
                by_loop.setdefault(loop, []).append(result)
            for loop, answers in by_loop.items():
                with contextlib.suppress(RuntimeError):  # loop already closed
                    loop.call_soon_threadsafe(_deliver, answers)
            if stop:
                return

    def _run_group(self, jobs: list[_Job]) -> list[tuple[asyncio.AbstractEventLoop, _Result]]:
        if not jobs:
            return []
        writes = sum(1 for job in jobs if job[4] in (_Kind.WRITE, _Kind.ATOMIC))
        in_txn = writes >= 2 or any(job[4] is _Kind.ATOMIC for job in jobs)
        if in_txn:
            try:
                self._txn.begin()
            except BaseException as exc:  # the write lock was not granted: nothing ran
                return _all_failed(jobs, exc)
        out: list[tuple[asyncio.AbstractEventLoop, _Result]] = []
        for loop, future, fn, args, _ in jobs:
            try:
                out.append((loop, (future, fn(*args), None)))
            except BaseException as exc:  # handed to its caller; its neighbours go on
                if in_txn and not self._txn.active():
                    # Some errors (disk full, I/O) make SQLite roll the whole transaction
                    # back: what ran before is gone, so the whole batch failed.
                    return _all_failed(jobs, exc)
                out.append((loop, (future, None, exc)))
        if in_txn:
            try:
                self._txn.commit()
            except BaseException as exc:  # nothing of the batch is durable: all of it failed
                with contextlib.suppress(Exception):
                    self._txn.rollback()
                return _all_failed(jobs, exc)
            self.transactions += 1
        return out


class SqliteStore:
    """A :class:`pipeline.state.base.StateStore` over one SQLite file (or ``:memory:``)."""

    def __init__(self, path: str, *, clock: Clock = WALL_CLOCK,
                 busy_timeout: float = 5.0, scratch: bool = False) -> None:
        """Use :meth:`open`; the constructor only starts the worker thread."""
        self.path = path
        self.clock = clock
        self.busy_timeout = busy_timeout
        self.scratch = scratch
        self._worker = _Worker(self)
        self._conn: sqlite3.Connection | None = None
        self._purge_task: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path, *, clock: Clock = WALL_CLOCK,
                   busy_timeout: float = 5.0, purge_interval: float | None = None,
                   scratch: bool = False) -> SqliteStore:
        """Open (creating if needed) the store at ``path``; ``":memory:"`` for tests.

        With ``purge_interval`` a background task deletes expired rows that often.
        ``scratch`` is for a file one process uses alone and deletes when done (replay's
        temporary state): it keeps its rollback journal in memory and never syncs, which
        makes a write about a third cheaper and leaves nothing usable after a crash.
        """
        store = cls(str(path), clock=clock, busy_timeout=busy_timeout, scratch=scratch)
        try:
            await store._call(store._connect, kind=_Kind.ALONE)
        except BaseException:
            store._closed = True
            store._worker.stop()
            raise
        if purge_interval is not None:
            store._purge_task = asyncio.create_task(store._purge_loop(purge_interval),
                                                    name="riposte-sqlite-purge")
        return store

    # --- worker thread ----------------------------------------------------------------------
    def _connect(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            self._set_up(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _set_up(self, conn: sqlite3.Connection) -> None:
        """WAL, sync level and schema, retried while another process holds the file.

        Processes that open a new file at the same moment (workers of one host starting
        together) race to switch it to WAL and create the table; SQLite answers the
        loser "database is locked" at once, without waiting the busy timeout, when
        waiting could deadlock. Each step is idempotent, so it is tried again until
        the busy timeout has passed.
        """
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.01
        while True:
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
                if self.scratch:
                    conn.execute("PRAGMA journal_mode = MEMORY")  # rollback still works
                    conn.execute("PRAGMA synchronous = OFF")
                else:
                    if self.path != ":memory:":
                        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                        if str(mode).lower() != "wal":
                            log.warning("sqlite WAL mode unavailable",
                                        extra={"path": self.path, "journal_mode": mode})
                    # WAL + NORMAL: a commit survives a process crash; only an OS crash
                    # may lose the last transactions, which redelivery of unacknowledged
                    # messages covers.
                    conn.execute("PRAGMA synchronous = NORMAL")
                for statement in _SCHEMA:
                    conn.execute(statement)
                return
            except sqlite3.OperationalError as exc:
                locked = "locked" in str(exc) or "busy" in str(exc)
                if not locked or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)  # the store's own thread, before anything else is queued
            delay = min(delay * 2, 0.2)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("SqliteStore is closed")
        return self._conn

    # Transactions of a group commit, run by the worker thread (see _Worker._run_group).
    def begin(self) -> None:
        self._db().execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._db().execute("COMMIT")

    def rollback(self) -> None:
        self._db().execute("ROLLBACK")

    def active(self) -> bool:
        return self._conn is not None and self._conn.in_transaction

    async def _call(self, fn: Callable[..., T], *args: Any, kind: _Kind = _Kind.READ) -> T:
        if self._closed:
            raise RuntimeError("SqliteStore is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._worker.submit(loop, future, fn, args, kind)
        try:
            return await future
        except sqlite3.OperationalError as exc:
            # "database is locked/busy" after busy_timeout: another writer held on too long.
            if "locked" in str(exc) or "busy" in str(exc):
                raise RetriableError(f"sqlite state store busy: {exc}",
                                     reason="state_busy", component="state") from exc
            raise

    def _row(self, key: str, value: bytes, version: int, expires: float | None) -> Stored:
        return Stored(key, orjson.loads(value), version, expires)

    def _get(self, key: str, now: float) -> Stored | None:
        row = self._db().execute(_SQL_GET, {"key": key, "now": now}).fetchone()
        return None if row is None else self._row(key, row[0], row[1], row[2])

    def _write(self, sql: str, value: dict[str, Any], params: dict[str, Any]
               ) -> Stored | None:
        """One single-row write (``params`` from :meth:`_params`): the entry as written, or
        None when the statement's condition kept it from writing."""
        row = self._db().execute(sql, params).fetchone()
        if row is None:
            return None
        # The entry as written, with the caller's own value (see StateStore): parsing
        # back the JSON just made was a tenth of the chain's state-store CPU.
        return Stored(params["key"], value, int(row[0]), params["exp"])

    def _delete(self, key: str, expected: int | None, now: float) -> bool:
        if expected is None:
            cur = self._db().execute(_SQL_DELETE, {"key": key, "now": now})
        else:
            cur = self._db().execute(_SQL_DELETE_AT, {"key": key, "expected": expected,
                                                      "now": now})
        return cur.rowcount > 0

    def _scan(self, prefix: str, limit: int | None, now: float) -> list[Stored]:
        hi = prefix_upper_bound(prefix)
        params: dict[str, Any] = {"lo": prefix, "now": now, "limit": -1 if limit is None else limit}
        if hi is None:
            rows = self._db().execute(_SQL_SCAN_OPEN, params).fetchall()
        else:
            rows = self._db().execute(_SQL_SCAN, {**params, "hi": hi}).fetchall()
        return [self._row(k, v, ver, exp) for k, v, ver, exp in rows]

    def _get_many(self, keys: Sequence[str], now: float) -> dict[str, Stored]:
        found: dict[str, Stored] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _MANY_CHUNK):
            chunk = unique[start:start + _MANY_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db().execute(
                "SELECT key, value, version, expires_at FROM kv WHERE key IN "  # noqa: S608
                f"({marks}) AND (expires_at IS NULL OR expires_at > ?)", (*chunk, now))
            for k, v, ver, exp in rows:
                found[k] = self._row(k, v, ver, exp)
        return found

    def _put_rows(self, rows: Sequence[tuple[str, bytes, float | None, int]]) -> None:
        # Always inside a transaction (kind ATOMIC); the savepoint makes the rows all or
        # nothing even when other calls share that transaction.
        db = self._db()
        db.execute("SAVEPOINT put_rows")
        try:
            db.executemany(_SQL_PUT_ROW, rows)
        except BaseException:
            db.execute("ROLLBACK TO put_rows")
            db.execute("RELEASE put_rows")
            raise
        db.execute("RELEASE put_rows")

    def _purge(self, now: float) -> int:
        return self._db().execute(_SQL_PURGE, {"now": now}).rowcount

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- StateStore -------------------------------------------------------------------------
    def _expiry(self, ttl: float | None) -> float | None:
        return None if ttl is None else self.clock.now() + ttl

    def _params(self, key: str, value: dict[str, Any], ttl: float | None,
                **extra: Any) -> dict[str, Any]:
        """The bound parameters of a single-row write."""
        return {"key": key, "value": orjson.dumps(value), "exp": self._expiry(ttl), **extra}

    async def get(self, key: str, *, consistent: bool = True) -> Stored | None:
        return await self._call(self._get, key, self.clock.now())

    async def put(self, key: str, value: dict[str, Any], *, ttl: float | None = None) -> Stored:
        stored = await self._call(self._write, _SQL_PUT, value,
                                  self._params(key, value, ttl), kind=_Kind.WRITE)
        assert stored is not None  # an upsert always returns its row
        return stored

    async def put_if_absent(self, key: str, value: dict[str, Any], *,
                            ttl: float | None = None) -> Stored | None:
        return await self._call(self._write, _SQL_PUT_IF_ABSENT, value,
                                self._params(key, value, ttl, now=self.clock.now()),
                                kind=_Kind.WRITE)

    async def compare_and_set(self, key: str, expected_version: int, value: dict[str, Any], *,
                              ttl: float | None = None) -> Stored | None:
        if expected_version == 0:
            return await self.put_if_absent(key, value, ttl=ttl)
        return await self._call(self._write, _SQL_CAS, value,
                                self._params(key, value, ttl, now=self.clock.now(),
                                             expected=expected_version),
                                kind=_Kind.WRITE)

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        return await self._call(self._delete, key, expected_version, self.clock.now(),
                                kind=_Kind.WRITE)

    async def scan(self, prefix: str, *, limit: int | None = None) -> list[Stored]:
        if limit is not None and limit <= 0:
            return []
        return await self._call(self._scan, prefix, limit, self.clock.now())

    async def get_many(self, keys: Sequence[str]) -> dict[str, Stored]:
        if not keys:
            return {}
        return await self._call(self._get_many, list(keys), self.clock.now())

    async def put_many(self, entries: Sequence[tuple[str, dict[str, Any]]], *,
                       ttl: float | None = None) -> None:
        expires = self._expiry(ttl)
        await self.put_rows([(k, orjson.dumps(v), expires, 1) for k, v in entries])

    async def put_rows(self, rows: Sequence[tuple[str, bytes, float | None, int]]) -> None:
        """Write-back of a single owner, all or nothing: (key, JSON bytes, absolute expiry,
        version step) per row. Only :class:`pipeline.state.writeback.WriteBackStore` needs
        this; it is not part of the StateStore contract."""
        if rows:
            await self._call(self._put_rows, rows, kind=_Kind.ATOMIC)

    async def purge_expired(self) -> int:
        """Delete rows whose TTL has passed (reads already ignore them); returns how many."""
        return await self._call(self._purge, self.clock.now(), kind=_Kind.WRITE)

    async def _purge_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                purged = await self.purge_expired()
            except Exception:  # keep purging later; a failed purge loses nothing
                log.warning("sqlite purge failed", exc_info=True, extra={"path": self.path})
                continue
            if purged:
                log.debug("sqlite purged expired rows", extra={"rows": purged})

    async def aclose(self) -> None:
        if self._closed:
            return
        if self._purge_task is not None:
            self._purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge_task
        await self._call(self._close, kind=_Kind.ALONE)
        self._closed = True
        self._worker.stop()
