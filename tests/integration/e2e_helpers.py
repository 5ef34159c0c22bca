"""Helpers for end-to-end tests: event factories, feeding queues, running `riposte run`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
GUARDDUTY_EVENT = FIXTURES / "samples" / "guardduty" / "custodian-ec2-duty-event.json"


def guardduty_events(n: int, prefix: str) -> list[tuple[str, bytes]]:
    """``n`` distinct GuardDuty EventBridge events built from a real sample: (finding id, body)."""
    template = orjson.loads(GUARDDUTY_EVENT.read_bytes())
    out = []
    for i in range(n):
        event = dict(template)
        detail = dict(event["detail"])
        finding_id = f"{prefix}{i:06d}"
        detail["id"] = finding_id
        detail["arn"] = detail["arn"].rsplit("/", 1)[0] + "/" + finding_id
        # Spread over many instances so per-resource lanes run concurrently.
        detail["resource"] = {"resourceType": "Instance",
                              "instanceDetails": {"instanceId": f"i-{i % 97:017x}"}}
        event["detail"] = detail
        event["id"] = f"evt-{finding_id}"
        out.append((finding_id, orjson.dumps(event)))
    return out


def read_jsonl_ids(path: Path, kind: str = "event") -> Counter[str]:
    ids: Counter[str] = Counter()
    if not path.exists():
        return ids
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line cut by SIGKILL mid-write
        if item.get("item_kind") == kind:
            ids[item["id"]] += 1
    return ids


def send_batches(sqs: Any, queue_url: str, bodies: Iterable[bytes]) -> int:
    batch: list[dict[str, str]] = []
    sent = 0
    for body in bodies:
        batch.append({"Id": str(len(batch)), "MessageBody": body.decode()})
        if len(batch) == 10:
            sqs.send_message_batch(QueueUrl=queue_url, Entries=batch)
            sent += len(batch)
            batch = []
    if batch:
        sqs.send_message_batch(QueueUrl=queue_url, Entries=batch)
        sent += len(batch)
    return sent


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def write_config(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


def start_riposte(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``riposte run`` in a child process, with the test session's AWS environment."""
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "pipeline", "run", "-c", str(config)],
                                stdout=handle, stderr=handle, env=dict(os.environ))


def drain_queue(sqs: Any, queue_url: str, settle_seconds: float = 2.0) -> list[dict[str, Any]]:
    """Receive everything left on a queue (visibility long enough not to see a message twice).

    Stops after ``settle_seconds`` of empty receives: pass at least the queue's visibility
    timeout to also collect messages a stopped consumer held when it went away.
    """
    out: list[dict[str, Any]] = []
    empty_since = time.monotonic()
    while time.monotonic() - empty_since < settle_seconds:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                  VisibilityTimeout=600, WaitTimeSeconds=1,
                                  MessageAttributeNames=["All"])
        msgs = got.get("Messages", [])
        if msgs:
            empty_since = time.monotonic()
        out.extend(msgs)
    return out
