"""Fleet scaling: events/s with 1 and with 2 worker processes on one queue (or stream).

Each worker is a separate process running the whole chain as `riposte run` builds it
(decode → normalize → trust → detect → correlate → score → contain → fan-out to a
JSON-lines sink writing to /dev/null) over the SQS source, or the Kinesis source
with the shards split between the workers. The AWS side is bench/canned_aws.py in
its own process, answering at once with an endless supply of variants of one real
GuardDuty sample, so what limits the figure is the workers, the CPUs and the stand-in.

All processes measure the same wall-clock window (after a warm-up), and report the
events they settled in it and the CPU time they used. The stand-in's CPU time in
the window is read from /proc, so the printout shows where the machine's CPU went.
On a 2-core machine the stand-in competes with the workers for the same cores,
which caps the 2-worker figure below 2x; the CPU split makes that visible. Any
other load on the machine shows up as "machine CPU" beyond the workers' and the
stand-in's; when there is some, compare the CPU per event (which other load does
not change much) and read the projected figure printed for an otherwise idle
machine, rather than the raw events/s ratio.

The stand-in serves ``--variants`` copies of the sample in turn, each a distinct
finding about its own instance (events about one resource run in order in one
lane, so one resource would serialize everything). State is each worker's own
in-memory store (the stand-in does not serve DynamoDB): the figures measure the
pipeline's CPU per event, not a state store's latency. Once every variant has
been seen, correlation finds only repeats, which is the steady state of a queue
carrying redeliveries and finding updates.

    python bench/bench_fleet.py [--source sqs|kinesis] [--seconds 10] [--workers 1,2]
                                [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BENCH, free_port, start_process  # noqa: E402

SAMPLE = ROOT / "tests" / "fixtures" / "samples" / "guardduty" / "custodian-ec2-duty-event.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
STARTUP = 4.0  # seconds given to the workers to import and connect before the window opens


def start_server(port: int, shards: int, variants: int) -> subprocess.Popen[bytes]:
    return start_process([str(BENCH / "canned_aws.py"), str(port), str(SAMPLE), str(shards),
                          str(variants)], port)


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, to show what else ran meanwhile."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    return float(sum(parts) - idle), float(sum(parts))


class StaticShards:
    """Worker ``index`` of ``count`` reads every ``count``-th shard (no leases needed)."""

    renew_interval: float | None = None

    def __init__(self, index: int, count: int) -> None:
        self.index = index
        self.count = count

    async def acquire(self, eligible: Collection[str]) -> frozenset[str]:
        return frozenset(s for n, s in enumerate(sorted(eligible)) if n % self.count == self.index)

    async def release(self, shard_id: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


@dataclass(frozen=True)
class WorkerResult:
    events: int
    cpu: float


def _config(source: str, endpoint: str, shards: int) -> dict[str, Any]:
    src: dict[str, Any]
    if source == "sqs":
        src = {"type": "sqs", "queue_url": f"{endpoint}/123456789012/bench", "pollers": 4,
               "wait_time_seconds": 0}
    else:
        src = {"type": "kinesis", "stream_name": "bench", "max_records": 2000,
               "polls_per_second": 5, "idle_poll_interval": 0.0,
               "shard_discovery_interval": 3600}
    return {
        "service": {"region": "us-east-1", "in_flight_limit": 2000, "concurrency": 256},
        "metrics": {"enabled": False},
        "logging": {"level": "WARNING"},
        "sources": [src],
        "sinks": [{"type": "jsonl", "name": "null", "path": os.devnull, "ledger": False,
                   "routing": {"kinds": ["event", "detection", "incident", "action"]}}],
    }


async def _run_worker(source: str, endpoint: str, index: int, count: int, shards: int,
                      window: tuple[float, float]) -> WorkerResult:
    from pipeline.assemble import build_pipeline, open_context
    from pipeline.config import KinesisSourceConfig, parse_config
    from pipeline.sources import kinesis
    from pipeline.sources.base import InFlightBudget, Message, Outcome, Source
    from pipeline.state.memory import MemoryStore
    from pipeline.worker import Runner

    config = parse_config(_config(source, endpoint, shards), env={})
    ctx = await open_context(config, store=MemoryStore())
    pipeline = await build_pipeline(config, ctx, with_sources=source == "sqs")
    if source == "kinesis":
        budget = InFlightBudget(config.service.in_flight_limit)
        kconfig = config.sources[0]
        assert isinstance(kconfig, KinesisSourceConfig)
        pipeline.sources = [kinesis.KinesisSource(kconfig, ctx, budget,
                                                  ownership=StaticShards(index, count))]
    runner = Runner(pipeline.sources, pipeline.chain, concurrency=config.service.concurrency,
                    shutdown_deadline=5, on_close=[pipeline.aclose],
                    gc_policy=config.service.gc_policy())
    settled = 0

    def on_settled(_s: Source, _m: Message, _o: Outcome) -> None:
        nonlocal settled
        settled += 1

    runner.on_settled = on_settled
    marks: dict[str, tuple[int, float]] = {}
    loop = asyncio.get_running_loop()

    def mark(name: str) -> None:
        marks[name] = (settled, time.process_time())
        if name == "end":
            runner.stop()

    start, end = window
    loop.call_later(max(0.0, start - time.time()), mark, "start")
    loop.call_later(max(0.0, end - time.time()), mark, "end")
    await runner.run()
    (n0, c0), (n1, c1) = marks["start"], marks["end"]
    return WorkerResult(n1 - n0, c1 - c0)


def worker_main(source: str, endpoint: str, index: int, count: int, shards: int,
                window: tuple[float, float], out: Any) -> None:
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    # Only errors: the stop at the end of the window cancels in-flight work by design.
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    out.put(asyncio.run(_run_worker(source, endpoint, index, count, shards, window)))


@dataclass(frozen=True)
class FleetResult:
    workers: int
    events: int
    seconds: float
    worker_cpu: float
    server_cpu: float
    machine_cpu: float  # every process on the machine, ours included

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def per_cpu(self) -> float:
        """Events per CPU-second of the workers: what the machine's other load cannot skew."""
        return self.events / max(self.worker_cpu, 1e-9)


