"""Token buckets (local and shared through the state store), backoff, serialization."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import retry, serde
from pipeline.clock import EventTimeClock
from pipeline.errors import PermanentError
from pipeline.models import Event, EventKind, ResourceRef, Severity
from pipeline.ratelimit import SharedTokenBucket, TokenBucket
from pipeline.state.memory import MemoryStore


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_local_bucket_allows_burst_then_paces_to_the_rate() -> None:
    t = FakeTime()
    bucket = TokenBucket(rate=10, burst=3, clock=t.clock, sleep=t.sleep)
    for _ in range(3):
        assert await bucket.acquire() == 0
    waited = await bucket.acquire()
    assert waited == pytest.approx(0.1)
    assert not bucket.try_acquire()
    t.now += 1.0
    assert bucket.try_acquire(3) and not bucket.try_acquire()
    with pytest.raises(ValueError, match="cannot take"):
        await bucket.acquire(4)


async def test_shared_bucket_is_one_bucket_for_every_worker_on_event_time() -> None:
    clock = EventTimeClock(1000.0)
    store = MemoryStore(clock)
    workers = [SharedTokenBucket(store, "contain", rate=5 / 60, burst=5, clock=clock)
               for _ in range(3)]
    granted = await asyncio.gather(*(w.try_acquire() for w in workers * 10))
    assert sum(granted) == 5, "five actions per minute across all workers"
    clock.advance_to(1000.0 + 12.0)  # one more token after 12 s of event time
    assert await workers[0].try_acquire()
    assert not await workers[1].try_acquire()


@given(st.integers(min_value=1, max_value=40))
def test_backoff_grows_and_is_capped(attempt: int) -> None:
    ceiling = min(30.0, 0.5 * 2.0 ** (attempt - 1))
    assert retry.backoff_delay(attempt, jitter=False) == ceiling
    assert ceiling / 2 <= retry.backoff_delay(attempt) <= ceiling


async def test_instant_retries_switch() -> None:
    with retry.instant_retries():
        assert retry.retries_are_instant()
        await asyncio.wait_for(retry.sleep(60), 1)
    assert not retry.retries_are_instant()


def test_events_serialize_with_utc_times_and_enum_values() -> None:
    event = Event(id="e1", kind=EventKind.GUARDDUTY, type="Recon:EC2/PortProbe", title="t",
                  source="aws.guardduty", account="1", region="us-east-1",
                  time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
                  severity=Severity.of_score(55, native=5.5),
                  resources=(ResourceRef("ec2.instance", "i-1", tags={"a": "b"}),))
    data = serde.loads(serde.dumps(event))
    assert data["time"] == "2024-01-02T03:04:05Z"
    assert data["kind"] == "guardduty" and data["severity"]["label"] == "medium"
    assert data["resources"][0]["tags"] == {"a": "b"}
    assert event.lane_key == "ec2.instance:i-1"


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{", "invalid_json"), (b"\xff", "invalid_json"), (b"[" * 2000 + b"]" * 2000, "invalid_json"),
])
def test_bad_json_is_poison(raw: bytes, reason: str) -> None:
    with pytest.raises(PermanentError) as info:
        serde.loads(raw)
    assert info.value.reason == reason
    with pytest.raises(PermanentError, match="expected a JSON object"):
        serde.loads_object(b"[1]")


async def test_concurrent_callers_in_one_process_never_see_a_full_bucket_as_empty(
        tmp_path: Any) -> None:
    """Many concurrent incidents in one worker: exactly the burst is granted, no fewer."""
    from pipeline.state.sqlite import SqliteStore

    clock = EventTimeClock(1000.0)
    store = await SqliteStore.open(str(tmp_path / "state.db"), clock=clock)
    try:
        bucket = SharedTokenBucket(store, "contain", rate=1 / 60, burst=20, clock=clock,
                                   max_attempts=3)
        granted = await asyncio.gather(*(bucket.try_acquire() for _ in range(60)))
    finally:
        await store.aclose()
    assert sum(granted) == 20
