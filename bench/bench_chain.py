"""The full chain, queue to sinks: events/s per core, end-to-end latency, and time to isolation.

decode → normalize → trust → detect → correlate → score → contain → fanout, built
by ``pipeline.assemble.build_pipeline`` exactly as ``riposte run`` builds it, with
the SQLite state store and the three main sinks enabled and *required* (a message
is acknowledged only after Splunk HEC, Datadog and Security Hub took its items).
Everything it talks to is ``bench/fast_intakes.py`` in a separate process: the SQS
queue, EC2 (for containment's describes), Security Hub's ``BatchImportFindings``
(a local receiver serving the real JSON shape, reached through
``AWS_ENDPOINT_URL``; moto's Security Hub is too slow to be a throughput sink),
and the Splunk HEC and Datadog intakes.

Three runs, each printed with its target:

* ``throughput`` — the queue serves as fast as it is asked; events per CPU second
  of this process (target ≥ 2,000/s per core), containment in dry-run.
* ``latency`` — the queue offers 1,000 events/s; per-event time from the SQS
  ``SentTimestamp`` to the arrival of its items at each sink, stamped by the
  receiver process's clock (target p99 < 2 s, at the last of the three sinks).
* ``contain`` — GuardDuty EC2 findings only, containment policy ``ec2.isolate`` in
  enforce mode; time from the SQS ``SentTimestamp`` to the arrival of the
  ``ModifyInstanceAttribute`` request at the EC2 stand-in (target p99 < 1 s). The
  stand-in answers at once, so AWS API latency is a loopback round trip per call.

The event mix (by default) is 5 GuardDuty EC2 findings : 3 Inspector2 EC2 findings :
2 CloudTrail calls, over 5,000 instances, so findings correlate and incidents update.

    python bench/bench_chain.py [--events 6000] [--seconds 6] [--rate 1000]
                                [--only throughput|latency|contain] [--concurrency 1024]
                                [--mix gd,insp,ct,...] [--contain-mode observe|dry-run|enforce]
                                [--without SINK] [--python-gc] [--memory-store]
                                [--workers N]

``--workers N`` runs the latency measurement with N worker processes consuming the
queue together, as a fleet does (they share one SQLite state file on this host).
``--without``, ``--python-gc`` and ``--memory-store`` are diagnostics for "where the
time goes": leave one sink out, keep Python's own garbage-collector settings instead
of ``riposte run``'s, or swap the SQLite store for the in-memory one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from bench.common import (
    BENCH,
    CpuTimer,
    free_port,
    rss_mib,
    sqs_client_rate,
    start_process,
    stop_process,
    use_endpoint,
)
from bench.fast_intakes import ACCOUNT, DD_KEY, HEC_TOKEN, REGION

DEFAULT_MIX = "gd,gd,gd,gd,gd,insp,insp,insp,ct,ct"


def chain_config(endpoint: str, state_dir: str, *, mode: str, concurrency: int,
                 in_flight: int, without: tuple[str, ...] = ()) -> Any:
    from pipeline.config import parse_config

    config = parse_config({
        "service": {"region": REGION, "concurrency": concurrency, "in_flight_limit": in_flight},
        "metrics": {"enabled": False},
        "logging": {"level": "WARNING"},
        "state": {"type": "sqlite", "path": str(Path(state_dir) / "state.db")},
        "sources": [{"type": "sqs", "queue_url": f"{endpoint}/{ACCOUNT}/bench", "pollers": 4,
                     "wait_time_seconds": 20}],
        "containment": {
            "mode": mode, "accounts": [ACCOUNT], "regions": [REGION], "home_account": ACCOUNT,
            "rate_limit": {"actions_per_minute": 10_000},
            "policies": [{"name": "isolate-attacked-instances",
                          "match": {"resource_types": ["ec2.instance"],
                                    "finding_types": ["Backdoor:*"]},
                          "actions": [{"kind": "ec2.isolate"}]}]},
        "sinks": [
            {"type": "splunk_hec", "url": endpoint, "token": HEC_TOKEN, "verify_tls": False},
            {"type": "datadog", "api_key": DD_KEY, "intake_url": endpoint, "api_url": endpoint},
            {"type": "security_hub", "region": REGION, "account_id": ACCOUNT},
        ],
    }, env={})
    if without:  # a diagnostic: what one sink costs
        config = config.model_copy(update={
            "sinks": [s for s in config.sinks if s.type not in without]})
    return config


class WarningTally(logging.Handler):
    """Counts the pipeline's warnings by message instead of printing each one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.getMessage()[:90]] += 1

    def report(self) -> None:
        for message, count in self.counts.most_common(5):
            print(f"  log warning x{count}: {message}")
        self.counts.clear()


