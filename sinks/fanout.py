"""The terminal ``fanout`` stage: route each item to its sinks and wait for the required ones.

Delivery semantics (the message's acknowledgement waits on ``process()``):

- **required** sinks: ``process()`` returns once each has delivered the item or
  rejected it for good (a dead-letter record holds the intake's answer). If one
  cannot take it within its retry budget, ``process()`` raises
  ``RetriableError(reason="sink_unavailable")`` so the message is redelivered by
  the queue rather than holding a worker while the intake is down.
- **best-effort** sinks: the item is handed to the sink's batcher and
  ``process()`` does not wait; failures are counted.
- a **delivery ledger** in the state store remembers which sink accepted which
  item revision, so the redelivered message only goes to the sinks that missed it.

Routing: a sink's ``routing`` picks item kinds, a minimum severity and fnmatch
patterns over types (an event's type, an incident's finding types, an action's
kind). Actions are not filtered by severity: they carry none of their own, and an
action taken on an account is always worth telling the sinks that asked for actions.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
from collections.abc import Sequence
from typing import Any

from pipeline.chain import defer
from pipeline.context import RuntimeContext
from pipeline.errors import ConfigError, RetriableError
from pipeline.models import (
    ActionRecord,
    Event,
    Incident,
    Item,
    SeverityLabel,
    item_id,
    item_kind,
    item_severity,
)
from sinks._runner import Outcome, SinkRunner
from sinks.config_base import Routing, SinkBase
from sinks.delivery_ledger import DeliveryLedger
from sinks.registry import build_sink

log = logging.getLogger(__name__)

# Beyond a required sink's retry budget, how long process() still waits for an answer
# already on its way (a request in flight when the budget ran out).
_GRACE = 1.0


class SinkHealthError(ConfigError):
    """A required sink failed its start-up healthcheck (unreachable or credentials refused)."""

    default_reason = "sink_unhealthy"


class Route:
    """A compiled ``Routing``: kind set, severity floor and one regex for the type patterns."""

    def __init__(self, routing: Routing) -> None:
        self.kinds = frozenset(routing.kinds)
        self.min_rank = SeverityLabel(routing.min_severity).rank
        self._types: re.Pattern[str] | None = None
        if routing.types:
            self._types = re.compile("|".join(f"(?:{fnmatch.translate(p)})"
                                              for p in routing.types))

    def matches(self, item: Item) -> bool:
        if item_kind(item) not in self.kinds:
            return False
        if not isinstance(item, ActionRecord) and item_severity(item).rank < self.min_rank:
            return False
        if self._types is None:
            return True
        match = self._types.match
        return any(match(t) for t in types_of(item))


def types_of(item: Item) -> tuple[str, ...]:
    if isinstance(item, Event):
        if item.detection is not None:
            return (item.type, item.detection.rule_id)
        return (item.type,)
    if isinstance(item, Incident):
        return tuple(f.type for f in item.findings)
    return (item.kind,)


class FanoutStage:
    name = "fanout"

    def __init__(self, runners: Sequence[SinkRunner], *, close_deadline: float = 10.0) -> None:
        self.runners = tuple(runners)
        self.close_deadline = close_deadline
        self._routes = tuple((Route(r.config.routing), r) for r in self.runners)
        self._wait = max((r.config.retry.budget for r in self.runners if r.required),
                         default=0.0) + _GRACE

    @property
    def stopped(self) -> dict[str, str]:
        """Sinks stopped at run time (credentials refused), with why: for /readyz."""
        return {r.name: r.stopped for r in self.runners if r.stopped is not None}

    def runner(self, name: str) -> SinkRunner:
        for r in self.runners:
            if r.name == name:
                return r
        raise KeyError(name)

    async def start(self) -> None:
        """Healthcheck every sink: a required one failing stops start-up with a clear error."""
        results = await asyncio.gather(*(r.healthcheck() for r in self.runners),
                                       return_exceptions=True)
        failures: list[str] = []
        for runner, result in zip(self.runners, results, strict=True):
            if not isinstance(result, BaseException):
                log.info("sink healthy", extra={"sink": runner.name})
                continue
            if isinstance(result, asyncio.CancelledError):
                raise result
            detail = f"{runner.name} ({getattr(runner.config, 'type', '?')}): {result}"
            if runner.required:
                failures.append(detail)
            else:
                log.warning("best-effort sink failed its healthcheck; continuing without "
                            "waiting for it", extra={"sink": runner.name, "error": str(result)})
        if failures:
            raise SinkHealthError("required sink(s) failed the start-up healthcheck: "
                                  + "; ".join(failures), component=self.name)

    async def process(self, item: Any) -> Sequence[Any]:
        if not isinstance(item, Event | Incident | ActionRecord):
            return []
        waits: list[tuple[SinkRunner, asyncio.Future[Outcome]]] = []
        for route, runner in self._routes:
            if not route.matches(item):
                continue
            future = await runner.submit(item)
            if runner.required:
                waits.append((runner, future))
        if not waits:
            return []
        # Waiting for the sinks happens after the item's lane is released when the chain
        # allows it: a sink's linger must not serialize every event about one resource.
        waiting = asyncio.ensure_future(self._accepted(item, waits))
        if not defer(waiting):
            await waiting
        return []

    async def _accepted(self, item: Item,
                        waits: list[tuple[SinkRunner, asyncio.Future[Outcome]]]) -> None:
        """Return once every required sink accepted (or refused for good) ``item``."""
        pending = [f for _, f in waits if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=self._wait)
        missing = [r.name for r, f in waits
                   if not f.done() or f.result() is Outcome.RELEASED]
        if missing:
            raise RetriableError(
                f"{item_id(item)} not accepted within the retry budget of sink(s) "
                f"{', '.join(missing)}; releasing the message for redelivery",
                reason="sink_unavailable", component=missing[0])

    async def aclose(self, deadline: float | None = None) -> None:
        """Flush every batcher (bounded by ``deadline`` seconds overall), then close sinks.

        Items still undelivered at the deadline are released: their messages were not
        acknowledged and come back through the queue.
        """
        limit = self.close_deadline if deadline is None else deadline
        drained = await asyncio.gather(*(r.drain(limit) for r in self.runners),
                                       return_exceptions=True)
        for runner, ok in zip(self.runners, drained, strict=True):
            if ok is not True:
                log.warning("sink did not drain before the shutdown deadline; undelivered "
                            "items will be redelivered", extra={"sink": runner.name})
        await asyncio.gather(*(r.aclose() for r in self.runners))


def build_runners(sink_configs: Sequence[SinkBase], ctx: RuntimeContext) -> list[SinkRunner]:
    ledger = DeliveryLedger(ctx.store, clock=ctx.clock)
    return [SinkRunner(build_sink(cfg, ctx), cfg, ledger=ledger, store=ctx.store)
            for cfg in sink_configs]


def build(config: Any, ctx: RuntimeContext) -> FanoutStage:
    """The fan-out over ``config.sinks`` (a ``RiposteConfig``)."""
    # Flushing sinks gets part of the service's shutdown deadline, never all of it.
    close_deadline = min(10.0, float(config.service.shutdown_deadline) / 2)
    return FanoutStage(build_runners(list(config.sinks), ctx), close_deadline=close_deadline)
