"""Kinesis checkpoints in the state store, and the contiguous-prefix tracker that feeds them.

A checkpoint is the sequence number of the last record of a shard that is *fully*
handled, together with every record before it. Records finish out of order (the
chain runs lanes concurrently, retries come back later), so a shard's checkpoint
may only pass the contiguous prefix of finished records: ``ShardTracker`` keeps
the records handed out in shard order and reports how far that prefix reaches.

``CheckpointStore`` writes checkpoints with ``compare_and_set`` and never moves
one backwards: when two workers overlap during a lease handover, or a slow write
lands after a newer one, the larger position wins. ``SHARD_END`` is larger than
every sequence number; it says the shard was read to its end and everything in it
is handled, so its children may start and a restart does not read it again.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pipeline.clock import WALL_CLOCK, Clock
from pipeline.state.base import StateStore, Stored

log = logging.getLogger(__name__)

SHARD_END = "SHARD_END"
_CAS_ATTEMPTS = 16


def checkpoint_prefix(stream: str) -> str:
    return f"kinesis:ckpt:{stream}:"


def checkpoint_key(stream: str, shard_id: str) -> str:
    return f"{checkpoint_prefix(stream)}{shard_id}"


def position_rank(position: str) -> tuple[int, int]:
    """Order positions: sequence numbers numerically (they are up to 128 digits), end last."""
    if position == SHARD_END:
        return (1, 0)
    return (0, int(position))


def is_ahead(candidate: str, current: str | None) -> bool:
    """True when ``candidate`` is strictly further along the shard than ``current``."""
    return current is None or position_rank(candidate) > position_rank(current)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    shard_id: str
    position: str  # a sequence number or SHARD_END
    # True when the shard was closed and never read because the stream started at LATEST:
    # its children then start at the configured position rather than at TRIM_HORIZON.
    skipped: bool = False
    version: int = 0

    @property
    def finished(self) -> bool:
        return self.position == SHARD_END


def _from_stored(shard_id: str, stored: Stored) -> Checkpoint | None:
    position = stored.value.get("position")
    if not isinstance(position, str) or not (position == SHARD_END or position.isdigit()):
        log.warning("ignoring a malformed kinesis checkpoint",
                    extra={"key": stored.key, "value": stored.value})
        return None
    return Checkpoint(shard_id, position, bool(stored.value.get("skipped", False)),
                      stored.version)


class CheckpointStore:
    """Per-shard checkpoints of one stream under ``kinesis:ckpt:<stream>:<shard>``."""

    def __init__(self, store: StateStore, stream: str, *, clock: Clock = WALL_CLOCK,
                 owner: str = "") -> None:
        self.store = store
        self.stream = stream
        self.clock = clock
        self.owner = owner

    async def get(self, shard_id: str) -> Checkpoint | None:
        stored = await self.store.get(checkpoint_key(self.stream, shard_id), consistent=True)
        return None if stored is None else _from_stored(shard_id, stored)

    async def all(self) -> dict[str, Checkpoint]:
        """Every shard's checkpoint for this stream (one scan, used by shard discovery)."""
        prefix = checkpoint_prefix(self.stream)
        out: dict[str, Checkpoint] = {}
        for stored in await self.store.scan(prefix):
            shard_id = stored.key[len(prefix):]
            checkpoint = _from_stored(shard_id, stored)
            if checkpoint is not None:
                out[shard_id] = checkpoint
        return out

    async def advance(self, shard_id: str, position: str, *, skipped: bool = False
                      ) -> Checkpoint:
        """Move the checkpoint forward to ``position``; a position behind it is a no-op.

        Returns the checkpoint as stored afterwards, which is further along than
        ``position`` when another writer got there first.
        """
        key = checkpoint_key(self.stream, shard_id)
        value: dict[str, Any] = {"position": position, "updated_at": self.clock.now(),
                                 "owner": self.owner}
        if skipped:
            value["skipped"] = True
        for _ in range(_CAS_ATTEMPTS):
            stored = await self.store.get(key, consistent=True)
            current = None if stored is None else _from_stored(shard_id, stored)
            if current is not None and not is_ahead(position, current.position):
                return current
            written = await self.store.compare_and_set(
                key, 0 if stored is None else stored.version, value)
            if written is not None:
                return Checkpoint(shard_id, position, skipped, written.version)
        raise RuntimeError(f"checkpoint for {shard_id} kept changing under us; giving up")

    async def finish(self, shard_id: str, *, skipped: bool = False) -> Checkpoint:
        return await self.advance(shard_id, SHARD_END, skipped=skipped)


@dataclass(slots=True)
class _Entry:
    sequence: str
    done: bool = False


@dataclass(slots=True)
class ShardTracker:
    """Records of one shard handed out in order, and how far the finished prefix reaches.

    ``committed`` is the last sequence number known to be written to the store;
    ``ready`` the last one of the contiguous finished prefix (what the next write
    should store). ``last_handed`` is where reading resumes when an iterator has to
    be fetched again, so records already handed out are not handed out twice.
    """

    shard_id: str
    committed: str | None = None
    ready: str | None = None
    last_handed: str | None = None
    reached_end: bool = False
    _order: deque[_Entry] = field(default_factory=deque)
    _open: dict[str, _Entry] = field(default_factory=dict)

    def handed_out(self, sequence: str) -> bool:
        """Record a record handed out; False if it is already in flight (not handed again)."""
        if sequence in self._open:
            return False
        entry = _Entry(sequence)
        self._order.append(entry)
        self._open[sequence] = entry
        self.last_handed = sequence
        return True

    def is_open(self, sequence: str) -> bool:
        return sequence in self._open

    def finish(self, sequence: str) -> bool:
        """Mark a record finished; True if this moved the ready position forward."""
        entry = self._open.pop(sequence, None)
        if entry is None:
            return False
        entry.done = True
        moved = False
        while self._order and self._order[0].done:
            self.ready = self._order.popleft().sequence
            moved = True
        return moved

    @property
    def pending(self) -> int:
        return len(self._open)

    @property
    def drained(self) -> bool:
        """Every record handed out is finished."""
        return not self._order

    @property
    def dirty(self) -> bool:
        return self.ready is not None and is_ahead(self.ready, self.committed)

    def resume_after(self, checkpoint: str | None) -> str | None:
        """The sequence to read after: the further of the checkpoint and what was handed out."""
        best = checkpoint if checkpoint != SHARD_END else None
        for candidate in (self.last_handed, self.committed):
            if candidate is not None and is_ahead(candidate, best):
                best = candidate
        return best
