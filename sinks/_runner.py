"""Delivery to one sink: batching, concurrency, rate limit, retries, ledger and metrics.

Every ``process()`` call of the fan-out hands items to the runner of each sink
they are routed to and gets back a future for the item's outcome. Items from
concurrent calls share one batcher, which sends a batch when it is full by count
or estimated bytes, or when the first item has lingered long enough. Batches go
out under a concurrency limit and a token bucket, and the items a sink asks to
have retried are retried with exponential backoff and full jitter (or the
intake's ``Retry-After``, when longer) until they are delivered, rejected, or their
retry budget runs out, at which point they are *released*: a required sink's
message then goes back to the queue for redelivery instead of holding a worker.

A sink that refuses our credentials (401/403, or ``send`` raising a non-retriable
error) is stopped: it gets no more requests, every item for it is dead-lettered
with the reason, and the error is logged once, loudly.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import Counter

from pipeline import metrics
from pipeline import retry as retry_policy
from pipeline.errors import RiposteError
from pipeline.models import Item, item_id
from pipeline.ratelimit import SharedTokenBucket, TokenBucket
from pipeline.state.base import StateStore
from sinks import reasons
from sinks._items import encoded
from sinks.base import Rejected, SendResult, Sink
from sinks.config_base import SinkBase
from sinks.delivery_ledger import DeliveryLedger

log = logging.getLogger(__name__)

# Delays asked for recently (backoff or Retry-After), kept for inspection and tests.
_RECENT_DELAYS = 64
# A shared bucket has no waiter queue; poll it no faster than this.
_SHARED_BUCKET_MIN_POLL = 0.01


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    # Already accepted by this sink earlier (delivery ledger): not sent again.
    ALREADY_DELIVERED = "already_delivered"
    REJECTED = "rejected"
    # Retry budget or attempts exhausted (or shut down): redeliver the message later.
    RELEASED = "released"


@dataclass(slots=True)
class _Ticket:
    item: Item
    key: str
    size: int
    deadline: float
    future: asyncio.Future[Outcome]


@dataclass(slots=True)
class SinkStats:
    """Counters a person (or a test) can read without scraping Prometheus."""

    requests: int = 0
    delivered: int = 0
    rejected: int = 0
    released: int = 0
    retried: int = 0
    dropped: int = 0
    recent_delays: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=_RECENT_DELAYS))


def _reason_code(error: str, fallback: str) -> str:
    """The label-safe reason at the start of ``error`` ("throttled: HTTP 429" -> throttled)."""
    code = error.split(":", 1)[0].strip()
    if code and len(code) <= 40 and code.replace("_", "").isalnum():
        return code
    return fallback


class SinkRunner:
    def __init__(self, sink: Sink, config: SinkBase, *, ledger: DeliveryLedger | None,
                 store: StateStore | None = None) -> None:
        self.sink = sink
        self.config = config
        self.name = config.name
        self.required = config.required
        self.ledger = ledger if config.ledger else None
        self.stats = SinkStats()
        self.stopped: str | None = None
        self._batching = config.batching
        self._retry = config.retry
        self._pending: list[_Ticket] = []
        self._pending_bytes = 0
        self._linger: asyncio.TimerHandle | asyncio.Handle | None = None
        self._inflight: dict[str, asyncio.Future[Outcome]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(config.concurrency)
        self._depth = 0
        self._max_queue = max(1000, config.batching.max_items * config.concurrency * 10)
        self._closing = False
        self._bucket: TokenBucket | None = None
        self._shared: SharedTokenBucket | None = None
        limiter = f"sink:{self.name}"
        if config.rate_limit.rate > 0:
            if config.rate_limit.shared and store is not None:
                self._shared = SharedTokenBucket(store, limiter, config.rate_limit.rate,
                                                 config.rate_limit.burst)
            else:
                self._bucket = TokenBucket(config.rate_limit.rate, config.rate_limit.burst,
                                           name=limiter)
        # Bound metric children once.
        self._m_sent = metrics.SINK_SENT.labels(sink=self.name)
        self._m_retried = metrics.SINK_RETRIED.labels(sink=self.name)
        self._m_batch = metrics.SINK_BATCH_SIZE.labels(sink=self.name)
        self._m_bytes = metrics.SINK_BATCH_BYTES.labels(sink=self.name)
        self._m_latency = metrics.SINK_LATENCY.labels(sink=self.name)
        self._m_depth = metrics.SINK_QUEUE_DEPTH.labels(sink=self.name)
        self._m_waits = metrics.RATE_LIMIT_WAITS.labels(limiter=limiter)
        self._m_failed: dict[str, Counter] = {}
        self._m_rejected: dict[str, Counter] = {}

    # --- metrics helpers ------------------------------------------------------------------
    def _failed(self, reason: str) -> Counter:
        child = self._m_failed.get(reason)
        if child is None:
            child = self._m_failed[reason] = metrics.SINK_FAILED.labels(sink=self.name,
                                                                        reason=reason)
        return child

    def _rejected_metric(self, reason: str) -> Counter:
        child = self._m_rejected.get(reason)
        if child is None:
            child = self._m_rejected[reason] = metrics.SINK_REJECTED.labels(sink=self.name,
                                                                            reason=reason)
        return child

    def _set_depth(self, delta: int) -> None:
        self._depth += delta
        self._m_depth.set(self._depth)

    @property
    def depth(self) -> int:
        """Items accepted by the runner and not yet settled."""
        return self._depth

    # --- intake -----------------------------------------------------------------------------
    async def submit(self, item: Item) -> asyncio.Future[Outcome]:
        """Queue ``item`` for this sink; the future resolves with its ``Outcome``."""
        loop = asyncio.get_running_loop()
        key = item_id(item)
        shared = self._inflight.get(key)
        if shared is not None:
            return shared  # the same revision is already on its way (a redelivery)
        future: asyncio.Future[Outcome] = loop.create_future()
        # Registered before the first await, so a concurrent duplicate shares this future.
        self._inflight[key] = future
        future.add_done_callback(functools.partial(self._forget, key))
        if self.stopped is not None:
            await self._reject_stopped([item])
            future.set_result(Outcome.REJECTED)
            return future
        if not self.required and self._depth >= self._max_queue:
            # A best-effort sink that cannot keep up sheds load instead of eating memory.
            self._failed("queue_full").inc()
            metrics.discarded("sink_queue_full").inc()
            self.stats.dropped += 1
            future.set_result(Outcome.RELEASED)
            return future
        size = len(encoded(item))
        ticket = _Ticket(item, key, size, time.monotonic() + self._retry.budget, future)
        self._pending.append(ticket)
        self._pending_bytes += size
        self._set_depth(1)
        if (len(self._pending) >= self._batching.max_items
                or self._pending_bytes >= self._batching.max_bytes or self._closing):
            self._flush()
        elif self._linger is None:
            if self._batching.linger <= 0:
                # Items submitted in the same loop iteration still share a batch.
                self._linger = loop.call_soon(self._flush)
            else:
                self._linger = loop.call_later(self._batching.linger, self._flush)
        return future

    def _forget(self, key: str, _future: asyncio.Future[Outcome]) -> None:
        self._inflight.pop(key, None)

    def _flush(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if not self._pending:
            return
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- delivery ---------------------------------------------------------------------------
    async def _acquire_rate(self) -> None:
        if self._bucket is not None:
            await self._bucket.acquire(1)
            return
        if self._shared is not None:
            counted = False
            poll = max(_SHARED_BUCKET_MIN_POLL, 1.0 / self._shared.rate)
            while not await self._shared.try_acquire(1):
                if not counted:
                    self._m_waits.inc()
                    counted = True
                await asyncio.sleep(poll)

    async def _already_delivered(self, batch: list[_Ticket]) -> list[_Ticket]:
        """Settle the tickets this sink accepted before (a redelivery); return the rest."""
        if self.ledger is None:
            return batch
        try:
            seen = await self.ledger.delivered_many(self.name, [t.item for t in batch])
        except Exception as exc:
            # The ledger only prevents duplicates; without it, send (at-least-once).
            log.warning("delivery ledger read failed; sending anyway",
                        extra={"sink": self.name, "items": len(batch), "error": repr(exc)})
            return batch
        if not seen:
            return batch
        self._settle([t for t in batch if t.key in seen], Outcome.ALREADY_DELIVERED)
        return [t for t in batch if t.key not in seen]

    async def _run_batch(self, batch: list[_Ticket]) -> None:
        try:
            batch = await self._already_delivered(batch)
            if not batch:
                return
            async with self._sem:
                await self._deliver(batch)
        except asyncio.CancelledError:
            self._settle(batch, Outcome.RELEASED)
            raise
        except Exception as exc:  # a bug here must not strand the futures
            log.exception("sink delivery failed unexpectedly",
                          extra={"sink": self.name, "error": repr(exc)})
            self._failed("internal").inc()
            self._settle(batch, Outcome.RELEASED)

    def _settle(self, tickets: Sequence[_Ticket], outcome: Outcome) -> None:
        """Resolve the tickets not resolved yet (only the runner resolves its futures)."""
        settled = 0
        for t in tickets:
            if not t.future.done():
                t.future.set_result(outcome)
                settled += 1
        if settled:
            self._set_depth(-settled)
            if outcome is Outcome.RELEASED:
                self.stats.released += settled

    async def _deliver(self, batch: list[_Ticket]) -> None:
        remaining = batch
        attempt = 0
        while remaining:
            if self.stopped is not None:
                await self._reject_stopped([t.item for t in remaining])
                self._settle(remaining, Outcome.REJECTED)
                return
            attempt += 1
            await self._acquire_rate()
            result = await self._send(remaining)
            remaining = await self._apply(remaining, result)
            if not remaining:
                return
            # Transient failure for ``remaining``: back off or release.
            reason = _reason_code(result.error, reasons.SERVER_ERROR)
            self._failed(reason).inc()
            delay = retry_policy.backoff_delay(attempt, base=self._retry.base_delay,
                                               cap=self._retry.max_delay)
            if result.retry_after is not None:
                delay = max(delay, result.retry_after)
            now = time.monotonic()
            give_up = attempt >= self._retry.max_attempts or self._closing
            expired = [t for t in remaining if give_up or now + delay > t.deadline]
            if expired:
                self._release(expired, reason, attempt)
                remaining = [t for t in remaining if not (give_up or now + delay > t.deadline)]
                if not remaining:
                    return
            self._m_retried.inc(len(remaining))
            self.stats.retried += len(remaining)
            self.stats.recent_delays.append(delay)
            log.info("sink asked for a retry", extra={
                "sink": self.name, "items": len(remaining), "attempt": attempt,
                "delay": round(delay, 3), "reason": reason, "error": result.error[:300]})
            await retry_policy.sleep(delay)

    async def _send(self, tickets: Sequence[_Ticket]) -> SendResult:
        items = [t.item for t in tickets]
        self._m_batch.observe(len(items))
        self._m_bytes.observe(sum(t.size for t in tickets))
        self.stats.requests += 1
        started = time.perf_counter()
        try:
            return await self.sink.send(items)
        except RiposteError as exc:
            if exc.retriable:
                return SendResult.all_retry(items, f"{exc.reason}: {exc.message}")
            # The sink says it cannot work at all (closed, misconfigured, refused).
            self._stop(f"{exc.reason}: {exc.message}")
            return SendResult.all_rejected(items, exc.reason, exc.message)
        except Exception as exc:
            return SendResult.all_retry(items, f"{type(exc).__name__}: {exc}")
        finally:
            self._m_latency.observe(time.perf_counter() - started)

    async def _apply(self, tickets: Sequence[_Ticket], result: SendResult) -> list[_Ticket]:
        """Settle delivered and rejected tickets; return those to retry."""
        by_obj = {id(t.item): t for t in tickets}
        by_key: dict[str, _Ticket] | None = None

        def find(item: Item) -> _Ticket | None:
            nonlocal by_key
            ticket = by_obj.get(id(item))
            if ticket is None:
                if by_key is None:
                    by_key = {t.key: t for t in tickets}
                ticket = by_key.get(item_id(item))
            return ticket

        settled: set[int] = set()
        delivered = [t for t in (find(i) for i in result.delivered) if t is not None]
        if delivered:
            if self.ledger is not None:
                await self.ledger.record_delivered(self.name, [t.item for t in delivered],
                                                   ttl=self.config.ledger_ttl)
            self._m_sent.inc(len(delivered))
            self.stats.delivered += len(delivered)
            settled.update(id(t) for t in delivered)
            self._settle(delivered, Outcome.DELIVERED)
        if result.rejected:
            pairs = [(t, r) for t, r in ((find(r.item), r) for r in result.rejected)
                     if t is not None]
            await self._reject(pairs)
            settled.update(id(t) for t, _ in pairs)
        # Anything the sink did not account for is retried: never lost, at worst resent.
        return [t for t in tickets if id(t) not in settled]

    async def _reject(self, pairs: Sequence[tuple[_Ticket, Rejected]]) -> None:
        by_reason: dict[str, list[tuple[_Ticket, Rejected]]] = {}
        for ticket, rej in pairs:
            by_reason.setdefault(rej.reason, []).append((ticket, rej))
        for reason, group in by_reason.items():
            self._rejected_metric(reason).inc(len(group))
            first_ticket, first = group[0]
            if reason in reasons.STOP_REASONS and self.stopped is None:
                self._stop(f"{reason}: {first.response}")
            # One line per reason and request, not per item: a refused batch of 500
            # items is one event for whoever reads the log.
            log.warning("sink rejected items; they are dead-lettered", extra={
                "sink": self.name, "items": len(group), "reason": reason,
                "item_id": first_ticket.key, "response": first.response[:300]})
        if self.ledger is not None:
            await self.ledger.record_rejected(self.name, [r for _, r in pairs])
        self.stats.rejected += len(pairs)
        self._settle([t for t, _ in pairs], Outcome.REJECTED)

    async def _reject_stopped(self, items: Sequence[Item]) -> None:
        reason = reasons.SINK_STOPPED
        self._rejected_metric(reason).inc(len(items))
        self.stats.rejected += len(items)
        if self.ledger is not None:
            await self.ledger.record_rejected(
                self.name, [Rejected(i, reason, self.stopped or "") for i in items])

    def _release(self, tickets: Sequence[_Ticket], reason: str, attempts: int) -> None:
        self._failed("released").inc(len(tickets))
        log.warning("sink did not accept items within the retry budget; releasing them",
                    extra={"sink": self.name, "items": len(tickets), "attempts": attempts,
                           "reason": reason, "required": self.required})
        self._settle(tickets, Outcome.RELEASED)

    def _stop(self, why: str) -> None:
        self.stopped = why
        self._failed("stopped").inc()
        log.error("sink stopped: the intake refused our credentials or configuration; "
                  "fix the sink's settings and restart. Items routed to it are dead-lettered",
                  extra={"sink": self.name, "why": why[:300]})

    # --- lifecycle --------------------------------------------------------------------------
    async def healthcheck(self) -> None:
        await self.sink.healthcheck()

    async def drain(self, deadline: float) -> bool:
        """Send what is pending and wait up to ``deadline`` seconds; True if all settled."""
        self._closing = True
        self._flush()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                return False
        return True

    async def aclose(self) -> None:
        try:
            await self.sink.aclose()
        except Exception as exc:
            log.warning("sink close failed", extra={"sink": self.name, "error": repr(exc)})
