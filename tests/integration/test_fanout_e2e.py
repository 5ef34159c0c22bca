"""End to end through `riposte run`: a required Splunk HEC that is down, then back.

SQS (moto server) feeds the real service in a child process; the sinks are a
JSON-lines file and a local Splunk HEC receiver (tests/httpfakes.py) served by
this test's event loop. While the receiver resets every connection, no message
may be acknowledged (they stay on the queue and come back); once it is back,
every event reaches Splunk exactly once, the JSON-lines sink, which accepted
everything the first time, never gets a second copy (the delivery ledger), and
the queue ends empty.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.httpfakes import SplunkHecFake
from tests.integration.e2e_helpers import (
    guardduty_events,
    read_jsonl_ids,
    send_batches,
    start_riposte,
    write_config,
)

pytestmark = pytest.mark.integration

TOKEN = "e2e-hec-token"


async def until(predicate: Callable[[], bool], within: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()


def queue_depth(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"])


async def test_required_splunk_down_then_back_delays_acks_and_loses_nothing(
        boto: Any, tmp_path: Path) -> None:
    sqs = boto("sqs")
    name = f"fanout-e2e-{uuid.uuid4().hex[:8]}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    out = tmp_path / "out.jsonl"
    events = guardduty_events(30, f"fan-{uuid.uuid4().hex[:6]}-")
    async with SplunkHecFake(TOKEN) as splunk:
        config = write_config(tmp_path / "riposte.toml", f"""
[service]
region = "us-east-1"
in_flight_limit = 100
concurrency = 32
shutdown_deadline = 5

[metrics]
enabled = false

[state]
type = "sqlite"
path = "{tmp_path / 'state.db'}"

[[sources]]
type = "sqs"
name = "sqs"
queue_url = "{url}"
dead_letter_queue_url = "{dlq}"
wait_time_seconds = 1
visibility_timeout = 30
max_receive_count = 100
retry_base_delay = 0.2
retry_max_delay = 1.0

[[sinks]]
type = "jsonl"
name = "out"
path = "{out}"
routing = {{ kinds = ["event"] }}

[[sinks]]
type = "splunk_hec"
name = "splunk"
url = "{splunk.url}"
token = "{TOKEN}"
routing = {{ kinds = ["event"] }}
batching = {{ max_items = 50, linger = 0.05 }}
retry = {{ max_attempts = 3, base_delay = 0.05, max_delay = 0.2, budget = 1.0 }}
""")
        log = tmp_path / "log"
        proc = start_riposte(config, log)
        try:
            # Start-up healthcheck (health endpoint and token probe) went through.
            assert await until(lambda: len(splunk.requests) >= 2, 60), log.read_text()[-3000:]
            splunk.down = True
            await asyncio.to_thread(send_batches, sqs, url, [b for _, b in events])
            assert await until(lambda: len(read_jsonl_ids(out)) == len(events), 60), \
                log.read_text()[-3000:]
            # Splunk refused everything and has been asked again: nothing acknowledged.
            attempts_while_down = len(splunk.requests_to("/services/collector/event"))
            await asyncio.sleep(2.0)
            assert splunk.events == []
            # moto's approximate counts can run a little high while messages flip between
            # visible and in flight, hence >=. The proof that nothing was acknowledged is
            # below: every event still reaches Splunk once it is back, which only a
            # redelivery can do.
            assert await asyncio.to_thread(queue_depth, sqs, url) >= len(events)
            assert len(splunk.requests_to("/services/collector/event")) > attempts_while_down
            splunk.down = False
            assert await until(lambda: len({e["event"]["id"] for e in splunk.events})
                               == len(events), 60), log.read_text()[-3000:]
            assert await until(lambda: queue_depth(sqs, url) == 0, 30)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0, log.read_text()[-3000:]
    jsonl = read_jsonl_ids(out)
    assert set(jsonl) == {e["event"]["id"] for e in splunk.events}
    assert max(jsonl.values()) == 1, "the JSON-lines sink never got a redelivered copy"
    hec = Counter(e["event"]["id"] for e in splunk.events)
    assert max(hec.values()) == 1, "Splunk got each event once"
    assert all(e["time"] > 0 for e in splunk.events)  # the event time, epoch seconds
    dead = sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=0).get("Messages", [])
    assert dead == []