TALLY = WarningTally()


def fetch_stats(endpoint: str, since: int = 0) -> dict[str, Any]:
    with urllib.request.urlopen(f"{endpoint}/_bench/stats?since={since}",
                                timeout=30) as resp:
        return dict(orjson.loads(resp.read()))


async def run_chain(endpoint: str, args: argparse.Namespace, *, mode: str, settle_target: int,
                    warmup: int, seconds: float | None, state_dir: str | None = None,
                    fleet_settled: Any = None) -> dict[str, Any]:
    """Run the pipeline until ``settle_target`` messages settled (or ``seconds`` passed).

    In a fleet (``--workers``), every worker opens the same SQLite file in ``state_dir``
    and counts what it settles into ``fleet_settled`` (a shared ``multiprocessing``
    value); each stops once the fleet as a whole has settled ``settle_target``.
    """
    from pipeline.assemble import build_pipeline, open_context
    from pipeline.worker import Runner

    if state_dir is None:
        with tempfile.TemporaryDirectory(prefix="riposte-bench-") as temporary:
            return await run_chain(endpoint, args, mode=mode, settle_target=settle_target,
                                   warmup=warmup, seconds=seconds, state_dir=temporary,
                                   fleet_settled=fleet_settled)
    config = chain_config(endpoint, state_dir, mode=mode, concurrency=args.concurrency,
                          in_flight=args.in_flight, without=tuple(args.without))
    if args.memory_store:
        from pipeline.state.memory import MemoryStore

        ctx = await open_context(config, store=MemoryStore())
    else:
        ctx = await open_context(config)
    pipeline = await build_pipeline(config, ctx)
    runner = Runner(pipeline.sources, pipeline.chain, concurrency=config.service.concurrency,
                    shutdown_deadline=30, on_close=[pipeline.aclose],
                    gc_policy=None if args.python_gc else config.service.gc_policy())
    timer = CpuTimer()
    settled = 0
    outcomes: dict[str, int] = {}

    def on_settled(_s: Any, _m: Any, outcome: Any) -> None:
        nonlocal settled
        settled += 1
        outcomes[outcome.kind.value] = outcomes.get(outcome.kind.value, 0) + 1
        if settled == warmup:
            timer.start()
        if fleet_settled is not None:
            with fleet_settled.get_lock():
                fleet_settled.value += 1
                done = fleet_settled.value >= settle_target
        else:
            done = settled == settle_target
        if done and not runner.stopping:
            timer.stop()
            runner.stop()

    async def watch_fleet() -> None:
        # The message that completes the fleet's count may be another worker's.
        while fleet_settled.value < settle_target:  # noqa: ASYNC110 - another process's count
            await asyncio.sleep(0.1)
        if not runner.stopping:
            timer.stop()
            runner.stop()

    runner.on_settled = on_settled
    if warmup == 0:
        timer.start()
    task = asyncio.ensure_future(runner.run())
    watcher = asyncio.ensure_future(watch_fleet()) if fleet_settled is not None else None
    if seconds is not None:
        await asyncio.wait([task], timeout=seconds)
        if not task.done() and not runner.stopping:
            timer.stop()
            runner.stop()
    await task
    if watcher is not None:
        watcher.cancel()
    measured = settled - warmup if seconds is None else settled
    return {"settled": settled, "measured": measured, "cpu": timer.cpu, "wall": timer.wall,
            "outcomes": outcomes}


def with_intakes(extra: list[str]) -> tuple[str, Any]:
    port = free_port()
    proc = start_process([str(BENCH / "fast_intakes.py"), str(port), *extra], port)
    endpoint = f"http://127.0.0.1:{port}"
    use_endpoint(endpoint)
    os.environ["AWS_ENDPOINT_URL_SECURITYHUB"] = endpoint
    return endpoint, proc


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:,.0f} ms"


def sqs_yardstick(mix: str, messages: int = 3000) -> float:
    """The bare aiobotocore client receiving and deleting the same feed, per CPU second."""
    endpoint, proc = with_intakes(["--total", str(messages), "--mix", mix])
    try:
        return asyncio.run(sqs_client_rate(f"{endpoint}/{ACCOUNT}/bench", messages))
    finally:
        stop_process(proc)


