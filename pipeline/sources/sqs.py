"""The SQS source: long-pollers, a visibility heartbeat, batched deletes, dead-lettering.

Delivery is at least once and a message is deleted only after it is settled
with ``ack``. The pieces, each a small task:

* **pollers** (``config.pollers`` of them) take slots from the shared
  ``InFlightBudget`` *before* each ``ReceiveMessage`` (20 s long poll, up to 10
  messages) and give back what the receive did not use, so a slow chain stops
  the receiving instead of piling messages up in memory;
* a **heartbeat** extends the visibility of every message still in flight
  (``ChangeMessageVisibilityBatch``) well before it would expire, so a slow
  message is never handed to a second consumer while it is being worked on. If
  the same message is nevertheless received again while this process still holds
  it, the newer receipt handle is kept and the copy is not processed twice;
* a **deleter** batches acknowledgements into ``DeleteMessageBatch`` calls (10
  per call, after ``delete_batch_linger``), retrying failed entries once.

Failures: ``retry`` makes the message visible again after a backoff that grows
with its receive count (``ChangeMessageVisibility``) until ``max_receive_count``,
then it is dead-lettered. ``dead_letter`` sends the original body to
``dead_letter_queue_url`` with the reason as message attributes
(``riposte-reason``, ``riposte-detail``, ``riposte-source-message-id``,
``riposte-receive-count``) and deletes the original; without that URL the message
is made visible at once and left to the queue's redrive policy, which moves it
after the queue's own ``maxReceiveCount``.

Shutdown: ``stop()`` cancels the long polls at once; ``aclose()`` flushes the
pending deletes and makes every message that was never settled visible again
(timeout 0) so another worker picks it up without waiting out its timeout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline import metrics
from pipeline.aws import AwsClients
from pipeline.config import SqsSourceConfig
from pipeline.context import RuntimeContext
from pipeline.retry import backoff_delay
from pipeline.sources.base import InFlightBudget, Message, Outcome, OutcomeKind

log = logging.getLogger(__name__)

# SQS limits.
_BATCH = 10
_MAX_VISIBILITY = 43_200
_MAX_MESSAGE_ATTRIBUTES = 10
# Dead-letter attributes: long enough to diagnose, short enough for any body size.
DETAIL_CHARS = 1024
REASON_CHARS = 256
# Receive errors back off up to this long; the poller itself never gives up.
_RECEIVE_BACKOFF_BASE = 1.0
_RECEIVE_BACKOFF_CAP = 20.0
# Deletes waiting beyond this make ``settle`` wait for a flush (backpressure).
_MAX_PENDING_DELETES = 1000
_DELETE_CONCURRENCY = 8

ATTR_REASON = "riposte-reason"
ATTR_DETAIL = "riposte-detail"
ATTR_SOURCE_MESSAGE_ID = "riposte-source-message-id"
ATTR_RECEIVE_COUNT = "riposte-receive-count"


@dataclass(slots=True, eq=False)
class _InFlight:
    """A received, unsettled message and what is needed to act on it in SQS."""

    message: Message
    receipt: str
    deadline: float  # monotonic time its visibility timeout runs out
    message_attributes: dict[str, Any]
    # Set while a heartbeat call covering this message is under way.
    extending: asyncio.Future[None] | None = None


def _chunks(items: Sequence[_InFlight], size: int = _BATCH) -> list[Sequence[_InFlight]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class SqsSource:
    """One SQS queue as a ``Source`` (see the module docstring for the lifecycle)."""

    def __init__(self, config: SqsSourceConfig, aws: AwsClients, budget: InFlightBudget
                 ) -> None:
        self.config = config
        self.name = config.name
        self.aws = aws
        self.budget = budget
        self.queue_url = config.queue_url
        self._visibility = config.visibility_timeout
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._inflight: dict[str, _InFlight] = {}
        self._pending_deletes: list[_InFlight] = []
        self._delete_wake = asyncio.Event()
        self._delete_full = asyncio.Event()
        self._delete_done = asyncio.Event()
        self._delete_slots = asyncio.Semaphore(_DELETE_CONCURRENCY)
        self._stopping = asyncio.Event()
        self._closing = False
        self._closed = False
        self._started = False
        self._pollers: list[asyncio.Task[None]] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._deleter: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        # Bound metric children (never a label lookup per message).
        self._m_received = metrics.RECEIVED.labels(source=self.name)
        self._m_bytes = metrics.RECEIVED_BYTES.labels(source=self.name)
        self._m_age = metrics.SQS_MESSAGE_AGE.labels(source=self.name)
        self._m_extended = metrics.VISIBILITY_EXTENSIONS.labels(source=self.name)
        self._m_acks = {result: metrics.ACKS.labels(source=self.name, result=result)
                        for result in ("deleted", "retried", "failed")}
        self._m_dead: dict[str, Any] = {}
        self._m_redelivered = metrics.discarded("sqs_redelivered_while_in_flight")

    # --- introspection (tests, /readyz) -------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Messages received and not yet settled (including those not yet handed out)."""
        return len(self._inflight)

    @property
    def pending_deletes(self) -> int:
        return len(self._pending_deletes)

    async def _client(self) -> Any:
        return await self.aws.client("sqs", region=self.config.region)

    # --- receiving ----------------------------------------------------------------------------
    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        if self._stopping.is_set():
            self._queue.put_nowait(None)
            return
        self._pollers = [asyncio.create_task(self._poll(i), name=f"sqs-poll:{self.name}:{i}")
                         for i in range(self.config.pollers)]
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(),
                                              name=f"sqs-heartbeat:{self.name}")
        self._deleter = asyncio.create_task(self._delete_loop(), name=f"sqs-delete:{self.name}")
        self._spawn(self._check_redrive())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def messages(self) -> AsyncIterator[Message]:
        self._start()
        while True:
            message = await self._queue.get()
            if message is None:
                self._queue.put_nowait(None)  # later iterators end too
                return
            yield message

    async def _poll(self, index: int) -> None:
        failures = 0
        cfg = self.config
        while not self._stopping.is_set():
            wanted = await self.budget.acquire(cfg.max_messages)
            try:
                client = await self._client()
                response = await client.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=wanted,
                    WaitTimeSeconds=cfg.wait_time_seconds,
                    VisibilityTimeout=self._visibility,
                    MessageSystemAttributeNames=["All"],
                    MessageAttributeNames=["All"],
                )
            except asyncio.CancelledError:
                self.budget.release(wanted)
                raise
            except Exception as exc:
                self.budget.release(wanted)
                failures += 1
                delay = backoff_delay(failures, base=_RECEIVE_BACKOFF_BASE,
                                      cap=_RECEIVE_BACKOFF_CAP)
                log.warning("SQS receive failed; backing off", extra={
                    "source": self.name, "poller": index, "error": f"{type(exc).__name__}: "
                    f"{exc}"[:500], "failures": failures, "delay": round(delay, 2)})
                # A real sleep even under instant_retries(): a poller must never spin.
                await asyncio.sleep(delay)
                continue
            failures = 0
            received = response.get("Messages") or []
            self.budget.release(wanted - len(received))
            if received:
                self._accept(received)

    def _accept(self, received: list[dict[str, Any]]) -> None:
        now = time.time()
        deadline = time.monotonic() + self._visibility
        for raw in received:
            message_id: str = raw["MessageId"]
            receipt: str = raw["ReceiptHandle"]
            attrs: dict[str, str] = raw.get("Attributes") or {}
            count = int(attrs.get("ApproximateReceiveCount", "1"))
            held = self._inflight.get(message_id)
            if held is not None:
                # Its visibility lapsed while we still hold it: keep the newest handle
                # (older ones may no longer delete it) and do not process it twice.
                held.receipt = receipt
                held.deadline = deadline
                held.message.receive_count = count
                held.message.handle = receipt
                self.budget.release(1)
                self._m_redelivered.inc()
                log.warning("message redelivered while still in flight; not processed twice",
                            extra={"source": self.name, "message_id": message_id,
                                   "receive_count": count})
                continue
            body = str(raw.get("Body", "")).encode("utf-8")
            sent_ms = attrs.get("SentTimestamp")
            sent_at = int(sent_ms) / 1000.0 if sent_ms else None
            message = Message(id=message_id, body=body, source=self.name, received_at=now,
                              sent_at=sent_at, attributes=attrs, receive_count=count,
                              handle=receipt, partition=attrs.get("MessageGroupId"))
            self._inflight[message_id] = _InFlight(
                message, receipt, deadline, raw.get("MessageAttributes") or {})
            self._m_received.inc()
            self._m_bytes.inc(len(body))
            if sent_at is not None:
                self._m_age.observe(max(0.0, now - sent_at))
            self._queue.put_nowait(message)

    async def _check_redrive(self) -> None:
        """Warn once when poison messages would have nowhere to go."""
        if self.config.dead_letter_queue_url:
            return
        try:
            client = await self._client()
            attrs = await client.get_queue_attributes(QueueUrl=self.queue_url,
                                                      AttributeNames=["RedrivePolicy"])
        except Exception as exc:
            log.info("could not read the queue's redrive policy",
                     extra={"source": self.name, "error": str(exc)[:300]})
            return
        if "RedrivePolicy" not in (attrs.get("Attributes") or {}):
            log.warning("no dead_letter_queue_url and no redrive policy on the queue: poison "
                        "messages will be redelivered until they expire",
                        extra={"source": self.name, "queue_url": self.queue_url})

    # --- heartbeat ----------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        extend_after = self._visibility * self.config.heartbeat_fraction
        tick = max(0.05, min(extend_after / 4, 5.0))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            # Due: last received or extended at least ``extend_after`` seconds ago.
            due = [t for t in self._inflight.values()
                   if t.extending is None and t.deadline - now <= self._visibility - extend_after]
            if due:
                await asyncio.gather(*(self._extend(chunk) for chunk in _chunks(due)))

    async def _extend(self, chunk: Sequence[_InFlight]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for t in chunk:
            t.extending = done
        started = time.monotonic()
        try:
            client = await self._client()
            response = await client.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": t.receipt,
                          "VisibilityTimeout": self._visibility} for i, t in enumerate(chunk)])
            failed = {int(f["Id"]): f for f in response.get("Failed") or []}
            for i, t in enumerate(chunk):
                if i in failed:
                    log.warning("could not extend a message's visibility", extra={
                        "source": self.name, "message_id": t.message.id,
                        "code": failed[i].get("Code"), "error": failed[i].get("Message")})
                else:
                    t.deadline = started + self._visibility
            self._m_extended.inc(len(chunk) - len(failed))
        except Exception as exc:
            # The next tick tries again; the deadline was not moved.
            log.warning("visibility heartbeat failed", extra={
                "source": self.name, "count": len(chunk), "error": str(exc)[:500]})
        finally:
            for t in chunk:
                t.extending = None
            done.set_result(None)

    # --- settling -----------------------------------------------------------------------------
    async def settle(self, message: Message, outcome: Outcome) -> None:
        held = self._inflight.pop(message.id, None)
        if held is None or held.message is not message:
            log.warning("settle of a message that is not in flight (already settled or "
                        "released)", extra={"source": self.name, "message_id": message.id})
            if held is not None:
                self._inflight[message.id] = held
            return
        self.budget.release(1)
        if held.extending is not None:
            # Let a heartbeat call under way land first, so it cannot undo what we set.
            await asyncio.shield(held.extending)
        if outcome.kind is OutcomeKind.ACK:
            await self._enqueue_delete(held)
        elif outcome.kind is OutcomeKind.RETRY:
            if held.message.receive_count >= self.config.max_receive_count:
                reason = f"retries_exhausted:{outcome.reason or 'unknown'}"
                await self._dead_letter(held, reason, outcome.detail)
            else:
                await self._retry(held, outcome)
        else:
            await self._dead_letter(held, outcome.reason or "unknown", outcome.detail)

    async def _retry(self, held: _InFlight, outcome: Outcome) -> None:
        cfg = self.config
        delay = outcome.delay or backoff_delay(held.message.receive_count,
                                               base=cfg.retry_base_delay, cap=cfg.retry_max_delay)
        seconds = max(0, min(_MAX_VISIBILITY, math.ceil(min(delay, cfg.retry_max_delay))))
        await self._set_visibility(held, seconds, "retry")

    async def _set_visibility(self, held: _InFlight, seconds: int, why: str) -> None:
        try:
            client = await self._client()
            await client.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=held.receipt, VisibilityTimeout=seconds)
        except Exception as exc:
            log.warning("could not change a message's visibility; it reappears when its "
                        "timeout runs out", extra={"source": self.name, "why": why,
                                                   "message_id": held.message.id,
                                                   "error": str(exc)[:500]})

    def _dead_counter(self, reason: str) -> Any:
        counter = self._m_dead.get(reason)
        if counter is None:
            counter = metrics.DEAD_LETTERED.labels(source=self.name, reason=reason)
            self._m_dead[reason] = counter
        return counter

    async def _dead_letter(self, held: _InFlight, reason: str, detail: str) -> None:
        message = held.message
        dlq = self.config.dead_letter_queue_url
        if not dlq:
            log.error("poison message made visible again for the queue's redrive policy to "
                      "dead-letter", extra={"source": self.name, "message_id": message.id,
                                             "reason": reason, "detail": detail[:300],
                                             "receive_count": message.receive_count})
            self._dead_counter(reason).inc()
            await self._set_visibility(held, 0, "redrive")
            return
        params: dict[str, Any] = {
            "QueueUrl": dlq,
            "MessageBody": message.body.decode("utf-8", "replace"),
            "MessageAttributes": self._dead_letter_attributes(held, reason, detail),
        }
        if dlq.endswith(".fifo"):
            params["MessageGroupId"] = message.partition or "riposte-dead-letter"
            params["MessageDeduplicationId"] = message.id[:128]
        try:
            client = await self._client()
            await client.send_message(**params)
        except Exception as exc:
            log.error("could not send to the dead-letter queue; released for redelivery",
                      extra={"source": self.name, "message_id": message.id, "reason": reason,
                             "error": str(exc)[:500]})
            await self._set_visibility(held, min(_MAX_VISIBILITY, self._visibility), "dlq-failed")
            return
        self._dead_counter(reason).inc()
        log.warning("message dead-lettered", extra={
            "source": self.name, "message_id": message.id, "reason": reason,
            "receive_count": message.receive_count})
        await self._enqueue_delete(held)

    def _dead_letter_attributes(self, held: _InFlight, reason: str, detail: str
                                ) -> dict[str, dict[str, str]]:
        ours: dict[str, dict[str, str]] = {
            ATTR_REASON: {"DataType": "String", "StringValue": reason[:REASON_CHARS]},
            ATTR_SOURCE_MESSAGE_ID: {"DataType": "String", "StringValue": held.message.id},
            ATTR_RECEIVE_COUNT: {"DataType": "Number",
                                 "StringValue": str(held.message.receive_count)},
        }
        if detail:
            ours[ATTR_DETAIL] = {"DataType": "String", "StringValue": detail[:DETAIL_CHARS]}
        # Keep the producer's own attributes too, as many as SQS allows beside ours.
        room = _MAX_MESSAGE_ATTRIBUTES - len(ours)
        for name, value in held.message_attributes.items():
            if room <= 0:
                break
            if name.startswith("riposte-") or not isinstance(value, dict):
                continue
            kept = {k: v for k, v in value.items()
                    if k in ("DataType", "StringValue", "BinaryValue")}
            if "DataType" in kept:
                ours[name] = kept
                room -= 1
        return ours

    # --- deleting -----------------------------------------------------------------------------
    async def _enqueue_delete(self, held: _InFlight) -> None:
        while (len(self._pending_deletes) >= _MAX_PENDING_DELETES and self._deleter is not None
               and not self._deleter.done()):
            self._delete_done.clear()
            self._delete_full.set()
            await self._delete_done.wait()
        self._pending_deletes.append(held)
        self._delete_wake.set()
        if len(self._pending_deletes) >= _BATCH:
            self._delete_full.set()
        if self._deleter is None or self._deleter.done():
            # Settled after close (or before start): delete right away.
            await self._flush_deletes()

    async def _delete_loop(self) -> None:
        linger = self.config.delete_batch_linger
        while True:
            await self._delete_wake.wait()
            lingered = linger <= 0
            if not lingered and len(self._pending_deletes) < _BATCH and not self._closing:
                try:
                    async with asyncio.timeout(linger):
                        await self._delete_full.wait()
                except TimeoutError:
                    lingered = True
            self._delete_wake.clear()
            self._delete_full.clear()
            # Only whole batches of 10 go out until the linger is up: a remainder sent at
            # once would make two calls where one will do (a delete costs as much CPU as
            # a receive). The remainder waits for the next ten, or its own linger.
            await self._flush_deletes(whole_batches_only=not (lingered or self._closing))
            if self._pending_deletes:
                self._delete_wake.set()
            if self._closing and not self._pending_deletes:
                return

    async def _flush_deletes(self, *, whole_batches_only: bool = False) -> None:
        pending = self._pending_deletes
        cut = len(pending) - len(pending) % _BATCH if whole_batches_only else len(pending)
        pending, self._pending_deletes = pending[:cut], pending[cut:]
        if pending:
            await asyncio.gather(*(self._delete_batch(chunk) for chunk in _chunks(pending)))
        self._delete_done.set()

    async def _delete_batch(self, chunk: Sequence[_InFlight], attempt: int = 1) -> None:
        failed_entries: list[_InFlight]
        async with self._delete_slots:
            try:
                client = await self._client()
                response = await client.delete_message_batch(
                    QueueUrl=self.queue_url,
                    Entries=[{"Id": str(i), "ReceiptHandle": t.receipt}
                             for i, t in enumerate(chunk)])
            except Exception as exc:
                failed_entries = list(chunk)
                codes = [f"{type(exc).__name__}: {exc}"[:500]]
            else:
                failures = response.get("Failed") or []
                failed_entries = [chunk[int(f["Id"])] for f in failures]
                codes = [str(f.get("Code")) for f in failures]
                self._m_acks["deleted"].inc(len(chunk) - len(failed_entries))
        if not failed_entries:
            return
        if attempt == 1:
            self._m_acks["retried"].inc(len(failed_entries))
            await self._delete_batch(failed_entries, attempt=2)
            return
        self._m_acks["failed"].inc(len(failed_entries))
        log.warning("could not delete settled messages; they will be delivered again",
                    extra={"source": self.name, "count": len(failed_entries),
                           "message_ids": [t.message.id for t in failed_entries][:10],
                           "errors": codes[:3]})

    # --- shutdown -----------------------------------------------------------------------------
    async def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        for poller in self._pollers:
            poller.cancel()
        await asyncio.gather(*self._pollers, return_exceptions=True)
        if self._started:
            self._queue.put_nowait(None)

    async def aclose(self) -> None:
        if self._closed:
            return
        await self.stop()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        self._closing = True
        if self._deleter is not None:
            self._delete_wake.set()
            self._delete_full.set()
            await asyncio.gather(self._deleter, return_exceptions=True)
        await self._flush_deletes()
        self._closed = True
        for task in list(self._background):
            task.cancel()
        unsettled = list(self._inflight.values())
        self._inflight.clear()
        self.budget.release(len(unsettled))
        if unsettled:
            await asyncio.gather(*(self._release(chunk) for chunk in _chunks(unsettled)))
            log.info("released unsettled messages for redelivery",
                     extra={"source": self.name, "count": len(unsettled)})

    async def _release(self, chunk: Sequence[_InFlight]) -> None:
        try:
            client = await self._client()
            response = await client.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": t.receipt, "VisibilityTimeout": 0}
                         for i, t in enumerate(chunk)])
            failed = response.get("Failed") or []
        except Exception as exc:
            failed = [{"Message": str(exc)[:300]}]
        if failed:
            log.warning("could not release some unsettled messages; they reappear when their "
                        "visibility timeout runs out",
                        extra={"source": self.name, "failed": failed[:3]})


def build(config: SqsSourceConfig, ctx: RuntimeContext, budget: InFlightBudget) -> SqsSource:
    return SqsSource(config, ctx.aws, budget)
