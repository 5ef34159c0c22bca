"""The Kinesis source: one reader per shard, checkpoints over the finished prefix.

Shards are discovered with ``ListShards`` (paginated) and re-discovered every
``shard_discovery_interval`` and whenever a shard ends, so resharding is picked
up while running. A shard is read only after every parent it has is finished:
its reader reached the end *and* every record it handed out is settled and
checkpointed. The parent then gets a ``SHARD_END`` checkpoint, so a restart
neither reads it again nor holds its children back. This is the order Kinesis
guarantees per partition key across a reshard, and what the KCL does.

Each reader calls ``GetRecords`` at most ``polls_per_second`` times a second
(AWS allows 5 per shard, shared by every consumer of the stream), sleeps
``idle_poll_interval`` when a call returns nothing, backs off on throttling and
re-fetches its iterator after ``ExpiredIteratorException`` from the last record
it handed out. A reader takes one slot of the shared ``InFlightBudget`` per
record before handing it out, so when the chain falls behind the readers stop
polling instead of buffering.

Kinesis cannot redeliver one record, so a ``RETRY`` outcome is handled here: the
same ``Message`` is handed out again after a backoff, up to ``max_attempts``;
then (or at once for ``DEAD_LETTER``) the whole record is written to the state
store under ``deadletter:kinesis:<stream>:<shard>:<seq>`` and counts as finished.
Nothing is ever skipped silently: a record that cannot be dead-lettered stays
unfinished, so the checkpoint does not pass it and a restart reads it again.
Dead letters expire after ``dead_letter_retention_days`` (the store's TTL), so a
poison flood cannot grow the store without bound; ``riposte dead-letters`` lists
them and puts them back on their stream (``pipeline.dead_letters``).

Which shards this process reads is decided by a ``ShardOwnership``: every shard
without leases, or the shards this worker holds leases on in a fleet. (The
in-flight gauge is kept by the runner; this source only takes and gives back
budget slots.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from pipeline import metrics, retry
from pipeline.aws import aws_error_code
from pipeline.config import KinesisSourceConfig
from pipeline.context import RuntimeContext
from pipeline.errors import ConfigError
from pipeline.sources.base import InFlightBudget, Message, Outcome, OutcomeKind
from pipeline.sources.checkpoints import (
    SHARD_END,
    Checkpoint,
    CheckpointStore,
    ShardTracker,
)
from pipeline.sources.leases import LeaseManager

log = logging.getLogger(__name__)

_THROTTLED = frozenset({"ProvisionedThroughputExceededException", "LimitExceededException",
                        "ThrottlingException", "KMSThrottlingException"})
_DRAIN_POLL = 0.05
_MIN_FLUSH_PERIOD = 0.05
_DEAD_LETTER_ATTEMPTS = 5
_STOP_DISCOVERY_WAIT = 5.0
_SECONDS_PER_DAY = 86_400.0
DEADLETTER_PREFIX = "deadletter:kinesis:"


def deadletter_key(stream: str, shard_id: str, sequence: str) -> str:
    return f"{DEADLETTER_PREFIX}{stream}:{shard_id}:{sequence}"


def deadletter_prefix(stream: str | None = None) -> str:
    """The key prefix of one stream's dead letters (every stream's when None).

    The trailing ``:`` matters: stream ``a`` must not match the letters of stream ``a-b``.
    """
    return DEADLETTER_PREFIX if stream is None else f"{DEADLETTER_PREFIX}{stream}:"


class ShardOwnership(Protocol):
    """Which of the readable shards this process reads (leases in a fleet)."""

    # How often ``acquire`` must be called to keep what is held (lease renewal); None = no need.
    renew_interval: float | None

    async def acquire(self, eligible: Collection[str]) -> frozenset[str]:
        """Of ``eligible`` (readable now, or being read here), the shards to read."""
        ...

    async def release(self, shard_id: str) -> None:
        """The shard is finished (or this worker stops reading it): let it go."""
        ...

    async def aclose(self) -> None: ...


class AllShards:
    """One process reads every shard: the embedded default."""

    renew_interval: float | None = None

    async def acquire(self, eligible: Collection[str]) -> frozenset[str]:
        return frozenset(eligible)

    async def release(self, shard_id: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return None


def _parents(shard: Mapping[str, Any]) -> list[str]:
    return [p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p]


def _closed(shard: Mapping[str, Any]) -> bool:
    return bool(shard.get("SequenceNumberRange", {}).get("EndingSequenceNumber"))


class KinesisSource:
    """Reads one Kinesis stream; see the module docstring for the delivery guarantees."""

    def __init__(self, config: KinesisSourceConfig, ctx: RuntimeContext,
                 budget: InFlightBudget, *, ownership: ShardOwnership | None = None,
                 close_timeout: float = 1.0) -> None:
        if config.start == "AT_TIMESTAMP" and config.start_timestamp is None:
            raise ConfigError("start = AT_TIMESTAMP needs start_timestamp",
                              component=f"source:{config.name}")
        self.config = config
        self.ctx = ctx
        self.budget = budget
        self.name = config.name
        self.stream = config.stream_name
        self.worker_id = config.worker_id or f"{socket.gethostname()}:{os.getpid()}"
        if ownership is None:
            ownership = (LeaseManager(ctx.store, self.stream, self.worker_id,
                                      lease_duration=config.lease_duration, clock=ctx.clock)
                         if config.leases else AllShards())
        self.ownership: ShardOwnership = ownership
        self.checkpoints = CheckpointStore(ctx.store, self.stream, clock=ctx.clock,
                                           owner=self.worker_id)
        self.close_timeout = close_timeout
        self._client: Any = None
        self._shards: dict[str, Mapping[str, Any]] = {}
        self._trackers: dict[str, ShardTracker] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._finished: set[str] = set()
        self._polled: set[str] = set()  # shards whose reader has had a GetRecords answer
        self._flush_locks: dict[str, asyncio.Lock] = {}
        self._last_flush: dict[str, float] = {}
        self._retries: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._discover_task: asyncio.Task[None] | None = None
        self._out: asyncio.Queue[Message | None] = asyncio.Queue()
        self._outstanding = 0  # handed out (queued or with the chain) and not settled
        self._stopping = asyncio.Event()
        self._settled = asyncio.Event()
        self._wake = asyncio.Event()
        self._iterating = False
        self._discovery_failures = 0
        self._failure: ConfigError | None = None
        self._stopped = False
        self._closed = False
        # Bound metric children: label lookups happen here, not per record.
        self._m_received = metrics.RECEIVED.labels(source=self.name)
        self._m_bytes = metrics.RECEIVED_BYTES.labels(source=self.name)
        self._m_ack_ok = metrics.ACKS.labels(source=self.name, result="checkpoint")
        self._m_ack_failed = metrics.ACKS.labels(source=self.name, result="checkpoint_failed")
        self._m_behind: dict[str, Any] = {}
        self._m_checkpoint: dict[str, Any] = {}
        self._m_dead: dict[str, Any] = {}

    # --- Source protocol ------------------------------------------------------------------------
    async def messages(self) -> AsyncIterator[Message]:
        if self._iterating:
            raise RuntimeError(f"source {self.name}: messages() can be iterated only once")
        self._iterating = True
        if not self._stopping.is_set():
            self._client = await self.ctx.aws.client("kinesis", region=self.config.region)
            # Discovery runs in its own task, never in the caller's: cancelling the caller
            # must not cut a lease write short (see stop()).
            self._discover_task = asyncio.create_task(self._discover_loop(),
                                                      name=f"kinesis-discover:{self.name}")
            self._tasks.append(self._discover_task)
            self._tasks.append(asyncio.create_task(self._flush_loop(),
                                                   name=f"kinesis-flush:{self.name}"))
        while True:
            message = await self._out.get()
            if message is None:
                if self._failure is not None:
                    raise self._failure
                return
            yield message

    async def settle(self, message: Message, outcome: Outcome) -> None:
        shard_id, sequence = message.handle
        tracker = self._trackers.get(shard_id)
        if self._closed or tracker is None or not tracker.is_open(sequence):
            log.warning("settle for a kinesis record that is not in flight",
                        extra={"source": self.name, "shard": shard_id, "sequence": sequence,
                               "outcome": outcome.kind.value})
            return
        self._outstanding -= 1
        self._settled.set()
        if outcome.kind is OutcomeKind.ACK:
            await self._finish(tracker, sequence)
        elif outcome.kind is OutcomeKind.RETRY and message.receive_count < self.config.max_attempts:
            if self._stopping.is_set():
                # Not handed out again while shutting down: left unfinished, the checkpoint
                # stays before it and the next run reads it again.
                return
            self._schedule_retry(message, outcome)
        elif outcome.kind is OutcomeKind.RETRY:
            await self._dead_letter(tracker, message, outcome, cause="retries_exhausted")
        else:
            await self._dead_letter(tracker, message, outcome, cause="dead_letter")

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self._wake.set()
        # A discovery pass in progress finishes (it notices the stop before starting any
        # reader): cancelling it mid-write could leave a lease claimed in the store that
        # this worker never recorded, and so never releases on close.
        if self._discover_task is not None:
            await asyncio.wait({self._discover_task}, timeout=_STOP_DISCOVERY_WAIT)
        while True:
            tasks = [t for t in (*self._tasks, *self._readers.values(), *self._retries)
                     if not t.done()]
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    try:
                        await task
                    except Exception:
                        log.exception("kinesis task failed while stopping",
                                      extra={"source": self.name})
        self._retries.clear()
        self._out.put_nowait(None)
        log.info("kinesis source stopped", extra={"source": self.name,
                                                   "outstanding": self._outstanding})

    async def aclose(self) -> None:
        if self._closed:
            return
        await self.stop()
        # Save what is finished first, in case the caller's deadline cuts the wait short.
        for shard_id in list(self._trackers):
            await self._flush(shard_id)
        deadline = time.monotonic() + self.close_timeout
        while self._outstanding - self._out.qsize() > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), timeout=remaining)
        for shard_id in list(self._trackers):
            await self._flush(shard_id)
            tracker = self._trackers[shard_id]
            if tracker.reached_end and tracker.drained and shard_id not in self._finished:
                await self._mark_finished(shard_id)
        self._closed = True
        unsettled = sum(t.pending for t in self._trackers.values())
        if unsettled:
            # Never settled: the checkpoint stays before them and a restart reads them again.
            self.budget.release(unsettled)
            log.warning("kinesis source closed with unsettled records; they will be read again",
                        extra={"source": self.name, "unsettled": unsettled})
        await self.ownership.aclose()

    # --- discovery ------------------------------------------------------------------------------
    async def _discover_loop(self) -> None:
        interval = self.config.shard_discovery_interval
        if self.ownership.renew_interval is not None:
            interval = min(interval, self.ownership.renew_interval)
        first = True
        while not self._stopping.is_set():
            if not first:
                delay = interval
                if self._discovery_failures:
                    # After a failure, try again sooner than the regular interval.
                    delay = min(interval, retry.backoff_delay(self._discovery_failures,
                                                              base=1.0, cap=interval))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                if self._stopping.is_set():
                    return
            self._wake.clear()
            try:
                await self.discover()
                self._discovery_failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if first and aws_error_code(exc) == "ResourceNotFoundException":
                    # A stream that does not exist is a configuration error, found at start.
                    self._failure = ConfigError(f"kinesis stream {self.stream!r} not found: "
                                                f"{exc}", component=f"source:{self.name}")
                    self._out.put_nowait(None)
                    return
                self._discovery_failures += 1
                log.exception("kinesis shard discovery failed; trying again soon",
                              extra={"source": self.name, "stream": self.stream,
                                     "failures": self._discovery_failures})
            first = False

    async def _list_shards(self) -> list[Mapping[str, Any]]:
        shards: list[Mapping[str, Any]] = []
        token: str | None = None
        while True:
            # With NextToken, ListShards refuses StreamName.
            kwargs: dict[str, Any] = {"NextToken": token} if token else {
                "StreamName": self.stream}
            response = await self._client.list_shards(**kwargs)
            shards.extend(response.get("Shards", []))
            token = response.get("NextToken")
            if not token:
                return shards

    async def discover(self) -> None:
        """List shards, then start a reader for every shard that is readable and ours."""
        listed = await self._list_shards()
        self._shards = {s["ShardId"]: s for s in listed}
        stored = await self.checkpoints.all()
        self._finished.update(s for s, cp in stored.items() if cp.finished)
        eligible: list[str] = []
        for shard_id, shard in self._shards.items():
            if shard_id in self._finished:
                continue
            if shard_id in self._readers:
                eligible.append(shard_id)
                continue
            # A parent no longer listed has aged out of the stream's retention: nothing to wait for.
            if any(p in self._shards and p not in self._finished for p in _parents(shard)):
                continue
            eligible.append(shard_id)
        owned = await self.ownership.acquire(eligible)
        if self._stopping.is_set():
            return  # what was claimed is recorded, and released on close; nothing new starts
        for shard_id, task in list(self._readers.items()):
            if shard_id not in owned:
                log.info("kinesis shard no longer ours; stopping its reader",
                         extra={"source": self.name, "shard": shard_id})
                task.cancel()
        for shard_id in eligible:
            if shard_id in owned and shard_id not in self._readers:
                await self._start_reader(shard_id, stored)

    async def _start_reader(self, shard_id: str, stored: Mapping[str, Checkpoint]) -> None:
        if self._stopping.is_set():
            return
        shard = self._shards[shard_id]
        checkpoint = stored.get(shard_id)
        tracker = self._trackers.setdefault(shard_id, ShardTracker(shard_id))
        after = tracker.resume_after(checkpoint.position if checkpoint else None)
        start: dict[str, Any]
        if after is not None:
            start = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
                     "StartingSequenceNumber": after}
        else:
            parents = [stored.get(p) for p in _parents(shard)]
            consumed_parent = any(p is not None and not p.skipped for p in parents)
            if self.config.start == "LATEST" and not consumed_parent and _closed(shard):
                # A closed shard has no "latest" records; never reading it is what LATEST means.
                await self._mark_finished(shard_id, skipped=True)
                self._wake.set()
                return
            if self.config.start == "LATEST" and consumed_parent:
                # Children of a shard we read start at their beginning, or records are lost.
                start = {"ShardIteratorType": "TRIM_HORIZON"}
            elif self.config.start == "AT_TIMESTAMP":
                start = {"ShardIteratorType": "AT_TIMESTAMP",
                         "Timestamp": self.config.start_timestamp}
            else:
                start = {"ShardIteratorType": self.config.start}
        log.info("kinesis shard reader starting",
                 extra={"source": self.name, "shard": shard_id, "position": start})
        task = asyncio.create_task(self._read_shard(shard_id, tracker, start),
                                   name=f"kinesis-read:{self.name}:{shard_id}")
        self._readers[shard_id] = task
        task.add_done_callback(functools.partial(self._reader_done, shard_id))

    def _reader_done(self, shard_id: str, task: asyncio.Task[None]) -> None:
        if self._readers.get(shard_id) is task:
            del self._readers[shard_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("kinesis shard reader failed; it restarts at the next discovery",
                      exc_info=task.exception(),
                      extra={"source": self.name, "shard": shard_id})
            self._wake.set()

    # --- reading --------------------------------------------------------------------------------
    async def _pause(self, seconds: float) -> bool:
        """Sleep unless stopping; True when stopping."""
        if seconds <= 0:
            return self._stopping.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        return self._stopping.is_set()

    async def _iterator(self, shard_id: str, start: Mapping[str, Any]) -> str:
        response = await self._client.get_shard_iterator(
            StreamName=self.stream, ShardId=shard_id, **start)
        return str(response["ShardIterator"])

    def _resume_position(self, tracker: ShardTracker, start: Mapping[str, Any]
                         ) -> Mapping[str, Any]:
        after = tracker.resume_after(None)
        if after is None:
            return start
        return {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": after}

    async def _read_shard(self, shard_id: str, tracker: ShardTracker,
                          start: Mapping[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.config.polls_per_second
        behind = self._m_behind.get(shard_id)
        if behind is None:
            behind = self._m_behind[shard_id] = metrics.KINESIS_BEHIND.labels(
                source=self.name, shard=shard_id)
        iterator: str | None = None
        next_call = 0.0
        failures = 0
        while not self._stopping.is_set():
            if await self._pause(next_call - loop.time()):
                return
            next_call = loop.time() + period
            try:
                if iterator is None:
                    iterator = await self._iterator(shard_id,
                                                    self._resume_position(tracker, start))
                response = await self._client.get_records(ShardIterator=iterator,
                                                          Limit=self.config.max_records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                code = aws_error_code(exc) or ""
                if code == "ExpiredIteratorException":
                    log.info("kinesis iterator expired; fetching a new one",
                             extra={"source": self.name, "shard": shard_id})
                    iterator = None
                    continue
                if code == "ResourceNotFoundException":
                    log.warning("kinesis shard or stream not found; reader stops",
                                extra={"source": self.name, "shard": shard_id})
                    return
                failures += 1
                delay = retry.backoff_delay(failures, base=max(period, 0.2), cap=10.0)
                level = logging.INFO if code in _THROTTLED else logging.WARNING
                log.log(level, "kinesis GetRecords failed; backing off",
                        extra={"source": self.name, "shard": shard_id, "error_code": code,
                               "error": str(exc), "delay": delay})
                metrics.error(f"source:{self.name}", code or type(exc).__name__).inc()
                await retry.sleep(delay)
                continue
            failures = 0
            self._polled.add(shard_id)
            records = response.get("Records") or []
            millis = response.get("MillisBehindLatest")
            if millis is not None:
                behind.set(millis)
            if records and not await self._hand_out(shard_id, tracker, records):
                return
            next_iterator = response.get("NextShardIterator")
            if next_iterator is None or response.get("ChildShards"):
                await self._end_of_shard(shard_id, tracker, response.get("ChildShards") or [])
                return
            iterator = next_iterator
            if not records and await self._pause(self.config.idle_poll_interval):
                return

    async def _hand_out(self, shard_id: str, tracker: ShardTracker,
                        records: Sequence[Mapping[str, Any]]) -> bool:
        i = 0
        while i < len(records):
            if self._stopping.is_set():
                return False
            # Cancellation while waiting takes no slot; once acquire returns, the batch below
            # is handed out without another suspension, so slots and messages stay matched.
            got = await self.budget.acquire(len(records) - i)
            now = time.time()
            handed = size = 0
            for record in records[i:i + got]:
                sequence = record["SequenceNumber"]
                if not tracker.handed_out(sequence):
                    continue
                data: bytes = record["Data"]
                size += len(data)
                handed += 1
                self._out.put_nowait(Message(
                    id=f"{shard_id}:{sequence}", body=data, source=self.name, received_at=now,
                    sent_at=_epoch(record.get("ApproximateArrivalTimestamp")),
                    attributes={"partition_key": str(record.get("PartitionKey", "")),
                                "stream": self.stream},
                    handle=(shard_id, sequence), partition=shard_id))
            if handed < got:
                self.budget.release(got - handed)
            self._outstanding += handed
            self._m_received.inc(handed)
            self._m_bytes.inc(size)
            i += got
        return True

    async def _end_of_shard(self, shard_id: str, tracker: ShardTracker,
                            children: Sequence[Mapping[str, Any]]) -> None:
        tracker.reached_end = True
        log.info("kinesis shard reached its end; finishing once its records are settled",
                 extra={"source": self.name, "shard": shard_id, "pending": tracker.pending,
                        "children": [c.get("ShardId") for c in children]})
        while not tracker.drained:
            if await self._pause(_DRAIN_POLL):
                return
        await self._flush(shard_id)
        await self._mark_finished(shard_id)
        self._wake.set()  # its children may start now

    async def _mark_finished(self, shard_id: str, *, skipped: bool = False) -> None:
        await self.checkpoints.finish(shard_id, skipped=skipped)
        tracker = self._trackers.get(shard_id)
        if tracker is not None:
            tracker.committed = SHARD_END
        self._finished.add(shard_id)
        self._checkpoint_metric(shard_id).inc()
        if self._m_behind.pop(shard_id, None) is not None:
            # A finished shard is never behind again; drop its series rather than freeze it.
            metrics.KINESIS_BEHIND.remove(self.name, shard_id)
        await self.ownership.release(shard_id)
        log.info("kinesis shard finished", extra={"source": self.name, "shard": shard_id,
                                                  "skipped": skipped})

    # --- settling and checkpoints ---------------------------------------------------------------
    def _checkpoint_metric(self, shard_id: str) -> Any:
        bound = self._m_checkpoint.get(shard_id)
        if bound is None:
            bound = self._m_checkpoint[shard_id] = metrics.KINESIS_CHECKPOINT.labels(
                source=self.name, shard=shard_id)
        return bound

    async def _finish(self, tracker: ShardTracker, sequence: str) -> None:
        moved = tracker.finish(sequence)
        self.budget.release(1)
        if moved:
            last = self._last_flush.get(tracker.shard_id, -math.inf)
            if time.monotonic() - last >= self.config.checkpoint_interval:
                await self._flush(tracker.shard_id)

    async def _flush(self, shard_id: str) -> None:
        """Write the shard's finished prefix if it moved since the last write."""
        lock = self._flush_locks.setdefault(shard_id, asyncio.Lock())
        async with lock:
            tracker = self._trackers.get(shard_id)
            if tracker is None or not tracker.dirty or tracker.ready is None:
                return
            target = tracker.ready
            try:
                stored = await self.checkpoints.advance(shard_id, target)
            except Exception:
                self._m_ack_failed.inc()
                log.exception("kinesis checkpoint write failed; it is retried",
                              extra={"source": self.name, "shard": shard_id})
                return
            tracker.committed = stored.position
            self._last_flush[shard_id] = time.monotonic()
            self._m_ack_ok.inc()
            self._checkpoint_metric(shard_id).inc()

    async def _flush_loop(self) -> None:
        period = max(self.config.checkpoint_interval, _MIN_FLUSH_PERIOD)
        while not self._stopping.is_set():
            if await self._pause(period):
                return
            for shard_id, tracker in list(self._trackers.items()):
                if tracker.dirty:
                    await self._flush(shard_id)

    def _schedule_retry(self, message: Message, outcome: Outcome) -> None:
        delay = max(outcome.delay, retry.backoff_delay(message.receive_count,
                                                       base=self.config.retry_base_delay))
        task = asyncio.create_task(self._requeue(message, delay),
                                   name=f"kinesis-retry:{message.id}")
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)
        log.info("kinesis record will be retried", extra={
            "source": self.name, "message_id": message.id, "attempt": message.receive_count,
            "reason": outcome.reason, "delay": delay})

    async def _requeue(self, message: Message, delay: float) -> None:
        await retry.sleep(delay)
        if self._stopping.is_set():
            return  # left unfinished: the checkpoint stays before it and a restart reads it
        message.receive_count += 1
        self._outstanding += 1
        self._out.put_nowait(message)

    async def _dead_letter(self, tracker: ShardTracker, message: Message, outcome: Outcome,
                           *, cause: str) -> None:
        shard_id, sequence = message.handle
        reason = outcome.reason or cause
        record = {
            "source": self.name, "stream": self.stream, "shard": shard_id,
            "sequence": sequence, "partition_key": message.attributes.get("partition_key", ""),
            "data": base64.b64encode(message.body).decode("ascii"),
            "reason": reason, "detail": outcome.detail, "cause": cause,
            "attempts": message.receive_count, "arrived_at": message.sent_at,
            "dead_lettered_at": self.ctx.clock.now(), "worker": self.worker_id,
        }
        key = deadletter_key(self.stream, shard_id, sequence)
        ttl = self.config.dead_letter_retention_days * _SECONDS_PER_DAY
        for attempt in range(1, _DEAD_LETTER_ATTEMPTS + 1):
            try:
                await self.ctx.store.put(key, record, ttl=ttl)
                break
            except Exception:
                log.exception("writing a kinesis dead letter failed",
                              extra={"source": self.name, "key": key, "attempt": attempt})
                if attempt == _DEAD_LETTER_ATTEMPTS:
                    log.error("kinesis record left unfinished: it is read again after a restart",
                              extra={"source": self.name, "key": key})
                    return
                await retry.sleep(retry.backoff_delay(attempt, base=0.2, cap=5.0))
        label = "retries_exhausted" if cause == "retries_exhausted" else reason
        bound = self._m_dead.get(label)
        if bound is None:
            bound = self._m_dead[label] = metrics.DEAD_LETTERED.labels(source=self.name,
                                                                      reason=label)
        bound.inc()
        log.warning("kinesis record dead-lettered", extra={
            "source": self.name, "key": key, "reason": reason, "cause": cause,
            "attempts": message.receive_count})
        await self._finish(tracker, sequence)

    # --- introspection (tests, /readyz) ---------------------------------------------------------
    @property
    def reading(self) -> frozenset[str]:
        return frozenset(self._readers)

    @property
    def finished_shards(self) -> frozenset[str]:
        return frozenset(self._finished)

    @property
    def polled_shards(self) -> frozenset[str]:
        """Shards read at least once: past their start position, whatever it was."""
        return frozenset(self._polled)


def build(config: KinesisSourceConfig, ctx: RuntimeContext, budget: InFlightBudget
          ) -> KinesisSource:
    """The source the runner starts for a ``[[sources]] type = "kinesis"`` entry."""
    return KinesisSource(config, ctx, budget)
