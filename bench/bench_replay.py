"""Replay throughput from local gzipped CloudTrail log files, per core, and its peak memory.

    python bench/bench_replay.py [--records 20000 200000] [--per-file 500] [--principals 200]
                                 [--state sqlite|memory] [--repeat 3]

Writes an ``AWSLogs/<account>/CloudTrail/<region>/YYYY/MM/DD/*.json.gz`` tree built
from the project's real CloudTrail fixtures (event ids, times, principals, APIs,
source addresses and user agents varied), then runs ``run_replay`` over it with
the default configuration (every CloudTrail rule on, first-seen baselines in a
fresh SQLite file). Each size runs in its own child process so that peak RSS
(``ru_maxrss``) belongs to that size alone. Prints records/s per core (records /
process CPU seconds, all threads counted, since SQLite runs on its own thread)
beside the cost of JSON parsing + normalize alone on the same records; flat peak
RSS across sizes is what streaming means. A first replay over an empty directory
pays the imports beforehand; its CPU is printed as startup, once per process. Each
size runs ``--repeat`` times (3 by default) and the best run is reported, with the
median and worst beside it: on a shared machine, interference only ever adds time.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gzip
import json
import os
import random
import resource
import subprocess
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

ACCOUNT = "187901811700"
REGIONS = ["us-east-1", "eu-west-1"]


def _templates() -> list[dict[str, Any]]:
    """Raw CloudTrail records: the fixtures' own, or the ``detail`` of an EventBridge one."""
    out = []
    for path in sorted(BASE.glob("*.json")):
        doc = orjson.loads(path.read_bytes())
        record = doc.get("detail", doc) if "detail-type" in doc else doc
        out.append({k: v for k, v in record.items() if not k.startswith("p_")})
    return out


def write_tree(root: Path, records: int, per_file: int, principals: int, *,
               noise: float = 0.01, seed: int = 7) -> int:
    """The archive; returns how many files were written."""
    rng = random.Random(seed)
    templates = _templates()
    files = 0
    for start in range(0, records, per_file):
        batch = []
        for i in range(start, min(records, start + per_file)):
            rec = copy.deepcopy(rng.choice(templates))
            user = f"user{rng.randrange(principals)}"
            source, name = rng.choice(APIS)
            ident = rec.setdefault("userIdentity", {})
            ident.update({"type": "IAMUser", "userName": user, "accountId": ACCOUNT,
                          "arn": f"arn:aws:iam::{ACCOUNT}:user/{user}",
                          "accessKeyId": f"AKIA{zlib.crc32(user.encode()):016d}"})
            rec.update({
                "eventID": str(uuid.UUID(int=rng.getrandbits(128))),
                "eventTime": (T0 + timedelta(seconds=2 * i + rng.random()))
                .strftime("%Y-%m-%dT%H:%M:%SZ"),
                "eventSource": source, "eventName": name, "awsRegion": rng.choice(REGIONS),
                "recipientAccountId": ACCOUNT,
                # Mostly from inside (the trusted private ranges) with the usual SDKs; a
                # small share from outside or with odd agents, so rules do fire.
                "sourceIPAddress": (f"10.0.{rng.randrange(256)}.{rng.randrange(1, 255)}"
                                    if rng.random() >= noise else
                                    f"198.51.{rng.randrange(256)}.7"),
                "userAgent": AGENTS[rng.randrange(2)] if rng.random() >= noise
                else rng.choice(AGENTS),
            })
            batch.append(rec)
        when = T0 + timedelta(seconds=2 * start)
        region = REGIONS[files % len(REGIONS)]
        folder = root / "AWSLogs" / ACCOUNT / "CloudTrail" / region / when.strftime("%Y/%m/%d")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{ACCOUNT}_CloudTrail_{region}_{when:%Y%m%dT%H%MZ}_{files:06d}.json.gz"
        (folder / name).write_bytes(gzip.compress(orjson.dumps({"Records": batch}), 5))
        files += 1
    return files


def _parse_cost(root: Path, limit: int) -> float:
    """CPU seconds per record for gunzip + JSON parse + normalize alone (the floor)."""
    from pipeline.models import RawRecord
    from pipeline.stages.normalize import NormalizeStage

    normalize = NormalizeStage()
    done = 0
    started = time.process_time()
    for path in sorted(root.rglob("*.json.gz")):
        for rec in orjson.loads(gzip.decompress(path.read_bytes()))["Records"]:
            normalize.normalize(RawRecord(payload=rec, message_id=rec["eventID"]))
            done += 1
        if done >= limit:
            break
    return (time.process_time() - started) / max(1, done)


