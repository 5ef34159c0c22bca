"""Two and three `riposte run` workers sharing one multi-shard Kinesis stream through leases.

Each worker is a real process with ``leases = true`` and the DynamoDB state store
(one table, moto server). While records are being written, the test watches the
table (checkpoints and leases, read with boto3 every 0.2 s) and afterwards reads
the workers' logs, where every shard reader's start and stop is logged with a
millisecond timestamp. It checks that:

* every record is processed (each id appears in some worker's output);
* no checkpoint ever moves backwards;
* no shard is read by two workers at once, except for the short overlap of a
  handover (the previous owner notices at its next renewal pass);
* a worker killed with SIGKILL has its shards taken over within about one lease
  duration plus one renewal interval, and nothing is lost.

A short ``lease_duration`` (5 s, renewed every 5/3 s) keeps the tests fast; shorter
leases make the live-worker count flicker on a loaded 2-core machine, because a
renewal pass shares its process with the chain. moto's Kinesis does not implement
``SubscribeToShard`` (enhanced fan-out), so only polling is shown here.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.sources.checkpoints import checkpoint_prefix, position_rank
from pipeline.sources.leases import lease_prefix
from tests.integration.e2e_helpers import (
    FIXTURES,
    guardduty_events,
    read_jsonl_ids,
    start_riposte,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration

EC2_STATE_CHANGE = FIXTURES / "envelopes" / "powertools-eventBridgeEvent.json"

LEASE_DURATION = 5.0
RENEW_INTERVAL = LEASE_DURATION / 3  # LeaseManager renews every third of a lease
# A handover overlaps until the previous owner's next renewal pass, which runs every
# RENEW_INTERVAL when idle but shares the process (and its DynamoDB connection pool) with
# the chain, so under load it comes later: allow up to one lease duration plus scheduling.
HANDOVER_SLACK = LEASE_DURATION + 1.0


@dataclass
class Watch:
    """What the table showed over time: checkpoint positions and lease owners per shard."""

    checkpoints: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    leases: list[tuple[float, dict[str, tuple[str | None, float]]]] = field(default_factory=list)
    polls: int = 0

    def owners_at_latest(self) -> dict[str, tuple[str | None, float]]:
        return self.leases[-1][1] if self.leases else {}


class TableWatcher:
    """Polls the DynamoDB table (pk "kinesis") from a thread while the workers run."""

    def __init__(self, boto: Any, table: str, stream: str, interval: float = 0.2) -> None:
        self.ddb = boto("dynamodb")
        self.table = table
        self.stream = stream
        self.interval = interval
        self.watch = Watch()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _items(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table, "ConsistentRead": True,
            "KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {
                ":pk": {"S": "kinesis"}}}
        while True:
            page = self.ddb.query(**kwargs)
            items.extend(page["Items"])
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def poll(self) -> None:
        try:
            items = self._items()
        except Exception as exc:  # the table may not exist until the first worker creates it
            if "ResourceNotFound" in type(exc).__name__ or "ResourceNotFound" in str(exc):
                return
            raise
        ckpt, lease = checkpoint_prefix(self.stream), lease_prefix(self.stream)
        owners: dict[str, tuple[str | None, float]] = {}
        with self._lock:
            for item in items:
                key = item["sk"]["S"]
                value = orjson.loads(item["v"]["S"])
                if key.startswith(ckpt):
                    history = self.watch.checkpoints[key[len(ckpt):]]
                    if not history or history[-1] != value["position"]:
                        history.append(value["position"])
                elif key.startswith(lease):
                    owners[key[len(lease):]] = (value.get("owner"),
                                                float(value.get("expires_at", 0.0)))
            self.watch.leases.append((time.time(), owners))
            self.watch.polls += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self) -> TableWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.poll()

    def leases_now(self) -> dict[str, tuple[str | None, float]]:
        self.poll()
        with self._lock:
            return dict(self.watch.owners_at_latest())


def _config(path: Path, *, stream: str, table: str, worker: str, out: Path) -> Path:
    return write_config(path, f"""
