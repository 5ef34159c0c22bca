"""`riposte replay`: archived events through the live chain, on event time, changing nothing.

Events are read from files or S3 prefixes, decoded and normalized by the same
stages as `riposte run`, ordered by event time within a bounded re-ordering window
(archives are only roughly ordered), and then run one at a time through
detect → correlate → score → contain with a clock that reads event time, so
correlation windows, baselines and the blast-radius bucket behave as they would
have live. Containment plans and never applies (``simulate``), and every AWS
client refuses mutating calls. State lives in a fresh SQLite file unless told
otherwise, so a backtest never touches production baselines or ledgers.

Processing is sequential on purpose: the same input and config must give a
byte-identical report. Memory stays flat as the archive grows: events are
counted as they pass and only incidents and actions (what the report lists) are
kept, plus the events inside the re-ordering window.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from pipeline.actions import registry
from pipeline.actions.blast_radius import BlastRadius
from pipeline.actions.config import ContainmentConfig
from pipeline.actions.policy import match_policies
from pipeline.aws import AwsClients
from pipeline.chain import Stage, acceptor
from pipeline.clock import Clock, EventTimeClock
from pipeline.config import RiposteConfig
from pipeline.context import RuntimeContext
from pipeline.errors import ConfigError, attach_component
from pipeline.gctune import GcTuning
from pipeline.models import (
    ActionMode,
    ActionRecord,
    ActionStatus,
    Event,
    EventKind,
    Incident,
    RawRecord,
)
from pipeline.readonly_aws import ReadOnlyAwsClients
from pipeline.sources.base import Message
from pipeline.sources.files import Body, count_local_files, iter_local, iter_s3, utc
from pipeline.stages.normalize import NormalizeStage
from pipeline.state.base import StateStore
from pipeline.state.memory import MemoryStore
from pipeline.state.writeback import WriteBackStore

# ``kind.value`` is a property lookup on the enum; counting runs once per record.
_KIND_NAMES: dict[EventKind, str] = {kind: kind.value for kind in EventKind}

# In a --state file: whether the replay that last used it finished.
STATE_MARKER = "replay:state"

log = logging.getLogger(__name__)

_EPOCH = 0.0
# ``--state :memory:``: keep replay state in process memory (fastest; gone at exit).
MEMORY_STATE = ":memory:"


@dataclass
class ReplayOptions:
    """What to replay and how; the CLI flags one to one."""

    inputs: Sequence[str]
    since: datetime | None = None
    until: datetime | None = None
    accounts: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    reorder_window: float = 300.0
    state_path: str | None = None
    send_to_sinks: bool = False
    progress: bool = False
    progress_stream: TextIO | None = None  # default: stderr


@dataclass
class ReplayResult:
    """Everything the report is made from: counters, incidents and actions, nothing per event."""

    inputs: int = 0
    messages: int = 0
    events: int = 0
    filtered_out: int = 0
    events_by_type: Counter[tuple[str, str]] = field(default_factory=Counter)
    events_by_hour: Counter[tuple[str, str]] = field(default_factory=Counter)
    first_time: datetime | None = None
    last_time: datetime | None = None
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)
    detections_by_rule: Counter[str] = field(default_factory=Counter)
    detection_ids: set[str] = field(default_factory=set, repr=False)
    incidents: dict[str, Incident] = field(default_factory=dict)
    actions: dict[tuple[str, str, str], ActionRecord] = field(default_factory=dict)
    seconds: float = 0.0
    _hours: dict[int, str] = field(default_factory=dict, repr=False)

    def error(self, name: str, reason: str, detail: str = "") -> None:
        """Count an input that could not be used; the first example of each reason is kept."""
        self.errors[reason] = self.errors.get(reason, 0) + 1
        self.error_examples.setdefault(reason, f"{name}: {detail}"[:300])
        log.warning("replay input rejected", extra={"input": name[:300], "reason": reason})

    def count_event(self, event: Event, ts: float) -> None:
        when = event.time
        kind = _KIND_NAMES[event.kind]
        self.events += 1
        self.events_by_type[(kind, event.type)] += 1
        hour = int(ts // 3600)
        label = self._hours.get(hour)
        if label is None:
            label = self._hours[hour] = when.strftime("%Y-%m-%dT%H:00Z")
        self.events_by_hour[(label, kind)] += 1
        if self.first_time is None or when < self.first_time:
            self.first_time = when
        if self.last_time is None or when > self.last_time:
            self.last_time = when


class Progress:
    """A one-line progress display (events/s, ETA) on a terminal; silent otherwise.

    Quiet unless the stream is a TTY, so logs and CI output stay machine-readable.
    """

    def __init__(self, enabled: bool, total_inputs: int | None,
                 stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.total = total_inputs
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, events: int, inputs_done: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self._last < 0.25:
            return
        self._last = now
        elapsed = max(1e-6, now - self.started)
        rate = events / elapsed
        eta = ""
        if self.total and inputs_done and not final:
            remaining = elapsed * max(0, self.total - inputs_done) / inputs_done
            eta = f"  ETA {remaining:5.0f}s"
        done = f"{inputs_done}/{self.total}" if self.total else str(inputs_done)
        self.stream.write(f"\rreplay: {events} events  {rate:8.0f}/s  inputs {done}{eta}   ")
        if final:
            self.stream.write("\n")
        self.stream.flush()


class SimulatedResponse:
    """What enforce and approve policies would have decided, on event time.

    In replay the containment engine downgrades every acting mode to dry-run (it
    must never apply), so by itself it never meets the blast-radius limit. This
    wrapper puts the live decision back on top of each fresh plan: a policy in
    approve mode sends it to a person; an enforce policy takes a token from the
    same fleet-wide and per-resource-type buckets as the engine (same rates, on
    the event-time clock), and an empty bucket holds the plan for approval.
    The records then carry the configured mode; nothing is ever applied.
    """

    name = "contain"

    def __init__(self, inner: Stage, config: ContainmentConfig, store: StateStore,
                 clock: Clock) -> None:
        self.inner = inner
        self._inner_accepts = acceptor(inner)
        self.config = config
        self.blast_radius = BlastRadius(config.rate_limit, store, clock,
                                        name="replay:containment")

    def accepts(self, item: Any) -> bool:
        return self._inner_accepts is None or self._inner_accepts(item)

    async def process(self, item: Any) -> Sequence[Any]:
        out = await self.inner.process(item)
        if not isinstance(item, Incident) or len(out) < 2:
            return out
        modes = {(c.spec.kind, c.resource.key): (c.mode, c.policy)
                 for c in match_policies(self.config, item)}
        changed: dict[str, ActionRecord] = {}
        for record in out:
            if isinstance(record, ActionRecord) and record.status == ActionStatus.PLANNED:
                mode, policy = modes.get((record.kind, record.resource.key), ("dry-run", ""))
                decided = await self._decide(record, mode, policy)
                if decided is not record:
                    changed[record.id] = decided
        if not changed:
            return out
        result: list[Any] = []
        for entry in out:
            if isinstance(entry, Incident):
                result.append(replace(entry, actions=tuple(changed.get(a.id, a)
                                                           for a in entry.actions)))
            elif isinstance(entry, ActionRecord):
                result.append(changed.get(entry.id, entry))
            else:
                result.append(entry)
        return result

    async def _decide(self, record: ActionRecord, mode: str, policy: str) -> ActionRecord:
        if mode == "approve":
            return replace(record, mode=ActionMode.APPROVE,
                           status=ActionStatus.AWAITING_APPROVAL,
                           reason=f"policy {policy} requires approval")
        if mode != "enforce":
            return record
        if registry.get(record.kind).disruptive and not await self.blast_radius.take(
                record.resource.type):
            return replace(record, mode=ActionMode.ENFORCE,
                           status=ActionStatus.AWAITING_APPROVAL,
                           reason=self.blast_radius.reason(record.resource.type))
        return replace(record, mode=ActionMode.ENFORCE)


def passes(event: Event, opts: ReplayOptions) -> bool:
    """The ``--from/--to/--account/--region/--kind`` filters."""
    if opts.since is not None and event.time < utc(opts.since):
        return False
    if opts.until is not None and event.time > utc(opts.until):
        return False
    if opts.accounts and event.account not in opts.accounts:
        return False
    if opts.regions and event.region not in opts.regions:
        return False
    return not (opts.kinds and event.kind.value not in opts.kinds)


def filters_set(opts: ReplayOptions) -> bool:
    """Whether any filter :func:`passes` checks is set (if none, every event passes)."""
    return (opts.since is not None or opts.until is not None
            or bool(opts.accounts or opts.regions or opts.kinds))


async def _bodies(opts: ReplayOptions, ctx: RuntimeContext,
                  on_error: Callable[[str, str, str], None]) -> AsyncIterator[Body]:
    local = [p for p in opts.inputs if not p.startswith("s3://")]
    for body in iter_local(local, on_error):
        yield body
    # A CloudTrail file is delivered a few minutes after its last event: a file under the
    # day after --to may still hold events of that day.
    until = opts.until + timedelta(days=1) if opts.until is not None else None
    for url in (p for p in opts.inputs if p.startswith("s3://")):
        async for body in iter_s3(url, ctx.aws, on_error, since=opts.since, until=until,
                                  max_object_bytes=ctx.config.service.max_object_bytes):
            yield body


def _total_inputs(inputs: Sequence[str]) -> int | None:
    if any(p.startswith("s3://") for p in inputs):
        return None
    return count_local_files(inputs)


class _Replayer:
    """One replay run: the chain, the clock, the re-ordering heap and the tallies."""

    def __init__(self, ctx: RuntimeContext, clock: EventTimeClock, opts: ReplayOptions,
                 result: ReplayResult) -> None:
        from pipeline.assemble import build_stages

        self.ctx, self.clock, self.opts, self.result = ctx, clock, opts, result
        self.prefix, laned, self.fanout = build_stages(ctx.config, ctx)
        self.after_decode = [s for s in self.prefix if s.name != "decode"]
        # The laned stages but the fan-out, each with its ``accepts`` test (see Stage): most
        # events are calls that only detect looks at, and the rest need not be awaited.
        self.core: list[tuple[Stage, Callable[[Any], bool] | None]] = []
        for stage in laned:
            if stage is self.fanout:
                continue
            used = (SimulatedResponse(stage, ctx.config.containment, ctx.store, clock)
                    if stage.name == "contain" else stage)
            self.core.append((used, acceptor(used)))
        self.heap: list[tuple[float, int, Event]] = []
        self.seq = itertools.count()
        self.newest = float("-inf")
        self.filtering = filters_set(opts)

    async def _through(self, stage: Stage, items: list[Any], name: str) -> list[Any]:
        produced: list[Any] = []
        # Normalize is synchronous: a log file's records need not be awaited one by one,
        # and the events they make are counted once for the whole batch.
        normalize = stage if isinstance(stage, NormalizeStage) else None
        made: list[Event] = []
        for item in items:
            try:
                if normalize is not None and isinstance(item, RawRecord):
                    events = normalize.convert(item)
                    made.extend(events)
                    produced.extend(events)
                else:
                    produced.extend(await stage.process(item))
            except Exception as exc:  # a stage failure must not end a backtest
                err = attach_component(exc, stage.name)
                self.result.error(name, f"{err.component}:{err.reason}", str(err))
        if normalize is not None and made:
            normalize.count(made)
        return produced

    async def _laned(self, ts: float, event: Event) -> None:
        self.clock.advance_to(ts)
        items: Sequence[Any] = (event,)
        for stage, accepts in self.core:
            if len(items) == 1:  # the common case, without the list building
                if accepts is not None and not accepts(items[0]):
                    continue  # the stage would hand it back as it is
                try:
                    items = await stage.process(items[0])
                except Exception as exc:  # a stage failure must not end a backtest
                    err = attach_component(exc, stage.name)
                    self.result.error(event.id, f"{err.component}:{err.reason}", str(err))
                    items = ()
            else:
                items = await self._through(stage, list(items), event.id)
            if not items:
                return
        self._collect(items)
        if self.opts.send_to_sinks and items:
            await self._through(self.fanout, list(items), event.id)

    def _collect(self, items: Sequence[Any]) -> None:
        result = self.result
        for item in items:
            if isinstance(item, Incident):
                # Kept to the end for the report: drop the triggering event (with its raw
                # payload) and the action list (kept apart), so memory follows the
                # number of incidents, not the size of their events.
                result.incidents[item.id] = replace(item, trigger=None, actions=())
            elif isinstance(item, ActionRecord):
                result.actions[(item.incident_id, item.kind, item.resource.key)] = item
            # A rule re-emits one detection (same id) while it stays open: count it once.
            elif isinstance(item, Event) and item.item_kind == "detection" and \
                    item.id not in result.detection_ids:
                result.detection_ids.add(item.id)
                result.detections_by_rule[item.type] += 1

    async def feed(self, body: Body) -> None:
        """Decode and normalize one body; queue its events; run those now old enough."""
        result = self.result
        result.messages += 1
        items: list[Any]
        prefix = self.prefix
        if body.records is not None:
            # What the decode stage makes of a CloudTrail log file, without parsing it again.
            origin = {"source": "replay"}
            items = [RawRecord(payload=rec, message_id=body.name, index=i,
                               envelope="cloudtrail-file", origin=origin, received_at=0.0)
                     for i, rec in enumerate(body.records)]
            prefix = self.after_decode
        else:
            items = [Message(id=body.name, body=body.data, source="replay", received_at=0.0)]
        for stage in prefix:
            # One bad record of a log file is counted and dropped; its neighbours go on.
            items = await self._through(stage, items, body.name)
            if not items:
                return
        for event in items:
            if not isinstance(event, Event):
                continue
            ts = event.time.timestamp()
            if event.kind is EventKind.UNKNOWN and ts == _EPOCH:
                # JSON that is no event at all (a manifest, a report): no time to replay it at.
                result.error(event.id, "unrecognized_document",
                             "JSON object with no event time and no known event shape")
                continue
            if self.filtering and not passes(event, self.opts):
                result.filtered_out += 1
                continue
            result.count_event(event, ts)
            self.newest = max(self.newest, ts)
            heapq.heappush(self.heap, (ts, next(self.seq), event))
        horizon = self.newest - self.opts.reorder_window
        while self.heap and self.heap[0][0] <= horizon:
            await self._laned(*self._pop())

    def _pop(self) -> tuple[float, Event]:
        ts, _, event = heapq.heappop(self.heap)
        return ts, event

    async def drain(self) -> None:
        while self.heap:
            await self._laned(*self._pop())


async def run_replay(config: RiposteConfig, opts: ReplayOptions) -> ReplayResult:
    """Replay ``opts.inputs`` under ``config``; never applies anything, never raises on input."""
    # A replay allocates a few dozen objects per record and keeps long-lived ones
    # (baselines, state, loaded modules): with Python's default collector settings the
    # collector took over a third of the CPU. The same settings as `riposte run`.
    tuning = GcTuning(config.service.gc_policy())
    tuning.apply()
    try:
        return await _run_replay(config, opts)
    finally:
        tuning.restore()


async def _claim_state_file(store: WriteBackStore, path: str) -> None:
    """Refuse a ``--state`` file whose last replay did not finish; mark this one as running.

    A killed replay leaves its file covering part of an archive, with state written back
    up to some point only: baselines and ledgers a later backtest must not build on
    unknowingly. A file whose replay finished can be reused (to start from the baselines
    an earlier period taught).
    """
    marker = await store.get(STATE_MARKER)
    if marker is not None and marker.value.get("complete") is not True:
        await store.aclose()
        raise ConfigError(f"--state {path}: the replay that last used this file did not "
                          "finish, so its baselines and ledgers are partial; use a new file "
                          "(or delete this one)")
    await store.put(STATE_MARKER, {"complete": False})
    await store.flush()  # on disk now: a run killed before its first write-back shows too


async def _run_replay(config: RiposteConfig, opts: ReplayOptions) -> ReplayResult:
    clock = EventTimeClock()
    workdir = None
    state_path = opts.state_path
    store: StateStore
    claimed = False  # a --state file this run marked as running (see _claim_state_file)
    if state_path == MEMORY_STATE:
        store = MemoryStore(clock)
    else:
        from pipeline.state.sqlite import SqliteStore

        if state_path is None:
            workdir = tempfile.TemporaryDirectory(prefix="riposte-replay-")
            state_path = str(Path(workdir.name) / "state.db")
        # This run is the file's only user, so state is decided in memory and written back
        # in batches; a --state file is complete at the end, a temporary one is not.
        scratch = opts.state_path is None  # deleted at the end: no journal on disk, no syncs
        store = await WriteBackStore.wrap(
            await SqliteStore.open(state_path, clock=clock, scratch=scratch), clock,
            keep=not scratch)
        if opts.state_path is not None:
            await _claim_state_file(store, opts.state_path)
            claimed = True
    aws = ReadOnlyAwsClients(config.service.region)
    ctx = RuntimeContext(config=config, store=store, aws=aws, clock=clock, simulate=True)
    result = ReplayResult()
    progress = Progress(opts.progress, _total_inputs(opts.inputs) if opts.progress else None,
                        opts.progress_stream)
    started = time.monotonic()
    last_source = ""
    sink_aws: AwsClients | None = None
    try:
        replayer = _Replayer(ctx, clock, opts, result)
        if opts.send_to_sinks:
            # Delivering the report's items is what --sinks asks for, so the sinks (Security
            # Hub, EventBridge, SNS...) get ordinary clients; the chain's stay read-only.
            from sinks import fanout

            sink_aws = AwsClients(config.service.region)
            replayer.fanout = fanout.build(config, replace(ctx, aws=sink_aws))
            await replayer.fanout.start()
        try:
            async for body in _bodies(opts, ctx, result.error):
                source = body.name.split("#", 1)[0]
                if source != last_source:  # bodies of one file come one after another
                    result.inputs += 1
                    last_source = source
                await replayer.feed(body)
                progress.update(result.events, result.inputs)
            await replayer.drain()
            if claimed:
                await store.put(STATE_MARKER, {"complete": True})
        finally:
            if opts.send_to_sinks:
                await replayer.fanout.aclose()
        progress.update(result.events, result.inputs, final=True)
    finally:
        await store.aclose()
        await aws.aclose()
        if sink_aws is not None:
            await sink_aws.aclose()
        if workdir is not None:
            workdir.cleanup()
    result.seconds = time.monotonic() - started
    return result