def run_fleet(source: str, workers: int, seconds: float, warmup: float, shards: int,
              variants: int) -> FleetResult:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = start_server(port, shards, variants)
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    start = time.time() + STARTUP + warmup
    window = (start, start + seconds)
    procs = [ctx.Process(target=worker_main,
                         args=(source, endpoint, i, workers, shards, window, out))
             for i in range(workers)]
    try:
        for p in procs:
            p.start()
        time.sleep(max(0.0, start - time.time()))
        server0, busy0 = proc_cpu(server.pid), machine_busy()
        time.sleep(max(0.0, window[1] - time.time()))
        server1, busy1 = proc_cpu(server.pid), machine_busy()
        results: list[WorkerResult] = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        server.terminate()
        server.wait(5)
    busy = (busy1[0] - busy0[0]) / CLK_TCK
    return FleetResult(workers, sum(r.events for r in results), seconds,
                       sum(r.cpu for r in results), server1 - server0, busy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["sqs", "kinesis"], default="sqs")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--shards", type=int, default=4, help="Kinesis shards (kinesis only)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per worker count; the best is kept (other load only slows)")
    parser.add_argument("--variants", type=int, default=1000,
                        help="distinct findings (each on its own instance) served in turn")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    print(f"source={args.source} window={args.seconds:.0f}s cores={os.cpu_count()} "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'workers':>7}{'events/s':>12}{'per worker':>12}{'worker CPU':>12}"
          f"{'µs CPU/event':>14}{'stand-in CPU':>14}{'machine CPU':>13}")
    results: list[FleetResult] = []
    for n in counts:
        runs = [run_fleet(args.source, n, args.seconds, args.warmup, args.shards, args.variants)
                for _ in range(max(1, args.repeat))]
        r = max(runs, key=lambda x: x.rate)
        results.append(r)
        print(f"{r.workers:>7}{r.rate:>12,.0f}{r.rate / r.workers:>12,.0f}"
              f"{r.worker_cpu / r.seconds:>11.2f}c"
              f"{1e6 * r.worker_cpu / max(1, r.events):>14.0f}"
              f"{r.server_cpu / r.seconds:>13.2f}c{r.machine_cpu / r.seconds:>12.2f}c")
    if len(results) >= 2 and results[0].workers == 1:
        one = results[0]
        for r in results[1:]:
            print(f"scaling {r.workers} vs 1: {r.rate / one.rate:.2f}x events/s "
                  f"(ideal {r.workers:.1f}x); CPU per event {r.per_cpu / one.per_cpu:.2f}x "
                  f"as efficient; workers got {r.worker_cpu / one.worker_cpu:.2f}x the CPU")
            cores = float(os.cpu_count() or 1)
            spare = min(float(r.workers), cores - r.server_cpu / r.seconds)
            projected = spare * r.per_cpu / (min(1.0, cores) * one.per_cpu)
            print(f"  on an otherwise idle machine (each worker given a whole core, less the "
                  f"stand-in's share) the same CPU per event would give ≈{projected:.2f}x")
        print("'c' = cores busy on average in the window; machine CPU includes every "
              "process on the host, so machine CPU minus worker and stand-in CPU is what "
              "other processes took")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
