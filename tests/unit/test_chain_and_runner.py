"""The chain (stateless prefix, per-key lanes) and the runner's settle-exactly-once rules."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from pipeline.chain import Chain, Lanes, defer
from pipeline.errors import PermanentError, RetriableError
from pipeline.sources.base import InFlightBudget, Message, Outcome, OutcomeKind
from pipeline.worker import Runner


@dataclass(frozen=True)
class Item:
    key: str
    n: int

    @property
    def lane_key(self) -> str:
        return self.key


class Split:
    """Prefix stage: a message body "a1,b1,a2" becomes three items."""

    name = "split"

    async def process(self, item: Any) -> Sequence[Any]:
        parts = item.body.decode().split(",")
        return [Item(p[0], int(p[1:])) for p in parts if p]


class Record:
    """Laned stage: records the order it saw items in, optionally slowly."""

    name = "record"

    def __init__(self, delay: float = 0.0) -> None:
        self.seen: list[Item] = []
        self.delay = delay
        self.active: dict[str, int] = {}
        self.max_parallel_per_key = 0
        self.max_parallel = 0

    async def process(self, item: Any) -> Sequence[Any]:
        self.active[item.key] = self.active.get(item.key, 0) + 1
        self.max_parallel_per_key = max(self.max_parallel_per_key, self.active[item.key])
        self.max_parallel = max(self.max_parallel, sum(self.active.values()))
        await asyncio.sleep(self.delay)
        self.seen.append(item)
        self.active[item.key] -= 1
        return [item]


class Fail:
    name = "fail"

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def process(self, item: Any) -> Sequence[Any]:
        raise self.exc


def msg(body: str, mid: str = "m") -> Message:
    return Message(id=mid, body=body.encode(), source="test", received_at=time.time())


async def test_items_of_one_key_keep_arrival_order_and_never_overlap() -> None:
    record = Record(delay=0.001)
    chain = Chain([Split()], [record])
    bodies = [f"a{i},b{i}" for i in range(20)]
    await asyncio.gather(*(chain.run(msg(b, str(i))) for i, b in enumerate(bodies)))
    for key in "ab":
        assert [it.n for it in record.seen if it.key == key] == list(range(20))
    assert record.max_parallel_per_key == 1
    assert record.max_parallel >= 2, "different keys run concurrently"
    assert len(chain.lanes) == 0, "idle lanes are dropped"


async def test_stage_errors_carry_the_stage_name() -> None:
    chain = Chain([Split()], [Fail(PermanentError("bad", reason="nope"))])
    with pytest.raises(PermanentError) as info:
        await chain.run(msg("a1"))
    assert info.value.component == "fail" and info.value.reason == "nope"


async def test_unknown_exceptions_become_retriable_and_a_failing_lane_fails_the_message() -> None:
    chain = Chain([Split()], [Fail(KeyError("x"))])
    with pytest.raises(RetriableError) as info:
        await chain.run(msg("a1,b1,c1"))
    assert info.value.component == "fail" and info.value.reason == "KeyError"


async def test_lanes_run_in_fifo_order_per_key() -> None:
    lanes = Lanes()
    order: list[int] = []

    async def job(i: int) -> None:
        async def body() -> None:
            await asyncio.sleep(0.001 * (5 - i))
            order.append(i)

        await lanes.run("k", body)

    await asyncio.gather(*(job(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]


class ListSource:
    """A finite in-memory source that records how each message was settled."""

    name = "list"

    def __init__(self, bodies: list[str], budget: InFlightBudget | None = None) -> None:
        self.bodies = bodies
        self.budget = budget or InFlightBudget(100)
        self.settled: dict[str, Outcome] = {}
        self.closed = False

    async def messages(self) -> AsyncIterator[Message]:
        for i, body in enumerate(self.bodies):
            await self.budget.acquire(1)
            yield msg(body, f"m{i}")

    async def settle(self, message: Message, outcome: Outcome) -> None:
        assert message.id not in self.settled, "settled twice"
        self.settled[message.id] = outcome
        self.budget.release(1)

    async def stop(self) -> None:
        return None

    async def aclose(self) -> None:
        self.closed = True


class Judge:
    """Fails by the message body's first character: p = poison, r = retriable, x = bug."""

    name = "judge"

    async def process(self, item: Any) -> Sequence[Any]:
        first = item.body[:1]
        if first == b"p":
            raise PermanentError("poison", reason="invalid_json")
        if first == b"r":
            raise RetriableError("down", reason="sink_unavailable")
        if first == b"x":
            raise ZeroDivisionError("bug")
        return []


