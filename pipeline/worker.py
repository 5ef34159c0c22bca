"""The runner: pull messages from every source, run the chain, settle each message once.

A message is acknowledged only after every stage and every required sink is done
with it. What happens otherwise is decided by the error's class alone:

* ``RetriableError`` (throttling, a sink that is down, a bug we did not expect)
  → the source releases the message for redelivery with a backoff;
* ``PermanentError`` (malformed, oversized, forged) → dead-lettered with its reason.

Shutdown (SIGTERM/SIGINT or ``stop()``): sources stop receiving, work in flight
gets until the deadline to finish, what is still running is cancelled and its
messages released (never acknowledged), acknowledgements are flushed, sinks are
closed. Nothing is lost; at worst a message is delivered again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram

from pipeline import metrics
from pipeline.chain import Chain
from pipeline.errors import RiposteError, attach_component
from pipeline.gctune import GcPolicy, GcTuning
from pipeline.sources.base import Message, Outcome, OutcomeKind, Source

log = logging.getLogger(__name__)

# Part of the shutdown deadline kept back for flushing acknowledgements and sinks.
_FLUSH_RESERVE = 0.2


@dataclass
class RunStats:
    """What the runner did, for the demo summary and for tests."""

    received: int = 0
    outcomes: Tally[str] = field(default_factory=Tally)
    dead_letter_reasons: Tally[str] = field(default_factory=Tally)
    retry_reasons: Tally[str] = field(default_factory=Tally)
    cancelled_at_shutdown: int = 0
    # Sources whose consumer ended with an error (the service exits non-zero).
    failed_sources: list[str] = field(default_factory=list)


class Runner:
    def __init__(
        self,
        sources: Sequence[Source],
        chain: Chain,
        *,
        concurrency: int = 64,
        shutdown_deadline: float = 25.0,
        on_close: Sequence[Callable[[], Awaitable[None]]] = (),
        on_settled: Callable[[Source, Message, Outcome], None] | None = None,
        gc_policy: GcPolicy | None = None,
    ) -> None:
        self.sources = list(sources)
        self.chain = chain
        self.concurrency = concurrency
        self.shutdown_deadline = shutdown_deadline
        self.on_close = list(on_close)
        self.on_settled = on_settled
        # Garbage-collector settings for the run (pipeline.gctune); None leaves them alone.
        self._gc = GcTuning(gc_policy) if gc_policy is not None else None
        self.stats = RunStats()
        self._stopping = asyncio.Event()
        # Consumers hand messages to a fixed pool of workers: no task per message.
        self._queue: asyncio.Queue[tuple[Source, Message] | None] = asyncio.Queue(concurrency)
        self._busy: dict[asyncio.Task[None], tuple[Source, Message]] = {}
        self._ready = False
        self._in_flight = metrics.IN_FLIGHT
        self._outcome_counters: dict[tuple[str, str], Counter] = {}
        self._end_to_end: dict[str, Histogram] = {}

    @property
    def ready(self) -> bool:
        """Consuming: started, no source has failed, and not shutting down."""
        return self._ready and not self._stopping.is_set() and not self.stats.failed_sources

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Ask for a graceful shutdown (safe to call from a signal handler)."""
        self._stopping.set()

    async def run(self) -> RunStats:
        """Consume until every source is exhausted or ``stop()`` is called, then drain."""
        if self._gc is not None:
            self._gc.apply()  # start-up is over: what exists now lives as long as the run
        try:
            return await self._run()
        finally:
            if self._gc is not None:
                self._gc.restore()

    async def _run(self) -> RunStats:
        workers = [asyncio.create_task(self._work(), name=f"worker:{i}")
                   for i in range(self.concurrency)]
        consumers = [asyncio.create_task(self._consume(s), name=f"consume:{s.name}")
                     for s in self.sources]
        self._ready = True
        stop_wait = asyncio.create_task(self._stopping.wait())
        remaining = set(consumers)
        try:
            while remaining:
                done, _ = await asyncio.wait({stop_wait, *remaining},
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done & remaining:
                    remaining.discard(task)
                    if not task.cancelled() and task.exception() is not None:
                        self.stats.failed_sources.append(task.get_name())
                        log.error("a source failed; shutting down", exc_info=task.exception())
                        self._stopping.set()
                if stop_wait in done:
                    break
        finally:
            self._stopping.set()
            stop_wait.cancel()
            await self._shutdown(consumers, workers)
        return self.stats

    async def _consume(self, source: Source) -> None:
        async for message in source.messages():
            self.stats.received += 1
            await self._queue.put((source, message))

    async def _work(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while True:
            entry = await self._queue.get()
            if entry is None:
                return
            self._busy[task] = entry
            try:
                await self._handle(*entry)
            finally:
                del self._busy[task]

    async def process(self, source: Source, message: Message) -> Outcome:
        """Run one message through the chain and decide its outcome (no settling)."""
        try:
            await self.chain.run(message)
        except RiposteError as err:
            return self._failure(source, message, err)
        except Exception as exc:  # the chain wraps stage errors; this is the runner's own bug
            return self._failure(source, message, attach_component(exc, "runner"))
        return Outcome.ack()

    def _failure(self, source: Source, message: Message, err: RiposteError) -> Outcome:
        component = err.component or "unknown"
        metrics.error(component, err.reason).inc()
        detail = str(err)[:1000]
        if err.retriable:
            self.stats.retry_reasons[f"{component}:{err.reason}"] += 1
            log.warning("message released for retry", extra={
                "source": source.name, "message_id": message.id, "stage": component,
                "reason": err.reason, "receive_count": message.receive_count,
                "error": detail})
            return Outcome.retry(err.reason, detail=detail)
        self.stats.dead_letter_reasons[f"{component}:{err.reason}"] += 1
        log.error("message dead-lettered", extra={
            "source": source.name, "message_id": message.id, "stage": component,
            "reason": err.reason, "error": detail})
        return Outcome.dead_letter(f"{component}:{err.reason}", detail=detail)

    async def _handle(self, source: Source, message: Message) -> None:
        self._in_flight.inc()
        try:
            outcome = await self.process(source, message)
        except asyncio.CancelledError:
            # Cancelled at the shutdown deadline: leave it unsettled. The source's
            # aclose() releases every unsettled message at once (SQS visibility 0;
            # Kinesis never checkpoints past it), so it is redelivered, never lost.
            self.stats.cancelled_at_shutdown += 1
            raise
        finally:
            self._in_flight.dec()
        self.stats.outcomes[outcome.kind.value] += 1
        self._count(source.name, outcome.kind)
        self._latency(source.name).observe(max(0.0, time.time() - message.received_at))
        try:
            await source.settle(message, outcome)
        except Exception:
            log.exception("settling a message failed; it will be redelivered",
                          extra={"source": source.name, "message_id": message.id})
        if self.on_settled is not None:
            self.on_settled(source, message, outcome)

    def _latency(self, source: str) -> Histogram:
        bound = self._end_to_end.get(source)
        if bound is None:
            bound = self._end_to_end[source] = metrics.END_TO_END.labels(source=source)
        return bound

    def _count(self, source: str, kind: OutcomeKind) -> None:
        key = (source, kind.value)
        counter = self._outcome_counters.get(key)
        if counter is None:
            counter = metrics.PROCESSED.labels(source=source, outcome=kind.value)
            self._outcome_counters[key] = counter
        counter.inc()

    async def _shutdown(self, consumers: list[asyncio.Task[None]],
                        workers: list[asyncio.Task[None]]) -> None:
        started = time.monotonic()
        budget = max(0.1, self.shutdown_deadline * (1 - _FLUSH_RESERVE))
        log.info("shutting down: stopping sources",
                 extra={"in_flight": len(self._busy) + self._queue.qsize()})
        await asyncio.gather(*(s.stop() for s in self.sources), return_exceptions=True)
        # A stopped source ends its iterator; its consumer then hands over what it holds.
        # One that does not end promptly is cancelled: a message it held is unsettled and
        # the source's aclose() releases it.
        _, stuck = await asyncio.wait(consumers, timeout=min(2.0, budget / 2))
        for consumer in stuck:
            consumer.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        # Work already received is finished if the deadline allows: one sentinel per worker
        # after whatever is queued.
        for _ in workers:
            await self._queue.put(None)
        _, pending = await asyncio.wait(workers, timeout=budget)
        if pending:
            unfinished = len(self._busy) + sum(1 for e in _drain(self._queue) if e is not None)
            for task in pending:
                task.cancel()
            log.warning("in-flight work cancelled at the deadline; released for redelivery",
                        extra={"count": unfinished})
            await asyncio.gather(*pending, return_exceptions=True)
        remaining = max(0.5, self.shutdown_deadline - (time.monotonic() - started))
        try:
            async with asyncio.timeout(remaining):
                # Sources first (their acknowledgements need the AWS clients), then the
                # rest in order: sinks flush before the state store and clients close.
                results = await asyncio.gather(*(s.aclose() for s in self.sources),
                                               return_exceptions=True)
                for close in self.on_close:
                    try:
                        await close()
                    except Exception as exc:
                        results.append(exc)
        except TimeoutError:
            log.error("flushing at shutdown ran past the deadline")
            return
        for result in results:
            if isinstance(result, BaseException):
                log.error("closing a component failed", exc_info=result)
        log.info("shut down", extra={"seconds": round(time.monotonic() - started, 3),
                                     **dict(self.stats.outcomes)})


def _drain(queue: asyncio.Queue[Any]) -> list[Any]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