def throughput(args: argparse.Namespace) -> tuple[float, dict[str, Any]]:
    yardstick = sqs_yardstick(args.mix)
    total = args.events + args.warmup
    endpoint, proc = with_intakes(["--total", str(total), "--mix", args.mix,
                                   "--resources", str(args.resources)])
    try:
        result = asyncio.run(run_chain(endpoint, args, mode=args.contain_mode, settle_target=total,
                                       warmup=args.warmup, seconds=None))
        stats = fetch_stats(endpoint)
    finally:
        stop_process(proc)
    per_core = result["measured"] / result["cpu"] if result["cpu"] else float("nan")
    print(f"[throughput] {result['measured']} events after {args.warmup} warm-up, "
          f"mix {stats['sent_by_kind']}, containment {args.contain_mode}, "
          f"{3 - len(args.without)} required sinks{', Python GC' if args.python_gc else ''}")
    print(f"  events/s per core (CPU)      {per_core:>10,.0f}   target >= 2,000  "
          f"{'MET' if per_core >= 2000 else 'NOT MET'}")
    print(f"  events/s wall                {result['measured'] / result['wall']:>10,.0f}   "
          f"(CPU {result['cpu']:.2f} s over {result['wall']:.2f} s wall)")
    print(f"  CPU per event                {result['cpu'] / result['measured'] * 1e6:>10,.0f} us")
    # The machine's speed varies from hour to hour: read the figure against this yardstick.
    print(f"  yardstick: SQS client alone  {yardstick:>10,.0f} msgs/s per core "
          f"(the chain runs at {per_core / yardstick:.3f} of it)")
    print(f"  outcomes {result['outcomes']}; sink requests {stats['requests']}; "
          f"items with markers {stats['markers']}; EC2 calls {stats['ec2_calls']}")
    return per_core, stats


def _fleet_worker(endpoint: str, args: argparse.Namespace, total: int, state_dir: str,
                  fleet_settled: Any, results: Any) -> None:
    """Another worker process of a ``--workers`` latency run (same queue, same state file)."""
    use_endpoint(endpoint)
    os.environ["AWS_ENDPOINT_URL_SECURITYHUB"] = endpoint
    results.put(asyncio.run(run_chain(endpoint, args, mode=args.contain_mode,
                                      settle_target=total, warmup=0,
                                      seconds=args.seconds * 6 + 30, state_dir=state_dir,
                                      fleet_settled=fleet_settled)))


def _fleet_latency_run(endpoint: str, args: argparse.Namespace, total: int
                       ) -> list[dict[str, Any]]:
    """This process and ``args.workers - 1`` others consume the queue until it is drained."""
    spawn = mp.get_context("spawn")
    fleet_settled = spawn.Value("q", 0)
    results = spawn.Queue()
    with tempfile.TemporaryDirectory(prefix="riposte-bench-fleet-") as state_dir:
        others = [spawn.Process(target=_fleet_worker, daemon=True,
                                args=(endpoint, args, total, state_dir, fleet_settled, results))
                  for _ in range(args.workers - 1)]
        for worker in others:
            worker.start()
        mine = asyncio.run(run_chain(endpoint, args, mode=args.contain_mode,
                                     settle_target=total, warmup=0,
                                     seconds=args.seconds * 6 + 30, state_dir=state_dir,
                                     fleet_settled=fleet_settled))
        theirs = [results.get(timeout=120) for _ in others]
        for worker in others:
            worker.join(timeout=30)
    return [mine, *theirs]


def latency(args: argparse.Namespace) -> dict[str, Any]:
    total = int(args.rate * args.seconds)
    endpoint, proc = with_intakes(["--rate", str(args.rate), "--total", str(total),
                                   "--mix", args.mix, "--resources", str(args.resources)])
    try:
        # The queue stops offering after ``seconds``; the run goes on until every message
        # offered has settled (or a cap), so a backlog shows up as latency, not as loss.
        if args.workers > 1:
            runs = _fleet_latency_run(endpoint, args, total)
        else:
            runs = [asyncio.run(run_chain(endpoint, args, mode=args.contain_mode,
                                          settle_target=total, warmup=0,
                                          seconds=args.seconds * 6 + 30))]
        time.sleep(0.5)
        stats = fetch_stats(endpoint, since=int(args.rate * 2))
    finally:
        stop_process(proc)
    result = {"settled": sum(r["settled"] for r in runs), "wall": max(r["wall"] for r in runs)}
    busy = ", ".join(f"{r['cpu'] / r['wall']:.0%}" for r in runs)
    fleet = f" by {len(runs)} worker processes sharing one SQLite file" if len(runs) > 1 else ""
    lat = stats["latency"]
    print(f"[latency] offered {args.rate:,.0f} events/s for {args.seconds:.0f} s ({total} "
          f"events; the first 2 s are excluded: {stats['sent_since']} measured); "
          f"{result['settled']} settled in {result['wall']:.1f} s{fleet}; CPU busy "
          f"{busy} of one core")
    print(f"  {'SentTimestamp -> sink':<28}{'n':>7}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}")
    for name in ("first_sink", "splunk_hec", "datadog", "security_hub", "all_sinks"):
        q = lat[name]
        if q["n"]:
            print(f"  {name:<28}{q['n']:>7}{ms(q['p50']):>10}{ms(q['p90']):>10}"
                  f"{ms(q['p99']):>10}{ms(q['max']):>10}")
    p99 = lat["all_sinks"].get("p99")
    verdict = "MET" if p99 is not None and p99 < 2 and result["settled"] >= total else "NOT MET"
    if args.rate != 1000:
        verdict = "(the target is set at 1,000/s; this run is not)"
    workers = f" with {len(runs)} workers" if len(runs) > 1 else ""
    print(f"  p99 at the last sink {ms(p99)}{workers}   target < 2 s at 1,000/s  {verdict}")
    return stats