[service]
region = "us-east-1"
in_flight_limit = 200
concurrency = 8
shutdown_deadline = 10

[metrics]
enabled = false

[state]
type = "dynamodb"
table = "{table}"
create_if_missing = true

[[sources]]
type = "kinesis"
name = "kinesis"
stream_name = "{stream}"
idle_poll_interval = 0.2
shard_discovery_interval = 1
checkpoint_interval = 0.2
leases = true
lease_duration = {LEASE_DURATION}
worker_id = "{worker}"

[[sinks]]
type = "jsonl"
name = "out"
path = "{out}"
routing = {{ kinds = ["event"] }}
# Off, so the outputs show raw at-least-once delivery (a handover's duplicates included).
ledger = false
""")


@dataclass
class Fleet:
    stream: str
    table: str
    workers: list[str]
    configs: list[Path]
    outputs: list[Path]
    logs: list[Path]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, index: int) -> None:
        self.procs[self.workers[index]] = start_riposte(self.configs[index], self.logs[index])

    def ids(self) -> set[str]:
        return processed(self.outputs)

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in self.logs
                         if p.exists())


def make_fleet(boto: Any, tmp_path: Path, shards: int, workers: int) -> Fleet:
    suffix = uuid.uuid4().hex[:8]
    stream = f"fleet-{suffix}"
    boto("kinesis").create_stream(StreamName=stream, ShardCount=shards)
    table = f"fleet-kin-{suffix}"
    names = [f"w{n}" for n in range(workers)]
    fleet = Fleet(stream, table, names, [], [], [])
    for name in names:
        out = tmp_path / f"{name}.jsonl"
        fleet.configs.append(_config(tmp_path / f"{name}.toml", stream=stream, table=table,
                                     worker=name, out=out))
        fleet.outputs.append(out)
        fleet.logs.append(tmp_path / f"{name}.log")
    return fleet


class Producer:
    """Writes records in small batches from a thread, so workers read while it writes."""

    def __init__(self, boto: Any, stream: str, events: list[tuple[str, bytes]],
                 batch: int = 50, pause: float = 0.25, hold_at: int | None = None) -> None:
        self.kinesis = boto("kinesis")
        self.stream = stream
        self.events = events
        self.batch = batch
        self.pause = pause
        self.sent = 0
        # With ``hold_at``, writing stops after that many records until ``release()``, so
        # a test can act while records are still to come however slow the machine is.
        self.hold_at = hold_at
        self._released = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def release(self) -> None:
        self._released.set()

    def _run(self) -> None:
        for start in range(0, len(self.events), self.batch):
            if self.hold_at is not None and start >= self.hold_at:
                self._released.wait(60)
            chunk = self.events[start:start + self.batch]
            self.kinesis.put_records(StreamName=self.stream, Records=[
                {"Data": body, "PartitionKey": fid} for fid, body in chunk])
            self.sent += len(chunk)
            time.sleep(self.pause)

    def start(self) -> Producer:
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join(60)

    def __enter__(self) -> Producer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.join()


def stream_input(n: int, prefix: str) -> list[tuple[str, bytes]]:
    """``n`` records: every fifth a GuardDuty finding (the whole chain, correlation state
    included), the rest EC2 state-change events (observe-only: they cross the chain without
    state writes). moto's DynamoDB Query reads the whole partition, so a stream of findings
    only would make the correlation index, not the leases, what these tests wait for."""
    findings = guardduty_events(n // 5, f"{prefix}gd-")
    template = orjson.loads(EC2_STATE_CHANGE.read_bytes())
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        if i % 5 == 0 and i // 5 < len(findings):
            out.append(findings[i // 5])
            continue
        event = dict(template)
        event["id"] = f"{prefix}ec2-{i:06d}"
        instance = f"i-{i % 89:017x}"
        event["detail"] = {"instance_id": instance, "state": "stopped"}
        event["resources"] = [f"arn:aws:ec2:us-west-1:111122223333:instance/{instance}"]
        out.append((event["id"], orjson.dumps(event)))
    return out


def processed(paths: list[Path]) -> set[str]:
    """Ids of every event any worker wrote (observe-only events are ``event`` items too)."""
    return {i for p in paths for i in read_jsonl_ids(p)}


# --- reading the workers' logs ------------------------------------------------------------------
_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z?$")


def _epoch(ts: str) -> float:
    assert _TS.match(ts), ts
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _log_lines(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_bytes().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line cut by SIGKILL, or a non-JSON line
        if isinstance(entry, dict) and "ts" in entry:
            yield entry


def reading_intervals(log: Path, end: float) -> dict[str, list[tuple[float, float]]]:
    """Per shard, the periods this worker's reader ran: [started, stopped] (``end`` if open)."""
    open_since: dict[str, float] = {}
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for entry in _log_lines(log):
        msg, shard = entry.get("msg", ""), entry.get("shard")
        t = _epoch(entry["ts"])
        if msg.startswith("kinesis shard reader starting") and shard:
            open_since.setdefault(shard, t)
        elif shard and shard in open_since and (
                msg.startswith("kinesis shard no longer ours")
                or msg.startswith("kinesis lease lost")
                or msg.startswith("kinesis shard finished")):
            out[shard].append((open_since.pop(shard), t))
        elif msg.startswith("kinesis source stopped"):
            for s, since in open_since.items():
                out[s].append((since, t))
            open_since.clear()
    for s, since in open_since.items():
        out[s].append((since, end))
    return out


