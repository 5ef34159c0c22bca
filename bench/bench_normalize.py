"""Normalize throughput per core, printed next to the cost of just parsing the same bytes.

    python bench/bench_normalize.py [--seconds 2]

Inputs are the project's sample copies and derived fixtures (every kind and shape:
EventBridge events, bare findings, CloudTrail records, Security Hub fan-outs). The
figures are CPU time (``time.process_time``) of this process: parse only (orjson),
then parse + normalize, per input file kind and overall.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import orjson

from pipeline.models import RawRecord
from pipeline.stages.normalize import NormalizeStage

ROOT = Path(__file__).resolve().parent.parent
INPUTS = (ROOT / "tests" / "fixtures" / "samples", ROOT / "tests" / "fixtures" / "derived")
SKIP = ("envelopes",)  # transport wrappers belong to the decode stage's benchmark


def load_inputs() -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for root in INPUTS:
        for path in sorted(root.rglob("*.json")):
            rel = path.relative_to(root)
            if path.name == "manifest.json" or rel.parts[0] in SKIP:
                continue
            out.append((rel.parts[0], path.read_bytes()))
    return out


def measure(fn: object, seconds: float) -> tuple[int, float]:
    """Run ``fn`` (returns events produced) repeatedly for about ``seconds`` of CPU."""
    assert callable(fn)
    events = 0
    start = time.process_time()
    while True:
        for _ in range(50):
            events += fn()
        elapsed = time.process_time() - start
        if elapsed >= seconds:
            return events, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    stage = NormalizeStage()
    inputs = load_inputs()
    by_kind: dict[str, list[bytes]] = defaultdict(list)
    for kind, body in inputs:
        by_kind[kind].append(body)

    def parse_only(bodies: list[bytes]) -> int:
        for body in bodies:
            orjson.loads(body)
        return len(bodies)

    def parse_and_normalize(bodies: list[bytes]) -> int:
        n = 0
        for i, body in enumerate(bodies):
            n += len(stage.normalize(RawRecord(payload=orjson.loads(body),
                                               message_id=f"b-{i}", received_at=1.0)))
        return n

    print(f"{'input':<12} {'files':>5} {'events':>6} {'parse µs/file':>14} "
          f"{'parse+normalize µs/event':>25} {'normalize µs/event':>19} {'events/s/core':>14}")
    for kind, bodies in [*sorted(by_kind.items()), ("ALL", [b for _, b in inputs])]:
        files, parse_s = measure(lambda bodies=bodies: parse_only(bodies), args.seconds / 4)
        events, total_s = measure(lambda bodies=bodies: parse_and_normalize(bodies),
                                  args.seconds)
        per_file_parse = parse_s / files
        # Files per event differ (a placebo file holds 4 findings): scale parse per event.
        events_per_file = parse_and_normalize(bodies) / len(bodies)
        per_event = total_s / events
        normalize_only = per_event - per_file_parse / events_per_file
        print(f"{kind:<12} {len(bodies):>5} {round(events_per_file * len(bodies)):>6} "
              f"{per_file_parse * 1e6:>14.1f} {per_event * 1e6:>25.1f} "
              f"{normalize_only * 1e6:>19.1f} {1 / per_event:>14,.0f}")


if __name__ == "__main__":
    main()