def contain(args: argparse.Namespace) -> dict[str, Any]:
    total = int(args.contain_rate * args.contain_seconds)
    endpoint, proc = with_intakes(["--rate", str(args.contain_rate), "--total", str(total),
                                   "--mix", "gd", "--resources", str(10**9)])
    try:
        asyncio.run(run_chain(endpoint, args, mode="enforce", settle_target=total, warmup=0,
                              seconds=args.contain_seconds * 6 + 30))
        time.sleep(0.5)
        stats = fetch_stats(endpoint, since=int(args.contain_rate))
    finally:
        stop_process(proc)
    q = stats["isolate"]
    print(f"[contain] GuardDuty EC2 findings at {args.contain_rate:,.0f}/s for "
          f"{args.contain_seconds:.0f} s, ec2.isolate in enforce mode (first 1 s excluded); "
          f"EC2 calls {stats['ec2_calls']}")
    isolated = stats["ec2_calls"].get("ModifyInstanceAttribute", 0)
    print(f"  findings sent {stats['sent']}, instances isolated {isolated}")
    if q["n"]:
        print(f"  SentTimestamp -> ModifyInstanceAttribute issued: n {q['n']}, p50 "
              f"{ms(q['p50'])}, p90 {ms(q['p90'])}, p99 {ms(q['p99'])}, max {ms(q['max'])}   "
              f"target p99 < 1 s  {'MET' if q['p99'] < 1 else 'NOT MET'}")
    else:
        print("  no isolation call arrived: containment did not run (check the policy)")
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=6000, help="measured events (throughput)")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=6.0, help="latency run length")
    parser.add_argument("--rate", type=float, default=1000.0, help="offered events/s (latency)")
    parser.add_argument("--contain-rate", type=float, default=50.0)
    parser.add_argument("--contain-seconds", type=float, default=8.0)
    parser.add_argument("--mix", default=DEFAULT_MIX,
                        help="kinds served in rotation: gd (GuardDuty), insp, ct (CloudTrail)")
    parser.add_argument("--resources", type=int, default=5000,
                        help="distinct instances / principals; 1 puts everything in one lane")
    parser.add_argument("--concurrency", type=int, default=1024,
                        help="service.concurrency: messages worked on at once")
    parser.add_argument("--in-flight", type=int, default=4096, help="service.in_flight_limit")
    parser.add_argument("--only", choices=["throughput", "latency", "contain"])
    parser.add_argument("--workers", type=int, default=1,
                        help="latency run: worker processes consuming the queue together, "
                             "as a fleet does (one SQLite file shared on this host)")
    parser.add_argument("--without", action="append", default=[],
                        choices=["splunk_hec", "datadog", "security_hub"],
                        help="leave this sink out (diagnostic; the target is with all three)")
    parser.add_argument("--python-gc", action="store_true",
                        help="keep Python's own garbage-collector settings (not riposte run's)")
    parser.add_argument("--memory-store", action="store_true",
                        help="MemoryStore instead of SQLite (to separate the store's cost)")
    parser.add_argument("--contain-mode", default="dry-run",
                        choices=["observe", "dry-run", "enforce"],
                        help="containment mode of the throughput and latency runs")
    args = parser.parse_args()
    store = "MemoryStore" if args.memory_store else "SQLite state"
    sinks = " + ".join(n for n in ("splunk_hec", "datadog", "security_hub")
                       if n not in args.without)
    print(f"full chain, {store}, sinks: {sinks} (required), "
          f"service.concurrency={args.concurrency}, in_flight_limit={args.in_flight}")
    logging.getLogger().addHandler(TALLY)
    logging.getLogger().setLevel(logging.WARNING)
    if args.only in (None, "throughput"):
        throughput(args)
        TALLY.report()
    if args.only in (None, "latency"):
        latency(args)
        TALLY.report()
    if args.only in (None, "contain"):
        contain(args)
        TALLY.report()
    print(f"max RSS of the pipeline process: {rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
