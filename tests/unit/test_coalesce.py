"""BatchReader: concurrent single-key reads coalesce into few calls, never into stale ones."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from pipeline.coalesce import BatchReader


async def turns(n: int = 5) -> None:
    """Let the event loop run a few turns (queue, launch, start the call)."""
    for _ in range(n):
        await asyncio.sleep(0)


class Backend:
    """A store whose values change on every call, recording what each call asked for."""

    def __init__(self, *, missing: frozenset[str] = frozenset(), poison: str | None = None,
                 fail: BaseException | None = None) -> None:
        self.calls: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.missing, self.poison, self.fail = missing, poison, fail

    async def fetch(self, keys: Sequence[str]) -> Mapping[str, tuple[str, int]]:
        self.calls.append(list(keys))
        number = len(self.calls)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        if self.poison is not None and self.poison in keys:
            raise ValueError(f"malformed key {self.poison}")
        return {k: (k, number) for k in keys if k not in self.missing}


async def test_reads_made_together_share_one_call() -> None:
    backend = Backend(missing=frozenset({"gone"}))
    told: list[int] = []
    reader = BatchReader(backend.fetch, on_call=told.append)
    values = await asyncio.gather(*(reader.get(k) for k in ["a", "b", "a", "gone", "c"]))
    assert values == [("a", 1), ("b", 1), ("a", 1), None, ("c", 1)]
    assert backend.calls == [["a", "b", "gone", "c"]]  # a repeated key is asked for once
    assert (reader.calls, reader.keys) == (1, 4)
    assert told == [4]  # the metrics hook hears of every call and its size


async def test_a_read_never_gets_an_answer_that_was_already_on_its_way() -> None:
    backend = Backend()
    backend.gate = asyncio.Event()
    reader = BatchReader(backend.fetch, max_in_flight=1)
    first = asyncio.ensure_future(reader.get("a"))
    await turns()
    assert backend.calls == [["a"]]  # in flight, held at the gate
    # Asked after that call started (say, to verify a change just made): must not join it.
    second = asyncio.ensure_future(reader.get("a"))
    third = asyncio.ensure_future(reader.get("b"))
    await asyncio.sleep(0)
    backend.gate.set()
    assert await first == ("a", 1)
    assert await second == ("a", 2)
    assert await third == ("b", 2)
    assert backend.calls == [["a"], ["a", "b"]]


@pytest.mark.parametrize(("keys", "max_batch", "max_in_flight", "sizes"), [
    (250, 100, 4, [100, 100, 50]),
    (7, 3, 1, [1, 3, 3]),  # the first call leaves at once; the rest wait their turn
    (1, 100, 4, [1]),
])
async def test_calls_respect_batch_size_and_in_flight_limit(
        keys: int, max_batch: int, max_in_flight: int, sizes: list[int]) -> None:
    backend = Backend()
    reader = BatchReader(backend.fetch, max_batch=max_batch, max_in_flight=max_in_flight)
    in_flight = 0
    most = 0
    inner = backend.fetch

    async def counting(ks: Sequence[str]) -> Mapping[str, tuple[str, int]]:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001)
        try:
            return await inner(ks)
        finally:
            in_flight -= 1

    reader._fetch = counting
    first = asyncio.ensure_future(reader.get("k0"))
    if max_in_flight == 1:
        await turns()
    rest = await asyncio.gather(*(reader.get(f"k{i}") for i in range(1, keys)))
    values = [await first, *rest]
    assert all(v is not None and v[0] == f"k{i}" for i, v in enumerate(values))
    assert sorted(len(c) for c in backend.calls) == sorted(sizes)
    assert most <= max_in_flight


async def test_one_poisoned_key_fails_alone_when_errors_are_isolated() -> None:
    backend = Backend(poison="bad")
    reader = BatchReader(backend.fetch, isolate=lambda exc: isinstance(exc, ValueError))
    results = await asyncio.gather(reader.get("a"), reader.get("bad"), reader.get("b"),
                                   return_exceptions=True)
    assert results[0] == ("a", 2) and results[2] == ("b", 4)
    assert isinstance(results[1], ValueError)
    assert backend.calls == [["a", "bad", "b"], ["a"], ["bad"], ["b"]]


async def test_other_errors_reach_every_caller_of_the_batch() -> None:
    backend = Backend(fail=ConnectionError("throttled"))
    reader = BatchReader(backend.fetch, isolate=lambda exc: isinstance(exc, ValueError))
    results = await asyncio.gather(reader.get("a"), reader.get("b"), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert len(backend.calls) == 1
    backend.fail = None
    assert await reader.get("a") == ("a", 2)  # the reader is still usable


async def test_a_cancelled_caller_leaves_the_others_answered() -> None:
    backend = Backend()
    backend.gate = asyncio.Event()
    reader = BatchReader(backend.fetch)
    gone = asyncio.ensure_future(reader.get("a"))
    kept = asyncio.ensure_future(reader.get("a"))
    await asyncio.sleep(0)
    gone.cancel()
    backend.gate.set()
    assert await kept == ("a", 1)
    assert gone.cancelled()


async def test_keys_whose_callers_all_left_are_not_asked_for() -> None:
    backend = Backend()
    reader = BatchReader(backend.fetch)
    gone = asyncio.ensure_future(reader.get("x"))
    await asyncio.sleep(0)  # queued, launch scheduled for the next turn
    gone.cancel()
    assert await reader.get("y") == ("y", 1)
    assert backend.calls == [["y"]]


def test_limits_must_be_positive() -> None:
    async def fetch(keys: Sequence[str]) -> Mapping[str, str]:
        return {}

    with pytest.raises(ValueError):
        BatchReader(fetch, max_batch=0)
    with pytest.raises(ValueError):
        BatchReader(fetch, max_in_flight=0)
