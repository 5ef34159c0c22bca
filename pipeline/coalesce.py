"""Coalesced reads: many concurrent single-key lookups answered by one call for many keys.

Containment plans read the resource they act on (``DescribeInstances`` for one
instance, ``DescribeSecurityGroups`` for one group). Under a burst of findings
hundreds of plans run at once, and one call per plan costs both CPU (every AWS SDK
call is a few hundred microseconds of Python) and API rate: EC2's describe calls
share a per-account throttling bucket with every other tool in the account. The
APIs take many ids per call, so a :class:`BatchReader` gathers the keys asked for
while a call is being made and asks for all of them in the next one (the
"DataLoader" pattern).

Freshness is kept exactly: a caller is only ever answered by a call that *started
after* it asked, so a read made to verify a change just applied never sees a
response that was already on its way before the change. With nothing in flight a
lookup is sent on the next turn of the event loop, so a quiet system adds no delay;
under load the batches grow by themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Fetch = Callable[[Sequence[K]], Awaitable[Mapping[K, V]]]


class BatchReader(Generic[K, V]):
    """Answers ``get(key)`` from ``fetch(keys)`` calls of at most ``max_batch`` keys.

    ``fetch`` returns what it found; a key it leaves out reads as None. When a call
    for several keys fails, ``isolate`` (if given) decides whether the error could
    belong to one bad key (a malformed id, say): then each key is asked for on its
    own, so one poisoned key cannot fail its neighbours. Otherwise (throttling, a
    network error) every caller of that batch gets the error.
    """

    def __init__(self, fetch: Fetch[K, V], *, max_batch: int = 100, max_in_flight: int = 4,
                 isolate: Callable[[BaseException], bool] | None = None,
                 on_call: Callable[[int], None] | None = None) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._fetch = fetch
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._isolate = isolate
        self._on_call = on_call  # told the number of keys of every call (metrics)
        self._pending: dict[K, list[asyncio.Future[V | None]]] = {}
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # fetch calls made (batches), for metrics and tests
        self.keys = 0  # keys asked for across those calls

    async def get(self, key: K) -> V | None:
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append(future)
        self._kick()
        return await future

    def _kick(self) -> None:
        if self._scheduled or not self._pending or self._in_flight >= self._max_in_flight:
            return
        self._scheduled = True
        # Next turn of the loop: every lookup made in this turn joins the same call.
        asyncio.get_running_loop().call_soon(self._launch)

    def _launch(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < self._max_in_flight:
            batch: dict[K, list[asyncio.Future[V | None]]] = {}
            for key in list(self._pending)[: self._max_batch]:
                waiters = [f for f in self._pending.pop(key) if not f.done()]
                if waiters:  # every caller of this key gave up: nothing to ask
                    batch[key] = waiters
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: dict[K, list[asyncio.Future[V | None]]]) -> None:
        try:
            await self._answer(batch)
        finally:
            self._in_flight -= 1
            self._kick()

    async def _answer(self, batch: dict[K, list[asyncio.Future[V | None]]]) -> None:
        keys = list(batch)
        self.calls += 1
        self.keys += len(keys)
        if self._on_call is not None:
            self._on_call(len(keys))
        try:
            found = await self._fetch(keys)
        except asyncio.CancelledError:
            for waiters in batch.values():
                _cancel(waiters)
            raise
        except Exception as exc:
            if len(keys) > 1 and self._isolate is not None and self._isolate(exc):
                for key in keys:  # one key at a time: the bad one fails alone
                    await self._answer({key: batch[key]})
                return
            for waiters in batch.values():
                _fail(waiters, exc)
            return
        for key, waiters in batch.items():
            value = found.get(key)
            for future in waiters:
                if not future.done():
                    future.set_result(value)


def _fail(waiters: list[asyncio.Future[V | None]], exc: BaseException) -> None:
    for future in waiters:
        if not future.done():
            future.set_exception(exc)


def _cancel(waiters: list[asyncio.Future[V | None]]) -> None:
    for future in waiters:
        future.cancel()
