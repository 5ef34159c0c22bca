"""Throughput of normalize -> trust -> detect (every CloudTrail rule) per core.

    python bench/bench_detect.py [--events 20000] [--principals 2000]
                                 [--store sqlite|memory|writeback]

Feeds CloudTrail records derived from the project's fixtures (principals, APIs,
source addresses, regions and user agents varied at random, a few sensitive and
IAM-policy calls mixed in) through the real stages with every rule enabled,
the first-seen baseline writing to the chosen state store (``writeback``: SQLite
behind the write-back layer replay uses). Prints events/s per core (events /
process CPU seconds, all threads counted, since SQLite runs on its own thread)
next to the cost of normalize alone, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import random
import sys
import tempfile
import time
import uuid
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cloudtrail_workload import AGENTS, APIS, BASE, T0  # noqa: E402
from pipeline.aws import AwsClients  # noqa: E402
from pipeline.clock import EventTimeClock  # noqa: E402
from pipeline.config import RiposteConfig  # noqa: E402
from pipeline.context import RuntimeContext  # noqa: E402
from pipeline.models import RawRecord  # noqa: E402
from pipeline.stages.detect import build as build_detect  # noqa: E402
from pipeline.stages.normalize import NormalizeStage  # noqa: E402
from pipeline.state.base import StateStore  # noqa: E402
from pipeline.state.memory import MemoryStore  # noqa: E402
from pipeline.state.sqlite import SqliteStore  # noqa: E402
from pipeline.state.writeback import WriteBackStore  # noqa: E402
from pipeline.trust import build as build_trust  # noqa: E402

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-2"]


def records(n: int, principals: int, rng: random.Random) -> list[bytes]:
    base: dict[str, Any] = orjson.loads((BASE / "panther-getcalleridentity-awscli.json")
                                        .read_bytes())
    out: list[bytes] = []
    for i in range(n):
        rec = copy.deepcopy(base)
        user = f"user{rng.randrange(principals)}"
        source, name = rng.choice(APIS)
        ident = rec["userIdentity"]
        ident["userName"] = user
        ident["arn"] = f"arn:aws:iam::187901811700:user/{user}"
        ident["accessKeyId"] = f"AKIA{zlib.crc32(user.encode()):016d}"
        rec.update({
            "eventID": str(uuid.UUID(int=rng.getrandbits(128))),
            "eventTime": (T0 + timedelta(seconds=30 * i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "eventSource": source, "eventName": name, "awsRegion": rng.choice(REGIONS),
            "sourceIPAddress": rng.choice(["10.0.3.4", "73.252.165.138",
                                           f"198.51.{rng.randrange(256)}.7"]),
            "userAgent": rng.choice(AGENTS),
        })
        out.append(orjson.dumps(rec))
    return out


async def run(args: argparse.Namespace) -> None:
    rng = random.Random(7)
    payloads = records(args.events, args.principals, rng)
    clock = EventTimeClock()
    tmp = tempfile.TemporaryDirectory()
    store: StateStore
    if args.store == "sqlite":
        store = await SqliteStore.open(Path(tmp.name) / "bench.db", clock=clock)
    elif args.store == "writeback":
        store = await WriteBackStore.wrap(
            await SqliteStore.open(Path(tmp.name) / "bench.db", clock=clock), clock,
            keep=False)
    else:
        store = MemoryStore(clock)
    config = RiposteConfig()
    ctx = RuntimeContext(config=config, store=store, aws=AwsClients(), clock=clock)
    normalize, trust, detect = NormalizeStage(), build_trust(config, ctx), build_detect(config, ctx)

    started = time.process_time()
    for i, raw in enumerate(payloads):
        normalize.normalize(RawRecord(payload=orjson.loads(raw), message_id=str(i)))
    normalize_cpu = time.process_time() - started

    detections = 0
    started = time.process_time()
    for i, raw in enumerate(payloads):
        (event,) = normalize.normalize(RawRecord(payload=orjson.loads(raw), message_id=str(i)))
        clock.advance_to(event.time)
        (trusted,) = await trust.process(event)
        detections += len(await detect.process(trusted)) - 1
    total_cpu = time.process_time() - started
    await store.aclose()
    tmp.cleanup()

    n = len(payloads)
    print(f"events: {n}  principals: {args.principals}  store: {args.store}  "
          f"rules: {len(detect.rules)}  detections: {detections}")
    print(f"normalize only:           {n / normalize_cpu:10.0f} events/s per core "
          f"({normalize_cpu / n * 1e6:.1f} us/event)")
    print(f"normalize+trust+detect:   {n / total_cpu:10.0f} events/s per core "
          f"({total_cpu / n * 1e6:.1f} us/event)")
    print(f"trust+detect alone:       {(total_cpu - normalize_cpu) / n * 1e6:10.1f} us/event")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--principals", type=int, default=2000)
    parser.add_argument("--store", choices=("sqlite", "memory", "writeback"), default="sqlite")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
