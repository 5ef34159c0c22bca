"""Throughput of the spine: SQS and Kinesis sources → decode → normalize, CPU per event.

The AWS side is a canned local server in a separate process (bench/canned_aws.py), so
the figures measure this process's CPU (``time.process_time``), not the stand-in.
Printed beside them, measured in the same run on the same event:

* the cost of just parsing the event with orjson;
* the cost of the aiobotocore client alone receiving and deleting it (SQS) or
  fetching it (Kinesis): the floor no SQS consumer in Python goes below.

    python bench/bench_spine.py [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from bench.common import (  # noqa: E402
    BENCH,
    free_port,
    rss_mib,
    sqs_client_rate,
    start_process,
    stop_process,
    use_endpoint,
)
from pipeline.aws import AwsClients  # noqa: E402
from pipeline.chain import Chain  # noqa: E402
from pipeline.config import KinesisSourceConfig, SqsSourceConfig, parse_config  # noqa: E402
from pipeline.context import RuntimeContext  # noqa: E402
from pipeline.sources import envelopes, kinesis, sqs  # noqa: E402
from pipeline.sources.base import InFlightBudget, Message, Outcome, Source  # noqa: E402
from pipeline.stages import normalize  # noqa: E402
from pipeline.state.memory import MemoryStore  # noqa: E402
from pipeline.worker import Runner  # noqa: E402

SAMPLE = ROOT / "tests" / "fixtures" / "samples" / "guardduty" / "custodian-ec2-duty-event.json"


def start_server(port: int) -> subprocess.Popen[bytes]:
    return start_process([str(BENCH / "canned_aws.py"), str(port), str(SAMPLE)], port)


async def run_source(source_kind: str, endpoint: str, events: int) -> tuple[float, float]:
    config = parse_config({}, env={})
    aws = AwsClients("us-east-1")
    ctx = RuntimeContext(config=config, store=MemoryStore(), aws=aws)
    budget = InFlightBudget(2000)
    source: Source
    if source_kind == "sqs":
        source = sqs.SqsSource(SqsSourceConfig(
            queue_url=f"{endpoint}/123456789012/bench", pollers=4, wait_time_seconds=0),
            aws, budget)
    else:
        source = kinesis.build(KinesisSourceConfig(
            stream_name="bench", max_records=5000, polls_per_second=5), ctx, budget)
    chain = Chain([envelopes.build(config, ctx), normalize.build(config, ctx)], [])
    # The garbage-collector settings `riposte run` uses (service.gc_*).
    runner = Runner([source], chain, concurrency=512, shutdown_deadline=10,
                    gc_policy=config.service.gc_policy())
    done = 0

    def settled(_s: Any, _m: Message, _o: Outcome) -> None:
        nonlocal done
        done += 1
        if done >= events:
            runner.stop()

    runner.on_settled = settled
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await runner.run()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await aws.aclose()
    return done / cpu, done / wall


async def client_floor(source_kind: str, endpoint: str, events: int) -> float:
    """Events per CPU second for the bare aiobotocore client doing the same I/O."""
    if source_kind == "sqs":
        return await sqs_client_rate(f"{endpoint}/123456789012/bench", events)
    aws = AwsClients("us-east-1")
    n = 0
    cpu0 = time.process_time()
    client = await aws.client("kinesis")
    it = (await client.get_shard_iterator(StreamName="bench", ShardId="shardId-000000000000",
                                          ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
    while n < events:
        got = await client.get_records(ShardIterator=it, Limit=5000)
        n += len(got["Records"])
        it = got["NextShardIterator"]
    cpu = time.process_time() - cpu0
    await aws.aclose()
    return n / cpu


def parse_floor(events: int) -> float:
    body = orjson.dumps(orjson.loads(SAMPLE.read_bytes()))
    cpu0 = time.process_time()
    for _ in range(events):
        orjson.loads(body)
    return events / (time.process_time() - cpu0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20000)
    args = parser.parse_args()
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    use_endpoint(endpoint)
    server = start_server(port)
    try:
        parse_rate = parse_floor(args.events)
        print(f"{'path':<34}{'events/s per core':>20}{'wall events/s':>16}{'vs parse':>10}")
        print(f"{'orjson.loads only':<34}{parse_rate:>20,.0f}")
        for kind in ("sqs", "kinesis"):
            floor = asyncio.run(client_floor(kind, endpoint, args.events))
            cpu_rate, wall_rate = asyncio.run(run_source(kind, endpoint, args.events))
            print(f"{kind + ' client alone (aiobotocore)':<34}{floor:>20,.0f}")
            print(f"{kind + ' → decode → normalize':<34}{cpu_rate:>20,.0f}{wall_rate:>16,.0f}"
                  f"{parse_rate / cpu_rate:>9.1f}x")
        print(f"max RSS: {rss_mib():.0f} MiB")
    finally:
        stop_process(server)


if __name__ == "__main__":
    main()