def overlaps(fleet: Fleet, ends: dict[str, float]) -> list[tuple[str, str, str, float]]:
    """(shard, worker a, worker b, seconds) for every two workers reading a shard at once."""
    per_worker = {w: reading_intervals(log, ends[w])
                  for w, log in zip(fleet.workers, fleet.logs, strict=True)}
    found = []
    for i, a in enumerate(fleet.workers):
        for b in fleet.workers[i + 1:]:
            for shard, spans in per_worker[a].items():
                for s1, e1 in spans:
                    for s2, e2 in per_worker[b].get(shard, []):
                        both = min(e1, e2) - max(s1, s2)
                        if both > 0:
                            found.append((shard, a, b, both))
    return found


def claims(log: Path) -> list[tuple[float, str, str | None]]:
    """(time, shard, previous owner) for every lease this worker claimed or took."""
    out = []
    for entry in _log_lines(log):
        msg = entry.get("msg", "")
        if msg.startswith("kinesis lease claimed") or msg.startswith("kinesis lease taken"):
            out.append((_epoch(entry["ts"]), entry["shard"], entry.get("previous_owner")))
    return out


def assert_checkpoints_monotonic(watch: Watch, shards: int) -> None:
    assert len(watch.checkpoints) == shards, dict(watch.checkpoints)
    for shard, history in watch.checkpoints.items():
        ranks = [position_rank(p) for p in history]
        assert ranks == sorted(ranks), f"checkpoint of {shard} moved backwards: {history}"
    assert sum(len(h) for h in watch.checkpoints.values()) > shards, \
        "checkpoints were seen advancing during the run"


def assert_handovers_only(fleet: Fleet, ends: dict[str, float]) -> int:
    """Every overlap is short and follows a lease changing hands; the number of overlaps."""
    found = overlaps(fleet, ends)
    taken = {(shard, w, prev) for w, log in zip(fleet.workers, fleet.logs, strict=True)
             for _, shard, prev in claims(log)}
    for shard, a, b, seconds in found:
        assert seconds <= HANDOVER_SLACK, \
            f"{a} and {b} both read {shard} for {seconds:.2f}s, longer than a handover"
        assert (shard, a, b) in taken or (shard, b, a) in taken, \
            f"{a} and {b} both read {shard} without a lease changing hands"
    return len(found)


def held_counts(fleet: Fleet, watcher: TableWatcher) -> list[int]:
    """Live leases held per worker, sorted."""
    now = time.time()
    owners = [o for o, expires in watcher.leases_now().values() if expires > now]
    return sorted(owners.count(w) for w in fleet.workers)


