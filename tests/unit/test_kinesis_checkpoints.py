"""Kinesis checkpoints: the contiguous finished prefix, and a store that never goes back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.sources.checkpoints import (
    SHARD_END,
    CheckpointStore,
    ShardTracker,
    checkpoint_key,
    is_ahead,
    position_rank,
)
from pipeline.state.base import Stored
from pipeline.state.memory import MemoryStore

# Real Kinesis sequence numbers are 56-digit decimals; moto's are small integers.
SEQS = [str(49590338271490256608559692538361571095921575989136588898 + 7 * i) for i in range(12)]


# --- ordering ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("a", "b", "ahead"), [
    ("10", "9", True),  # numeric, not lexicographic
    ("9", "10", False),
    ("10", "10", False),
    (SHARD_END, SEQS[-1], True),
    (SEQS[-1], SHARD_END, False),
    ("1", None, True),
])
def test_positions_are_ordered_numerically_with_the_end_last(a: str, b: str | None,
                                                               ahead: bool) -> None:
    assert is_ahead(a, b) is ahead


def test_rank_of_a_long_sequence_number() -> None:
    assert position_rank(SEQS[1]) > position_rank(SEQS[0])


# --- the tracker ------------------------------------------------------------------------------
def test_out_of_order_finishes_do_not_pass_an_unfinished_record() -> None:
    tracker = ShardTracker("s0")
    for seq in SEQS[:4]:
        assert tracker.handed_out(seq)
    assert not tracker.finish(SEQS[1]) and tracker.ready is None
    assert not tracker.finish(SEQS[3]) and tracker.ready is None
    assert tracker.finish(SEQS[0]) and tracker.ready == SEQS[1]
    assert tracker.dirty and not tracker.drained
    assert tracker.finish(SEQS[2]) and tracker.ready == SEQS[3]
    assert tracker.drained and tracker.pending == 0
    tracker.committed = SEQS[3]
    assert not tracker.dirty


def test_a_record_is_not_tracked_twice_and_unknown_finishes_are_ignored() -> None:
    tracker = ShardTracker("s0")
    assert tracker.handed_out(SEQS[0])
    assert not tracker.handed_out(SEQS[0])
    assert not tracker.finish(SEQS[5])
    assert tracker.finish(SEQS[0])
    assert not tracker.finish(SEQS[0])  # a second settle does not count twice


@settings(deadline=None)
@given(st.permutations(range(len(SEQS))))
def test_ready_is_always_the_end_of_the_finished_prefix(order: list[int]) -> None:
    tracker = ShardTracker("s0")
    for seq in SEQS:
        tracker.handed_out(seq)
    finished: set[int] = set()
    for i in order:
        tracker.finish(SEQS[i])
        finished.add(i)
        prefix = 0
        while prefix in finished:
            prefix += 1
        assert tracker.ready == (SEQS[prefix - 1] if prefix else None)
    assert tracker.drained


@pytest.mark.parametrize(("checkpoint", "handed", "committed", "expected"), [
    (None, None, None, None),
    (SEQS[2], None, None, SEQS[2]),
    (SEQS[2], SEQS[5], None, SEQS[5]),  # records already handed out are not read twice
    (SEQS[6], SEQS[5], None, SEQS[6]),  # another worker got further
    (SHARD_END, None, SEQS[1], SEQS[1]),
])
def test_resume_after_takes_the_furthest_known_position(
        checkpoint: str | None, handed: str | None, committed: str | None,
        expected: str | None) -> None:
    tracker = ShardTracker("s0", committed=committed)
    if handed:
        tracker.handed_out(handed)
    assert tracker.resume_after(checkpoint) == expected


# --- the store ----------------------------------------------------------------------------------
async def test_advance_never_moves_backwards_and_shard_end_sticks() -> None:
    checkpoints = CheckpointStore(MemoryStore(), "stream-a", owner="w1")
    assert (await checkpoints.advance("s0", SEQS[3])).position == SEQS[3]
    assert (await checkpoints.advance("s0", SEQS[1])).position == SEQS[3]
    stored = await checkpoints.get("s0")
    assert stored is not None and stored.position == SEQS[3] and not stored.finished
    assert (await checkpoints.finish("s0")).finished
    assert (await checkpoints.advance("s0", SEQS[11])).position == SHARD_END
    raw = await checkpoints.store.get(checkpoint_key("stream-a", "s0"))
    assert raw is not None and raw.value["owner"] == "w1"


# Each example runs its own event loop: no per-example deadline on a loaded machine.
@settings(deadline=None, max_examples=50)
@given(st.lists(st.sampled_from([*SEQS, SHARD_END]), min_size=1, max_size=20))
def test_concurrent_writers_leave_the_furthest_position(positions: list[str]) -> None:
    async def run() -> str | None:
        checkpoints = CheckpointStore(MemoryStore(), "stream-b")
        await asyncio.gather(*(checkpoints.advance("s0", p) for p in positions))
        stored = await checkpoints.get("s0")
        return None if stored is None else stored.position

    assert asyncio.run(run()) == max(positions, key=position_rank)


class RacingStore(MemoryStore):
    """Another worker writes between our read and our conditional write, once."""

    def __init__(self, competing: str) -> None:
        super().__init__()
        self.competing = competing
        self.raced = False

    async def compare_and_set(self, key: str, expected_version: int, value: dict[str, Any], *,
                              ttl: float | None = None) -> Stored | None:
        if not self.raced:
            self.raced = True
            await self.put(key, {"position": self.competing})
        return await super().compare_and_set(key, expected_version, value, ttl=ttl)


@pytest.mark.parametrize(("ours", "theirs", "expected"), [
    (SEQS[5], SEQS[2], SEQS[5]),  # ours is further: the retry writes it
    (SEQS[2], SEQS[5], SEQS[5]),  # theirs is further: kept, never overwritten
])
async def test_a_lost_race_is_retried_or_yields_to_the_further_position(
        ours: str, theirs: str, expected: str) -> None:
    checkpoints = CheckpointStore(RacingStore(theirs), "stream-c")
    assert (await checkpoints.advance("s0", ours)).position == expected
    stored = await checkpoints.get("s0")
    assert stored is not None and stored.position == expected


async def test_all_lists_one_stream_and_ignores_malformed_entries() -> None:
    store = MemoryStore()
    a = CheckpointStore(store, "stream-d")
    await a.advance("s0", SEQS[0])
    await a.finish("s1", skipped=True)
    await CheckpointStore(store, "stream-d2").advance("s9", SEQS[0])
    await store.put(checkpoint_key("stream-d", "s2"), {"position": "not-a-number"})
    found = await a.all()
    assert set(found) == {"s0", "s1"}
    assert found["s1"].finished and found["s1"].skipped
    assert not found["s0"].skipped
