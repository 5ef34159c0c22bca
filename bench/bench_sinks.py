"""Fan-out throughput: items per CPU-second through FanoutStage to Splunk HEC and Datadog.

The intakes are the local fakes from tests/httpfakes.py running in a *separate
process*, so their parsing does not count against the pipeline's CPU; the figure
is this process's ``time.process_time()``, i.e. events per second per core spent
in routing, the delivery ledger, batching, encoding, gzip and HTTP.

    python bench/bench_sinks.py [--items 20000] [--concurrency 256] [--no-gzip]
                                [--no-ledger] [--kind incident|event]
                                [--store memory|sqlite]

Printed beside the figures: the cost of serializing one item with orjson
(``serde.dumps``), measured in the same run, as a yardstick.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEC_TOKEN = "bench-token"
DD_KEY = "bench-key"


def _serve(conn: Connection) -> None:
    from tests.httpfakes import DatadogFake, SplunkHecFake

    async def main() -> None:
        async with SplunkHecFake(HEC_TOKEN) as hec, DatadogFake(DD_KEY) as dd:
            conn.send((hec.url, dd.url))
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, conn.recv)  # wait for "stop"
            conn.send((len(hec.events), len(dd.entries)))

    asyncio.run(main())


async def run(args: argparse.Namespace, hec_url: str, dd_url: str) -> dict[str, Any]:
    from pipeline.aws import AwsClients
    from pipeline.config import parse_config
    from pipeline.context import RuntimeContext
    from pipeline.serde import dumps
    from pipeline.state.memory import MemoryStore
    from sinks.fanout import build
    from tests.sink_items import event, incident

    kinds = ["incident", "event"] if args.kind == "event" else ["incident"]
    common = {"routing": {"kinds": kinds}, "ledger": not args.no_ledger,
              "batching": {"max_items": 500, "max_bytes": 4_000_000, "linger": 0.05},
              "concurrency": 8}
    config = parse_config({"sinks": [
        {"type": "splunk_hec", "url": hec_url, "token": HEC_TOKEN, "gzip": not args.no_gzip,
         **common},
        {"type": "datadog", "api_key": DD_KEY, "intake_url": dd_url, "api_url": dd_url,
         "gzip": not args.no_gzip, **common},
    ]}, env={})
    store: Any
    if args.store == "sqlite":
        import tempfile

        from pipeline.state.sqlite import SqliteStore

        store = await SqliteStore.open(Path(tempfile.mkdtemp()) / "bench-state.db")
    else:
        store = MemoryStore()
    ctx = RuntimeContext(config=config, store=store, aws=AwsClients())
    fan = build(config, ctx)
    await fan.start()
    make = event if args.kind == "event" else incident
    items = [make(i) for i in range(args.items)]

    sample = items[0]
    started = time.perf_counter()
    for _ in range(2000):
        dumps(sample)
    dumps_us = (time.perf_counter() - started) / 2000 * 1e6

    latencies: list[float] = []
    feed = iter(items)

    async def worker() -> None:
        # A fixed pool of workers, like the runner's: no semaphore queue of 20,000 waiters.
        for item in feed:
            t0 = time.perf_counter()
            await fan.process(item)
            latencies.append(time.perf_counter() - t0)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await fan.aclose()
    await store.aclose()
    latencies.sort()
    return {
        "items": args.items, "cpu_s": cpu, "wall_s": wall,
        "per_core": args.items / cpu if cpu else float("inf"),
        "per_wall": args.items / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "dumps_us": dumps_us,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--no-gzip", action="store_true")
    parser.add_argument("--no-ledger", action="store_true")
    parser.add_argument("--kind", choices=["incident", "event"], default="incident")
    parser.add_argument("--store", choices=["memory", "sqlite"], default="memory",
                        help="where the delivery ledger lives")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(child,), daemon=True)
    server.start()
    hec_url, dd_url = parent.recv()
    try:
        result = asyncio.run(run(args, hec_url, dd_url))
    finally:
        parent.send("stop")
        counts = parent.recv() if parent.poll(10) else ("?", "?")
        server.join(5)
    print(f"fan-out to Splunk HEC + Datadog (fakes in another process), {args.kind}s, "
          f"gzip={'off' if args.no_gzip else 'on'}, "
          f"ledger={'off' if args.no_ledger else args.store}")
    print(f"  items                 {result['items']}")
    print(f"  received (hec, dd)    {counts[0]}, {counts[1]}")
    print(f"  CPU seconds           {result['cpu_s']:.2f}")
    print(f"  items/s per core      {result['per_core']:,.0f}")
    print(f"  items/s wall          {result['per_wall']:,.0f}")
    print(f"  process() p50 / p99   {result['p50_ms']:.1f} ms / {result['p99_ms']:.1f} ms")
    print(f"  yardstick: serde.dumps of one item = {result['dumps_us']:.1f} us")


if __name__ == "__main__":
    main()
