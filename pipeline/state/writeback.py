"""A write-back layer over a state store that one process owns alone (`riposte replay`).

Replay runs one event at a time against a state store nobody else uses (a fresh
SQLite file by default). Sending every baseline, correlation or token-bucket
operation to SQLite costs a thread round trip per call, several times the cost of
the detection itself. This layer answers from a bounded in-process map instead:

* reads are served from the map; a key not in it is read from the backing store
  once, unless the backing store cannot hold it (it held no live entry when the
  layer was opened and the key was never flushed: a Bloom filter of flushed keys
  says so, with rare false positives that only cost a read);
* conditional writes (``put_if_absent``, ``compare_and_set``, ``delete`` at a
  version) are decided against the map, which is exact because no one else
  writes;
* changed entries stay in the map until they are evicted (least recently used
  first, once the map is full: memory stays bounded however long the archive is)
  or the store is closed; they are then written in one batch (``put_rows``, one
  expiry per row, where the backing store offers it, else ``put_many``). Writing
  late is what saves the work: most keys of a replay are written once and never
  read back from disk, and a throw-away store (``keep=False``) skips the final
  write altogether;
* a ``scan`` merges the map's entries under its prefix (kept sorted for each
  namespace, the key's first ``:``-separated segment, once it has been scanned)
  with the backing store's rows for keys the map no longer holds, and asks the
  backing store only if something of that namespace was ever written back. (A
  scan with a ``limit``, or of a prefix without a colon, writes back what it can
  match and lets the backing store answer.)

Versions follow the contract: every write bumps the entry's version and versions
keep counting over an expired entry. A write-back carries how many writes an
entry absorbed, so the backing store's version ends where the map's is. (An
entry that was evicted, then expired in the backing store and is created again
restarts from the backing store's count, which is never lower: a version handed
out before is never handed out again for a different value.)

It is NOT safe when other processes or workers share the backing store (`riposte
run`): decisions made from the map would ignore their writes.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import orjson

from pipeline.clock import Clock
from pipeline.state.base import StateStore, Stored

# One written-back entry: key, JSON value as bytes, absolute expiry (None = never), and
# how many writes it stands for (its version grows by that much).
Row = tuple[str, bytes, float | None, int]


def _namespace(key: str) -> str:
    """A key's first ``:``-separated segment (``corr``, ``baseline``...)."""
    return key.partition(":")[0]


def _blob(value: dict[str, Any]) -> bytes:
    """A value's JSON, copied to its exact size: orjson's own result keeps a few KB of
    buffer behind it, which a map of thousands of entries would hold on to."""
    return bytes(memoryview(orjson.dumps(value)))


@runtime_checkable
class RowWriter(Protocol):
    """A store that writes rows with their own expiry and version step, in one round trip."""

    async def put_rows(self, rows: Sequence[Row]) -> None: ...


class _Entry:
    """What the map knows of one key. ``blob`` None: absent (never written or deleted)."""

    __slots__ = ("base", "blob", "dirty", "expires_at", "reset", "version")

    def __init__(self, blob: bytes | None, version: int, expires_at: float | None,
                 base: int) -> None:
        self.blob = blob
        self.version = version  # kept over expiry: the next write continues from it
        self.expires_at = expires_at
        self.base = base  # the backing store's version of this key (0: no row known)
        self.dirty = False
        self.reset = False  # deleted here: delete the backing row before writing it again

    def size(self) -> int:
        """Bytes of its value (0 when absent): what the map's byte budget counts."""
        return 0 if self.blob is None else len(self.blob)


class _Bloom:
    """Keys that may be in the backing store: fixed size, no false negatives."""

    def __init__(self, bits: int = 1 << 23) -> None:
        self._mask = bits - 1
        self._bits = bytearray(bits >> 3)
        self.added = 0

    def _positions(self, key: str) -> tuple[int, int, int]:
        h = hash(key) & 0xFFFFFFFFFFFFFFFF  # str hashes are cached on the string
        m = self._mask
        return h & m, (h >> 21) & m, (h >> 42 | h << 22) & m

    def add(self, key: str) -> None:
        bits = self._bits
        for pos in self._positions(key):
            bits[pos >> 3] |= 1 << (pos & 7)
        self.added += 1

    def __contains__(self, key: str) -> bool:
        if not self.added:
            return False
        bits = self._bits
        a, b, c = self._positions(key)
        return bool(bits[a >> 3] & (1 << (a & 7)) and bits[b >> 3] & (1 << (b & 7))
                    and bits[c >> 3] & (1 << (c & 7)))


