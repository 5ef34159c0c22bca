"""Stages and the chain that runs them (Substation's transforms, bytewax's operators).

A stage is one async callable over one item returning zero, one or many items:
0 drops it, 1 passes it on, n fans out. Stages pass through items they do not
handle, so adding a stage never changes what the ones around it see.

The chain has two parts. The *stateless prefix* (decode, normalize) runs as soon
as a message arrives. The rest runs in a per-key *lane*: items about the same
resource are processed one at a time in arrival order, items about different
resources run concurrently, so correlation and containment never race
themselves over one instance.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any, Protocol, runtime_checkable

from pipeline import metrics
from pipeline.errors import attach_component

_DEFERRED: ContextVar[list[asyncio.Future[Any]] | None] = ContextVar("riposte_deferred",
                                                                      default=None)


def defer(waiting: asyncio.Future[Any]) -> bool:
    """Let the chain wait for ``waiting`` after the message's lanes are released.

    A stage whose work ends in waiting for someone else (the fan-out waiting for
    sinks to accept its items) hands that wait to the chain instead of holding the
    lane through it, so the next item about the same resource can start. The
    message still succeeds only if the deferred wait does. Returns False outside a
    chain run (replay, tests): the caller then waits itself.
    """
    pending = _DEFERRED.get()
    if pending is None:
        return False
    pending.append(waiting)
    return True


@runtime_checkable
class Stage(Protocol):
    """A step of the chain. A stage may also define ``accepts(item) -> bool``: a cheap test
    that is False only for items its ``process`` returns as they are, without side
    effects. Replay skips ``process`` for those; the live chain still calls it for every
    item (its per-stage latency histogram counts them all)."""

    name: str

    async def process(self, item: Any) -> Sequence[Any]: ...


def acceptor(stage: Stage) -> Callable[[Any], bool] | None:
    """The stage's ``accepts`` test, or None when it takes every item."""
    accepts: Callable[[Any], bool] | None = getattr(stage, "accepts", None)
    return accepts


class Lanes:
    """One FIFO lock per key, created on demand and dropped when nobody holds it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    async def run(self, key: str, fn: Callable[[], Any]) -> Any:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                return await fn()
        finally:
            lock_, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock_, users - 1)


def default_lane_key(item: Any) -> str:
    key = getattr(item, "lane_key", None)
    if isinstance(key, str):
        return key
    return getattr(item, "key", None) or f"item:{id(item)}"


class Chain:
    """Runs a message through ``prefix`` stages, then ``laned`` stages per key."""

    def __init__(
        self,
        prefix: Sequence[Stage],
        laned: Sequence[Stage],
        *,
        lane_key: Callable[[Any], str] = default_lane_key,
    ) -> None:
        self.prefix = tuple(prefix)
        self.laned = tuple(laned)
        self.lane_key = lane_key
        self.lanes = Lanes()
        self._latency = {s.name: metrics.STAGE_LATENCY.labels(stage=s.name)
                         for s in (*self.prefix, *self.laned)}

    @property
    def stages(self) -> tuple[Stage, ...]:
        return (*self.prefix, *self.laned)

    async def _apply(self, stage: Stage, items: Sequence[Any]) -> list[Any]:
        out: list[Any] = []
        observe = self._latency[stage.name].observe
        for item in items:
            started = time.perf_counter()
            try:
                produced = await stage.process(item)
            except Exception as exc:
                raise attach_component(exc, stage.name) from exc
            finally:
                observe(time.perf_counter() - started)
            out.extend(produced)
        return out

    async def _run_stages(self, stages: Sequence[Stage], items: Sequence[Any]) -> list[Any]:
        current: list[Any] = list(items)
        for stage in stages:
            if not current:
                break
            current = await self._apply(stage, current)
        return current

    async def _run_lane(self, key: str, items: list[Any]) -> list[Any]:
        result: list[Any] = await self.lanes.run(key, lambda: self._run_stages(self.laned, items))
        return result

    async def run(self, item: Any) -> list[Any]:
        """Run one input item through the whole chain; returns what the last stage emitted.

        Raises a ``RiposteError`` naming the failing stage. Items of one message
        that belong to different lanes run concurrently; all must succeed, and so
        must every wait a stage deferred (see ``defer``).
        """
        deferred: list[asyncio.Future[Any]] = []
        token = _DEFERRED.set(deferred)
        try:
            result = await self._run(item)
        except BaseException:
            for waiting in deferred:
                waiting.cancel()
            await asyncio.gather(*deferred, return_exceptions=True)
            raise
        finally:
            _DEFERRED.reset(token)
        if deferred:
            outcomes = await asyncio.gather(*deferred, return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise attach_component(outcome, "deferred") from outcome
        return result

    async def _run(self, item: Any) -> list[Any]:
        items = await self._run_stages(self.prefix, [item])
        if not items or not self.laned:
            return items
        groups: dict[str, list[Any]] = {}
        for it in items:
            groups.setdefault(self.lane_key(it), []).append(it)
        if len(groups) == 1:
            ((key, group),) = groups.items()
            return await self._run_lane(key, group)
        results: list[Any] = []
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._run_lane(k, g)) for k, g in groups.items()]
        except ExceptionGroup as group:
            # One failing lane fails the message; report the first cause, unwrapped.
            raise group.exceptions[0] from None
        for task in tasks:
            results.extend(task.result())
        return results