def stop_all(fleet: Fleet) -> dict[str, float]:
    ends: dict[str, float] = {}
    for proc in fleet.procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, proc in fleet.procs.items():
        code = proc.wait(30)
        ends.setdefault(name, time.time())
        assert code in (0, -signal.SIGKILL), fleet.tail()
    return ends


# --- the tests ----------------------------------------------------------------------------------
def test_two_workers_share_four_shards(boto: Any, tmp_path: Path) -> None:
    shards = 4
    fleet = make_fleet(boto, tmp_path, shards, 2)
    events = stream_input(600, f"k2-{uuid.uuid4().hex[:6]}-")
    expected = {fid for fid, _ in events}
    ends: dict[str, float] = {}
    with TableWatcher(boto, fleet.table, fleet.stream) as watcher:
        try:
            fleet.start(0)
            fleet.start(1)
            with Producer(boto, fleet.stream, events):
                pass
            assert wait_for(lambda: fleet.ids() >= expected, 40, 0.5), fleet.tail()
            # The fleet balanced itself: two shards each (ceil(4 / 2)).
            assert wait_for(lambda: held_counts(fleet, watcher) == [2, 2], 15, 0.5), \
                watcher.leases_now()
        finally:
            ends = stop_all(fleet)
    assert fleet.ids() >= expected, "every record is processed"
    assert all(read_jsonl_ids(out) for out in fleet.outputs), "both workers processed records"
    assert_checkpoints_monotonic(watcher.watch, shards)
    assert_handovers_only(fleet, ends)
    # After a graceful stop every lease is released, none left for others to wait out.
    assert all(owner is None for owner, _ in watcher.leases_now().values())


def test_three_workers_and_a_killed_one_loses_nothing(boto: Any, tmp_path: Path) -> None:
    shards = 6
    fleet = make_fleet(boto, tmp_path, shards, 3)
    events = stream_input(750, f"k3-{uuid.uuid4().hex[:6]}-")
    expected = {fid for fid, _ in events}
    ends: dict[str, float] = {}
    with TableWatcher(boto, fleet.table, fleet.stream) as watcher:
        try:
            for n in range(3):
                fleet.start(n)
            producer = Producer(boto, fleet.stream, events, batch=50, pause=0.6,
                                hold_at=500).start()
            # Balanced: two shards each (ceil(6 / 3)), every lease held by a live worker.
            assert wait_for(lambda: held_counts(fleet, watcher) == [2, 2, 2], 30, 0.5), \
                watcher.leases_now()
            assert wait_for(lambda: len(fleet.ids() & expected) >= 250, 30, 0.5), fleet.tail()
            assert producer.sent < len(events), "the worker is killed while records still arrive"

            victim = fleet.workers[0]
            held = {s for s, (owner, _) in watcher.leases_now().items() if owner == victim}
            assert len(held) == 2
            fleet.procs[victim].kill()
            killed_at = time.time()
            fleet.procs[victim].wait(10)
            ends[victim] = killed_at
            producer.release()  # the rest arrives while the survivors take over

            def taken_over() -> bool:
                now = watcher.leases_now()
                return all(now[s][0] not in (None, victim) for s in held)

            assert wait_for(taken_over, LEASE_DURATION + RENEW_INTERVAL + 8, 0.2), \
                watcher.leases_now()
            takeover = time.time() - killed_at
            producer.join()
            assert wait_for(lambda: fleet.ids() >= expected, 40, 0.5), fleet.tail()
        finally:
            ends.update(stop_all(fleet) | ends)
    # Taken over within about one lease duration plus one renewal pass (with slack for
    # process scheduling on a busy machine).
    assert takeover <= LEASE_DURATION + RENEW_INTERVAL + 3.0, takeover
    survivors = [w for w in fleet.workers if w != victim]
    taken_from_victim = {shard for w in survivors
                         for t, shard, prev in claims(fleet.logs[fleet.workers.index(w)])
                         if prev == victim and t >= killed_at}
    assert taken_from_victim == held, "the survivors claimed exactly the dead worker's shards"
    assert fleet.ids() >= expected, "no record lost"
    assert_checkpoints_monotonic(watcher.watch, shards)
    assert_handovers_only(fleet, ends)