async def test_runner_settles_every_message_exactly_once_by_error_class() -> None:
    source = ListSource(["ok", "poison", "retry", "xbug", "ok2"])
    runner = Runner([source], Chain([Judge()], []), concurrency=3)
    stats = await runner.run()
    kinds = {k: v.kind for k, v in source.settled.items()}
    assert kinds == {"m0": OutcomeKind.ACK, "m1": OutcomeKind.DEAD_LETTER,
                     "m2": OutcomeKind.RETRY, "m3": OutcomeKind.RETRY, "m4": OutcomeKind.ACK}
    assert source.settled["m1"].reason == "judge:invalid_json"
    assert source.settled["m3"].reason == "ZeroDivisionError"
    assert stats.received == 5 and source.closed


async def test_backpressure_holds_receiving_to_the_in_flight_budget() -> None:
    budget = InFlightBudget(4)
    seen_in_use: list[int] = []

    class Slow:
        name = "slow"

        async def process(self, item: Any) -> Sequence[Any]:
            seen_in_use.append(budget.in_use)
            await asyncio.sleep(0.005)
            return []

    source = ListSource([f"m{i}" for i in range(30)], budget)
    await Runner([source], Chain([Slow()], []), concurrency=16).run()
    assert len(source.settled) == 30
    assert max(seen_in_use) <= 4


async def test_stop_drains_in_flight_work_before_the_deadline() -> None:
    class Endless(ListSource):
        """Produces until stopped, like a queue that never runs dry."""

        stopped = False

        async def messages(self) -> AsyncIterator[Message]:
            i = 0
            while not self.stopped:
                await self.budget.acquire(1)
                yield msg("slow", f"m{i}")
                i += 1

        async def stop(self) -> None:
            self.stopped = True

    class Slow:
        name = "slow"

        async def process(self, item: Any) -> Sequence[Any]:
            await asyncio.sleep(0.05)
            return []

    source = Endless([])
    runner = Runner([source], Chain([Slow()], []), concurrency=4, shutdown_deadline=2)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.12)
    started = time.monotonic()
    runner.stop()
    stats = await task
    assert time.monotonic() - started < 1.0
    assert stats.cancelled_at_shutdown == 0
    assert len(source.settled) == stats.received, "everything received was finished"
    assert all(o.kind is OutcomeKind.ACK for o in source.settled.values())


async def test_work_past_the_deadline_is_left_unsettled_for_the_source_to_release() -> None:
    class Stuck:
        name = "stuck"

        async def process(self, item: Any) -> Sequence[Any]:
            await asyncio.sleep(30)
            return []

    source = ListSource(["a", "b"])
    runner = Runner([source], Chain([Stuck()], []), concurrency=2, shutdown_deadline=0.3)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.05)
    runner.stop()
    stats = await asyncio.wait_for(task, 3)
    assert stats.cancelled_at_shutdown == 2
    assert source.settled == {}, "never acknowledged; the source releases it on aclose()"
    assert source.closed


async def test_in_flight_budget_takes_what_is_free_and_wakes_waiters() -> None:
    budget = InFlightBudget(10)
    assert await budget.acquire(7) == 7
    assert await budget.acquire(7) == 3
    waiter = asyncio.create_task(budget.acquire(5))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    budget.release(2)
    assert await asyncio.wait_for(waiter, 1) == 2
    with pytest.raises(ValueError, match="at least 1"):
        InFlightBudget(0)


async def test_a_failing_source_stops_the_service_and_is_reported() -> None:
    class Broken(ListSource):
        async def messages(self) -> AsyncIterator[Message]:
            await self.budget.acquire(1)
            yield msg("ok", "m0")
            raise RuntimeError("the queue vanished")

    source = Broken([])
    runner = Runner([source], Chain([Judge()], []), concurrency=2)
    stats = await asyncio.wait_for(runner.run(), 5)
    assert stats.failed_sources == ["consume:list"]
    assert not runner.ready
    assert source.settled["m0"].kind is OutcomeKind.ACK, "what was received is still finished"


async def test_deferred_waits_release_the_lane_but_hold_the_message() -> None:
    """A stage that waits on someone else (the fan-out on its sinks) defers the wait:
    the next item about the same resource starts at once, yet each message still
    completes only when its own wait does, and fails if that wait fails."""
    gates: dict[int, asyncio.Future[None]] = {}
    entered: list[int] = []

    class Deliver:
        name = "deliver"

        async def process(self, item: Any) -> Sequence[Any]:
            entered.append(item.n)
            gate = asyncio.get_running_loop().create_future()
            gates[item.n] = gate
            assert defer(gate)
            return []

    chain = Chain([Split()], [Deliver()])
    first = asyncio.create_task(chain.run(msg("a1", "m1")))
    second = asyncio.create_task(chain.run(msg("a2", "m2")))
    await asyncio.sleep(0.01)
    assert entered == [1, 2], "the lane was free while message 1 waited on its delivery"
    assert not first.done() and not second.done()
    gates[1].set_result(None)
    gates[2].set_exception(RetriableError("sink down", reason="sink_unavailable",
                                          component="splunk"))
    assert await first == []
    with pytest.raises(RetriableError) as info:
        await second
    assert info.value.component == "splunk"
    assert not defer(asyncio.get_running_loop().create_future()), "outside a chain run"
