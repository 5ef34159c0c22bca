"""Throughput of normalize -> correlate -> score over a large SQLite correlation index.

    python bench/bench_correlate.py [--resources 100000] [--events 20000] [--concurrency 16]

1. Pre-indexes ``--resources`` EC2 instances, each with one open (medium) Inspector
   finding, written as the exact records the correlate stage stores (bulk insert,
   so setup takes seconds). Prints the file size and RSS change per resource.
2. Feeds ``--events`` EventBridge payloads (from the project's sample fixtures,
   re-targeted at random indexed instances) through the real stages: 50% Inspector
   updates, 25% GuardDuty findings (each correlates with the instance's open CVE:
   the full path, incident write included), 15% brand-new Inspector findings and
   10% exact redeliveries.
3. Prints events/s per core (events / process CPU seconds, all threads counted,
   since SQLite runs on its own thread) next to the cost of normalize alone.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.clock import WallClock  # noqa: E402
from pipeline.models import Incident, RawRecord  # noqa: E402
from pipeline.stages.correlate import (  # noqa: E402
    CorrelateStage,
    finding_record,
    index_key,
    resource_keys,
)
from pipeline.stages.correlate_config import CorrelateConfig  # noqa: E402
from pipeline.stages.normalize import NormalizeStage  # noqa: E402
from pipeline.stages.score import ScoreStage  # noqa: E402
from pipeline.stages.score_config import ScoreConfig  # noqa: E402
from pipeline.state.sqlite import SqliteStore  # noqa: E402

SAMPLES = ROOT / "tests" / "fixtures" / "samples"
ACCOUNT = "123456789012"
REGION = "eu-central-1"
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def iid(n: int) -> str:
    return f"i-{n:017x}"


class Payloads:
    """EventBridge payloads made from the sample fixtures, re-targeted per resource."""

    def __init__(self) -> None:
        self.inspector = json.loads(
            (SAMPLES / "inspector2/awsdocs-inspector2-ec2-package-vulnerability.json").read_text())
        self.guardduty = json.loads(
            (SAMPLES / "guardduty/custodian-ec2-duty-event.json").read_text())

    def inspector_event(self, n: int, finding: str, when: datetime) -> dict[str, Any]:
        doc: dict[str, Any] = copy.deepcopy(self.inspector)
        detail = doc["detail"]
        detail["status"] = "ACTIVE"
        detail["findingArn"] = f"arn:aws:inspector2:{REGION}:{ACCOUNT}:finding/{finding}"
        detail["resources"][0]["id"] = iid(n)
        detail["updatedAt"] = when.isoformat()
        doc["resources"] = [iid(n)]
        return doc

    def guardduty_event(self, n: int, finding: str, when: datetime) -> dict[str, Any]:
        doc: dict[str, Any] = copy.deepcopy(self.guardduty)
        detail = doc["detail"]
        detail["id"] = finding
        detail["resource"]["instanceDetails"]["instanceId"] = iid(n)
        detail["service"]["additionalInfo"] = {}
        detail["accountId"] = doc["account"] = ACCOUNT
        detail["region"] = doc["region"] = REGION
        detail["updatedAt"] = when.isoformat()
        detail["severity"] = 8
        return doc


def preindex(path: Path, resources: int, payloads: Payloads, ttl: float) -> None:
    """Bulk-write one open Inspector finding per instance, as the stage would store it."""
    normalize = NormalizeStage()
    template = payloads.inspector_event(0, "seed", BASE_TIME)
    (event,) = normalize.normalize(RawRecord(payload=template, message_id="seed"))
    store_expiry = time.time() + ttl
    rows = []
    for n in range(resources):
        e = event.__class__(**{**{f: getattr(event, f) for f in event.__dataclass_fields__},
                               "id": f"arn:aws:inspector2:{REGION}:{ACCOUNT}:finding/seed{n}",
                               "resources": (event.resources[0].__class__(
                                   **{**{f: getattr(event.resources[0], f)
                                         for f in event.resources[0].__dataclass_fields__},
                                      "id": iid(n)}),)})
        keys = resource_keys(e)
        scopes = [f"{ACCOUNT}/{REGION}/{k}" for k in keys]
        record = finding_record(e, scopes, keys)
        rows.append((index_key(scopes[0], "insp", e.id), orjson.dumps(record), 1, store_expiry))
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany("INSERT INTO kv (key, value, version, expires_at) VALUES (?, ?, ?, ?)",
                         rows)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # measure the table, not the log
    conn.close()


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def workload(resources: int, events: int, payloads: Payloads, seed: int) -> list[RawRecord]:
    rng = random.Random(seed)
    out: list[RawRecord] = []
    for i in range(events):
        n = rng.randrange(resources)
        when = BASE_TIME + timedelta(seconds=60 + i)
        roll = rng.random()
        if roll < 0.10 and out:
            out.append(out[rng.randrange(len(out))])  # exact redelivery
            continue
        if roll < 0.60:
            payload = payloads.inspector_event(n, f"seed{n}", when)  # update of an indexed one
        elif roll < 0.85:
            payload = payloads.guardduty_event(n, f"gd{i:08x}", when)
        else:
            payload = payloads.inspector_event(n, f"new{i}", when)
        out.append(RawRecord(payload=payload, message_id=str(i)))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resources", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16,
                        help="events in flight (distinct resources run concurrently)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--preindex-into", help=argparse.SUPPRESS)
    args = parser.parse_args()

    payloads = Payloads()
    config = CorrelateConfig()
    if args.preindex_into:  # child process: keeps the bulk load out of the measured RSS
        preindex(Path(args.preindex_into), args.resources, payloads,
                 config.window_seconds + config.index_margin_seconds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        store = await SqliteStore.open(path, clock=WallClock())
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        await store.aclose()
        await asyncio.to_thread(
            subprocess.run, [sys.executable, __file__, "--resources", str(args.resources),
                             "--preindex-into", str(path)], check=True)
        store = await SqliteStore.open(path, clock=WallClock())
        # Touch the index the way the workload will, so RSS reflects a warm process.
        for n in range(0, args.resources, max(1, args.resources // 5000)):
            await store.scan(f"corr:{ACCOUNT}/{REGION}/ec2.instance:{iid(n)}#")
        setup = time.perf_counter() - t0
        size = await asyncio.to_thread(disk_bytes, path)
        rss1 = rss_bytes()
        print(f"index: {args.resources:,} resources pre-indexed in {setup:.1f}s")
        print(f"  disk: {size / 1e6:.1f} MB total, {size / args.resources:.0f} bytes/resource")
        print(f"  rss delta: {(rss1 - rss0) / 1e6:.1f} MB, "
              f"{(rss1 - rss0) / args.resources:.0f} bytes/resource "
              "(SQLite page cache only: the index lives on disk)")

        records = workload(args.resources, args.events, payloads, args.seed)
        normalize = NormalizeStage()
        correlate = CorrelateStage(config, store)
        score = ScoreStage(ScoreConfig())

        c0 = time.process_time()
        events = [normalize.normalize(r) for r in records]
        normalize_cpu = time.process_time() - c0

        incidents = 0

        async def one(batch: list[Any]) -> None:
            nonlocal incidents
            for event in batch:
                for item in await correlate.process(event):
                    if isinstance(item, Incident):
                        await score.process(item)
                        incidents += 1

        flat = [e for evs in events for e in evs]
        # Same resource -> same lane (in order); lanes spread over `concurrency` workers.
        lanes: list[list[Any]] = [[] for _ in range(args.concurrency)]
        for event in flat:
            lanes[hash(event.lane_key) % args.concurrency].append(event)
        c1, w1 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(lane) for lane in lanes))
        cpu = time.process_time() - c1
        wall = time.perf_counter() - w1
        await store.aclose()

    n = len(flat)
    print(f"workload: {n:,} events ({incidents:,} incident revisions emitted), "
          f"concurrency {args.concurrency}")
    print(f"  normalize alone:        {normalize_cpu / n * 1e6:7.1f} us CPU/event")
    print(f"  correlate + score:      {cpu / n * 1e6:7.1f} us CPU/event, "
          f"{n / cpu:,.0f} events/s per core ({n / wall:,.0f} events/s wall)")
    total = cpu + normalize_cpu
    print(f"  normalize -> correlate -> score: {n / total:,.0f} events/s per core")
    print(f"  (cpu_count={os.cpu_count()}, python {sys.version.split()[0]})")


if __name__ == "__main__":
    asyncio.run(main())