# What the map holds at most: entries (a baseline entry is ~260 bytes with its key and
# bookkeeping: 60,000 are the baselines of a thousand principals calling a few dozen APIs
# from a few networks) and bytes of values (an incident of a hundred findings is ~100 KB,
# a correlation index entry ~1 KB: the byte budget is what bounds memory when those
# dominate). Past either, entries are written to the backing store, and using one again
# costs a read back; with 20,000 entries that made replaying 200,000 records about a
# tenth slower while their baselines were still being learnt (docs/performance.md).
MAX_ENTRIES = 60_000
MAX_BYTES = 24 << 20


class WriteBackStore:
    """A :class:`StateStore` for a single owner: the map decides, the backing store keeps.

    ``max_entries`` and ``max_bytes`` (of values) bound the map; past either, the least
    recently used entries are written back (if changed) and dropped until both are
    under three quarters of their bound. ``keep=False`` means the backing store is thrown
    away after ``aclose`` (replay's temporary file), so changes not yet written are
    not written then.
    """

    def __init__(self, backing: StateStore, clock: Clock, *, fresh: bool,
                 max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 keep: bool = True) -> None:
        """Use :meth:`wrap`, which finds out whether ``backing`` is ``fresh`` (empty)."""
        self.backing = backing
        self.clock = clock
        self.max_entries = max(1, max_entries)
        self.max_bytes = max(1, max_bytes)
        self._bytes = 0  # of the values the map holds
        self.keep = keep
        self._fresh = fresh
        self._map: OrderedDict[str, _Entry] = OrderedDict()
        # Changed entries not yet written, by the key's first ``:``-separated segment, so
        # that a scan writes only what its prefix can match.
        self._dirty: dict[str, dict[str, _Entry]] = {}
        self._flushed = _Bloom()
        # For each namespace (a key's first ``:``-separated segment) that has been scanned:
        # its keys in the map, sorted, so a scan reads a range instead of the whole map.
        self._index: dict[str, list[str]] = {}
        # Namespaces with entries written back: only scans of those need the backing store.
        self._written: set[str] = set()
        self.backing_reads = 0
        self.rows_written = 0

    @classmethod
    async def wrap(cls, backing: StateStore, clock: Clock, *, max_entries: int = MAX_ENTRIES,
                   max_bytes: int = MAX_BYTES, keep: bool = True) -> WriteBackStore:
        fresh = not await backing.scan("", limit=1)
        return cls(backing, clock, fresh=fresh, max_entries=max_entries, max_bytes=max_bytes,
                   keep=keep)

    # --- the map ------------------------------------------------------------------------
    def _known(self, key: str) -> _Entry | None:
        """The map's entry for ``key`` without awaiting anything, or None when only the
        backing store can say (see :meth:`_load`). Callers try this first: nearly every
        key of a replay is answered here, and a coroutine per call is measurable."""
        entry = self._map.get(key)
        if entry is not None:
            self._map.move_to_end(key)
            return entry
        if self._fresh and key not in self._flushed:
            return self._add(key, _Entry(None, 0, None, 0))
        return None

    async def _load(self, key: str) -> _Entry:
        """``key``'s entry, read from the backing store (after :meth:`_known` said None)."""
        self.backing_reads += 1
        stored = await self.backing.get(key)
        if stored is None:
            # Absent, or expired there (whose version the contract does not show).
            entry = _Entry(None, 0, None, 0)
        else:
            entry = _Entry(_blob(stored.value), stored.version, stored.expires_at,
                           stored.version)
        # The read let other tasks run: one of them may have loaded the key meanwhile.
        known = self._map.get(key)
        if known is not None:
            return known
        return self._add(key, entry)

    def _add(self, key: str, entry: _Entry) -> _Entry:
        self._map[key] = entry
        self._bytes += entry.size()
        if self._index:
            keys = self._index.get(_namespace(key))
            if keys is not None:
                bisect.insort(keys, key)
        return entry

    def _live(self, entry: _Entry) -> bool:
        return entry.blob is not None and (entry.expires_at is None
                                           or entry.expires_at > self.clock.now())

    def _mark(self, key: str, entry: _Entry) -> None:
        if not entry.dirty:
            entry.dirty = True
            self._dirty.setdefault(_namespace(key), {})[key] = entry

    def _write(self, key: str, entry: _Entry, value: dict[str, Any],
               ttl: float | None) -> Stored:
        blob = _blob(value)
        self._bytes += len(blob) - entry.size()
        entry.blob = blob
        entry.version += 1
        entry.expires_at = None if ttl is None else self.clock.now() + ttl
        self._mark(key, entry)
        return Stored(key, value, entry.version, entry.expires_at)  # as written: see StateStore

    def _stored(self, key: str, entry: _Entry) -> Stored:
        assert entry.blob is not None
        return Stored(key, orjson.loads(entry.blob), entry.version, entry.expires_at)

    def _full(self) -> bool:
        return len(self._map) > self.max_entries or self._bytes > self.max_bytes

    # --- StateStore ---------------------------------------------------------------------
    async def get(self, key: str, *, consistent: bool = True) -> Stored | None:
        entry = self._known(key) or await self._load(key)
        if self._full():
            await self._evict()
        if not self._live(entry):
            return None
        return self._stored(key, entry)

    async def put(self, key: str, value: dict[str, Any], *, ttl: float | None = None) -> Stored:
        stored = self._write(key, self._known(key) or await self._load(key), value, ttl)
        if self._full():
            await self._evict()
        return stored

    async def put_if_absent(self, key: str, value: dict[str, Any], *,
                            ttl: float | None = None) -> Stored | None:
        entry = self._known(key) or await self._load(key)
        if self._live(entry):
            return None
        stored = self._write(key, entry, value, ttl)
        if self._full():
            await self._evict()
        return stored

    async def compare_and_set(self, key: str, expected_version: int, value: dict[str, Any], *,
                              ttl: float | None = None) -> Stored | None:
        entry = self._known(key) or await self._load(key)
        if (entry.version if self._live(entry) else 0) != expected_version:
            return None
        stored = self._write(key, entry, value, ttl)
        if self._full():
            await self._evict()
        return stored

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        entry = self._known(key) or await self._load(key)
        if not self._live(entry) or (expected_version is not None
                                     and entry.version != expected_version):
            return False
        self._bytes -= entry.size()
        entry.blob = None
        entry.version = 0  # as after a delete anywhere: the next write is version 1
        entry.expires_at = None
        entry.reset = entry.base > 0  # the backing store holds a row to delete
        self._mark(key, entry)
        if self._full():
            await self._evict()
        return True

    async def scan(self, prefix: str, *, limit: int | None = None) -> list[Stored]:
        if limit is not None and limit <= 0:
            return []
        head, colon, _ = prefix.partition(":")
        if limit is None and colon:
            return await self._merged_scan(prefix, head)
        return await self._flushed_scan(prefix, limit)

    async def _merged_scan(self, prefix: str, namespace: str) -> list[Stored]:
        """The map's live entries under ``prefix``, plus the backing store's for keys the
        map no longer holds (written back when they left it), without writing anything."""
        found: dict[str, Stored] = {}
        if not self._fresh or namespace in self._written:
            for row in await self.backing.scan(prefix):
                if row.key not in self._map:
                    found[row.key] = row
        keys = self._index.get(namespace)
        if keys is None:
            keys = self._index[namespace] = sorted(
                k for k in self._map if _namespace(k) == namespace)
        for i in range(bisect.bisect_left(keys, prefix), len(keys)):
            key = keys[i]
            if not key.startswith(prefix):
                break
            entry = self._map[key]
            if self._live(entry):
                found[key] = self._stored(key, entry)
        return [found[k] for k in sorted(found)]

    async def _flushed_scan(self, prefix: str, limit: int | None) -> list[Stored]:
        """Write back what the prefix can match, then let the backing store scan."""
        # Keys starting with the prefix share its first segment (or, for a prefix without
        # a colon, have a first segment starting with it).
        head, colon, _ = prefix.partition(":")
        groups = [head] if colon else [ns for ns in self._dirty if ns.startswith(prefix)]
        pending: dict[str, _Entry] = {}
        for ns in groups:
            dirty = self._dirty.get(ns)
            if not dirty:
                continue
            taken = {k: e for k, e in dirty.items() if k.startswith(prefix)}
            for key in taken:
                del dirty[key]
            pending.update(taken)
        await self._write_back(pending)
        out: list[Stored] = []
        for found in await self.backing.scan(prefix, limit=limit):
            entry = self._map.get(found.key)
            if entry is None:
                out.append(found)
            elif self._live(entry):  # the map has the same entry, and the exact version
                out.append(self._stored(found.key, entry))
        return out

    async def get_many(self, keys: Sequence[str]) -> dict[str, Stored]:
        found: dict[str, Stored] = {}
        for key in keys:
            stored = await self.get(key)
            if stored is not None:
                found[key] = stored
        return found

    async def put_many(self, entries: Sequence[tuple[str, dict[str, Any]]], *,
                       ttl: float | None = None) -> None:
        for key, value in entries:
            self._write(key, self._known(key) or await self._load(key), value, ttl)
        if self._full():
            await self._evict()

    async def flush(self) -> None:
        """Write every changed entry to the backing store."""
        pending: dict[str, _Entry] = {}
        for dirty in self._dirty.values():
            pending.update(dirty)
        self._dirty = {}
        await self._write_back(pending)

    async def _evict(self) -> None:
        """Drop the least recently used entries, writing back what changed, until the map
        is under three quarters of both its bounds."""
        entries, size = len(self._map), self._bytes
        keep_entries = self.max_entries - self.max_entries // 4
        keep_bytes = self.max_bytes - self.max_bytes // 4
        victims: list[tuple[str, _Entry]] = []
        for key, entry in self._map.items():
            if entries <= keep_entries and size <= keep_bytes:
                break
            victims.append((key, entry))
            entries -= 1
            size -= entry.size()
        pending: dict[str, _Entry] = {}
        for key, entry in victims:
            if entry.dirty:
                self._dirty[_namespace(key)].pop(key, None)
                pending[key] = entry
        await self._write_back(pending)
        for key, entry in victims:
            # Unless another task wrote it again while the batch was being written.
            if not entry.dirty and self._map.get(key) is entry:
                del self._map[key]
                self._bytes -= entry.size()
                keys = self._index.get(_namespace(key)) if self._index else None
                if keys is not None:
                    i = bisect.bisect_left(keys, key)
                    if i < len(keys) and keys[i] == key:
                        del keys[i]

    async def _write_back(self, pending: dict[str, _Entry]) -> None:
        """Write ``pending`` (already taken out of ``_dirty``) to the backing store."""
        rows: list[Row] = []
        for key, entry in pending.items():
            if entry.reset:
                await self.backing.delete(key)
                entry.base = 0
                entry.reset = False
            entry.dirty = False
            if entry.blob is not None:
                # Every absorbed write counts, so the backing version ends where ours is.
                rows.append((key, entry.blob, entry.expires_at,
                             max(1, entry.version - entry.base)))
                entry.base = entry.version
            self._flushed.add(key)
            self._written.add(_namespace(key))
        if not rows:
            return
        self.rows_written += len(rows)
        if isinstance(self.backing, RowWriter):
            await self.backing.put_rows(rows)
            return
        # Any other store: one put_many per expiry (its TTL is relative to the store's
        # clock), an entry repeated once per write (each bumps the version by one).
        groups: dict[float | None, list[tuple[str, dict[str, Any]]]] = {}
        for key, blob, expires, writes in rows:
            groups.setdefault(expires, []).extend([(key, orjson.loads(blob))] * writes)
        for expires, entries in groups.items():
            ttl = None if expires is None else expires - self.clock.now()
            await self.backing.put_many(entries, ttl=ttl)

    async def aclose(self) -> None:
        try:
            if self.keep:
                await self.flush()
        finally:
            await self.backing.aclose()