async def _startup(empty: Path) -> float:
    """CPU seconds of a first replay over nothing: importing and building the chain.

    Paid once per process, so it is reported on its own and kept out of the
    per-record figure, which is what an archive of any length costs per record.
    """
    started = time.process_time()
    from pipeline.config import RiposteConfig
    from pipeline.replay import ReplayOptions, run_replay

    await run_replay(RiposteConfig(), ReplayOptions(inputs=[str(empty)], state_path=":memory:"))
    return time.process_time() - started


async def _replay(root: Path, state: str | None) -> dict[str, Any]:
    from pipeline.config import RiposteConfig
    from pipeline.replay import ReplayOptions, run_replay

    started = time.process_time()
    result = await run_replay(RiposteConfig(), ReplayOptions(inputs=[str(root)],
                                                             state_path=state))
    cpu = time.process_time() - started
    return {"records": result.events, "files": result.inputs, "cpu": cpu,
            "errors": sum(result.errors.values()),
            "detections": sum(result.detections_by_rule.values()),
            "incidents": len(result.incidents)}


def child(records: int, per_file: int, principals: int, state: str | None) -> None:
    """One size, in its own process: generate, replay, print one JSON line."""
    os.environ.setdefault("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never real AWS
    with tempfile.TemporaryDirectory(prefix="riposte-bench-replay-") as tmp:
        root = Path(tmp)
        files = write_tree(root, records, per_file, principals)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        empty = root / "empty"
        empty.mkdir()
        startup = asyncio.run(_startup(empty))
        parse_us = _parse_cost(root, 20000) * 1e6
        out = asyncio.run(_replay(root, state))
        out.update(files_written=files, parse_us=parse_us, rss_before_kib=rss_before,
                   startup_ms=startup * 1e3,
                   peak_rss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        print(json.dumps(out))


def _run_size(args: argparse.Namespace, records: int) -> dict[str, Any]:
    """One replay of ``records`` records in a fresh child process."""
    proc = subprocess.run([sys.executable, __file__, "--child", "--records", str(records),
                           "--per-file", str(args.per_file),
                           "--principals", str(args.principals), "--state", args.state],
                          capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _us(run: dict[str, Any]) -> float:
    return float(run["cpu"]) / int(run["records"]) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[20000, 200000])
    parser.add_argument("--per-file", type=int, default=500)
    parser.add_argument("--principals", type=int, default=200)
    parser.add_argument("--state", choices=("sqlite", "memory"), default="sqlite",
                        help="replay state: a fresh SQLite file (default) or :memory:")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per size, each in a fresh process (default 3): the best is "
                             "reported, since other processes' interference only ever adds "
                             "time; the median and worst are printed beside it")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.records[0], args.per_file, args.principals,
              ":memory:" if args.state == "memory" else None)
        return
    print(f"replay of gzipped CloudTrail files ({args.per_file} records/file, "
          f"{args.principals} principals, default config, {args.state} state, "
          f"best of {args.repeat})")
    for n in args.records:
        runs = sorted((_run_size(args, n) for _ in range(max(1, args.repeat))), key=_us)
        r = runs[0]
        print(f"records {r['records']:>8}  files {r['files']:>5}  "
              f"{1e6 / _us(r):8.0f} records/s per core ({_us(r):6.1f} us/record)"
              f"  peak RSS {r['peak_rss_kib'] / 1024:6.1f} MiB"
              f"  (gunzip+parse+normalize alone {r['parse_us']:.1f} us/record; "
              f"detections {r['detections']}, incidents {r['incidents']}, "
              f"errors {r['errors']})")
        if len(runs) > 1:
            median, worst = runs[len(runs) // 2], runs[-1]
            print(f"{'':>32}median {1e6 / _us(median):8.0f} ({_us(median):.1f} us/record), "
                  f"worst {1e6 / _us(worst):8.0f} ({_us(worst):.1f} us/record) of {len(runs)}"
                  f" runs; startup {r['startup_ms']:.0f} ms CPU, once per process, not in "
                  f"the rate")


if __name__ == "__main__":
    main()
