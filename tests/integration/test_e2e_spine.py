"""End to end: SQS and Kinesis → the whole chain → JSON lines, with the real `riposte run`.

Everything talks to moto in server mode over HTTP with the real aiobotocore
clients. SQS is fed gradually (moto's SQS scans the whole queue on every receive,
so the queue depth is kept in the hundreds); Kinesis carries the volume.
"""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.e2e_helpers import (
    drain_queue,
    guardduty_events,
    read_jsonl_ids,
    send_batches,
    start_riposte,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration


def _queue(boto: Any, visibility: int = 30) -> tuple[Any, str, str]:
    sqs = boto("sqs")
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    url = sqs.create_queue(QueueName=name,
                           Attributes={"VisibilityTimeout": str(visibility)})["QueueUrl"]
    return sqs, url, dlq


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    """The Prometheus text exposition of a running worker, as {sample with labels: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _config(tmp_path: Path, sources: str, *, in_flight: int = 100, deadline: float = 10,
            extra: str = "", metrics_port: int | None = None) -> Path:
    metrics = (f"enabled = true\nport = {metrics_port}" if metrics_port
               else "enabled = false")
    return write_config(tmp_path / "riposte.toml", f"""
[service]
region = "us-east-1"
in_flight_limit = {in_flight}
concurrency = 32
shutdown_deadline = {deadline}

[metrics]
{metrics}

[logging]
level = "INFO"

[state]
type = "sqlite"
path = "{tmp_path / 'state.db'}"

{sources}

[[sinks]]
type = "jsonl"
name = "out"
path = "{tmp_path / 'out.jsonl'}"
routing = {{ kinds = ["event"] }}
{extra}
""")


def _sqs_source(url: str, dlq: str, visibility: int = 30) -> str:
    return f"""
[[sources]]
type = "sqs"
name = "sqs"
queue_url = "{url}"
dead_letter_queue_url = "{dlq}"
wait_time_seconds = 1
visibility_timeout = {visibility}
pollers = 2
"""


def _feed_gradually(sqs: Any, url: str, bodies: list[bytes], out: Path,
                    max_depth: int = 250) -> None:
    """Send in slices, keeping what is queued but not yet output under ``max_depth``."""
    sent = 0
    while sent < len(bodies):
        done = sum(read_jsonl_ids(out).values())
        room = max_depth - (sent - done)
        if room >= 10:
            take = bodies[sent:sent + min(room, 100)]
            send_batches(sqs, url, take)
            sent += len(take)
        else:
            time.sleep(0.2)


def test_sqs_events_arrive_exactly_once(boto: Any, tmp_path: Path) -> None:
    sqs, url, dlq = _queue(boto)
    events = guardduty_events(1000, f"sqs-{uuid.uuid4().hex[:6]}-")
    port = _free_port()
    proc = start_riposte(_config(tmp_path, _sqs_source(url, dlq), metrics_port=port),
                         tmp_path / "log")
    out = tmp_path / "out.jsonl"
    try:
        _feed_gradually(sqs, url, [b for _, b in events], out)
        assert wait_for(lambda: len(read_jsonl_ids(out)) >= len(events), 120), \
            (tmp_path / "log").read_text()[-3000:]
        assert wait_for(lambda: _scrape(port).get(
            'riposte_processed_messages_total{outcome="ack",source="sqs"}', 0) >= len(events), 10)
        metrics = _scrape(port)
        assert metrics['riposte_received_messages_total{source="sqs"}'] >= len(events)
        assert metrics['riposte_sqs_message_age_seconds_count{source="sqs"}'] >= len(events)
        assert metrics["riposte_in_flight_messages"] >= 0
        for stage in ("decode", "normalize", "trust", "detect", "correlate", "score",
                      "contain", "fanout"):
            assert metrics[f'riposte_stage_seconds_count{{stage="{stage}"}}'] >= len(events)
        assert metrics['riposte_events_total{kind="guardduty"}'] >= len(events)
        assert metrics['riposte_sink_sent_total{sink="out"}'] >= len(events)
        assert metrics["riposte_time_to_detect_seconds_count"] >= 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as ready:
            assert ready.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    ids = read_jsonl_ids(out)
    assert set(ids) == {fid for fid, _ in events}
    assert max(ids.values()) == 1, "normal operation delivers each event exactly once"
    assert drain_queue(sqs, url) == [], "every message was acknowledged"


def test_kinesis_multi_shard_events_arrive_exactly_once(boto: Any, tmp_path: Path) -> None:
    kinesis = boto("kinesis")
    stream = f"e2e-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=stream, ShardCount=4)
    events = guardduty_events(3000, f"kin-{uuid.uuid4().hex[:6]}-")
    for start in range(0, len(events), 500):
        kinesis.put_records(StreamName=stream, Records=[
            {"Data": body, "PartitionKey": fid} for fid, body in events[start:start + 500]])
    source = f"""
[[sources]]
type = "kinesis"
name = "kinesis"
stream_name = "{stream}"
idle_poll_interval = 0.2
"""
    port = _free_port()
    proc = start_riposte(_config(tmp_path, source, in_flight=1000, metrics_port=port),
                         tmp_path / "log")
    out = tmp_path / "out.jsonl"
    try:
        assert wait_for(lambda: len(read_jsonl_ids(out)) >= len(events), 120), \
            (tmp_path / "log").read_text()[-3000:]
        metrics = _scrape(port)
        behind = [k for k in metrics if k.startswith("riposte_kinesis_millis_behind_latest{")]
        assert len(behind) == 4, "one gauge per shard"
        assert sum(v for k, v in metrics.items()
                   if k.startswith("riposte_kinesis_checkpoints_total{")) >= 4
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    ids = read_jsonl_ids(out)
    assert set(ids) == {fid for fid, _ in events}
    assert max(ids.values()) == 1


def test_sigkill_mid_stream_loses_nothing(boto: Any, tmp_path: Path) -> None:
    visibility = 4
    sqs, url, dlq = _queue(boto, visibility)
    in_flight = 40
    events = guardduty_events(400, f"kill-{uuid.uuid4().hex[:6]}-")
    config = _config(tmp_path, _sqs_source(url, dlq, visibility), in_flight=in_flight)
    out = tmp_path / "out.jsonl"
    send_batches(sqs, url, [b for _, b in events])
    first = start_riposte(config, tmp_path / "log1")
    try:
        assert wait_for(lambda: sum(read_jsonl_ids(out).values()) >= 100, 60), \
            (tmp_path / "log1").read_text()[-3000:]
    finally:
        first.kill()
        first.wait(10)
    second = start_riposte(config, tmp_path / "log2")
    try:
        assert wait_for(lambda: len(read_jsonl_ids(out)) >= len(events), 120), \
            (tmp_path / "log2").read_text()[-3000:]
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    ids = read_jsonl_ids(out)
    assert set(ids) == {fid for fid, _ in events}, "every event arrives at least once"
    duplicates = sum(n - 1 for n in ids.values())
    assert duplicates <= in_flight, f"{duplicates} duplicates, more than could be in flight"


def test_sigterm_drains_in_time_and_loses_nothing(boto: Any, tmp_path: Path) -> None:
    visibility = 5
    sqs, url, dlq = _queue(boto, visibility)
    events = guardduty_events(300, f"term-{uuid.uuid4().hex[:6]}-")
    deadline = 5.0
    out = tmp_path / "out.jsonl"
    send_batches(sqs, url, [b for _, b in events])
    proc = start_riposte(_config(tmp_path, _sqs_source(url, dlq, visibility),
                                 deadline=deadline), tmp_path / "log")
    assert wait_for(lambda: sum(read_jsonl_ids(out).values()) >= 50, 60), \
        (tmp_path / "log").read_text()[-3000:]
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(deadline + 10) == 0
    assert time.monotonic() - started <= deadline + 3, "exits within the shutdown deadline"
    delivered = read_jsonl_ids(out)
    assert max(delivered.values()) == 1
    # A long poll cut short by the shutdown may have taken messages the process never
    # saw: they come back after the visibility timeout, so drain for longer than that.
    left = {orjson.loads(m["Body"])["detail"]["id"]
            for m in drain_queue(sqs, url, settle_seconds=visibility + 2)}
    assert set(delivered) | left == {fid for fid, _ in events}, "nothing lost"
    assert not set(delivered) & left, "nothing delivered was left on the queue"


def test_poison_message_lands_in_dlq_with_its_reason(boto: Any, tmp_path: Path) -> None:
    sqs, url, dlq = _queue(boto)
    good = guardduty_events(3, f"ok-{uuid.uuid4().hex[:6]}-")
    send_batches(sqs, url, [b for _, b in good])
    sqs.send_message(QueueUrl=url, MessageBody='{"detail-type": "GuardDuty Finding", ')
    proc = start_riposte(_config(tmp_path, _sqs_source(url, dlq)), tmp_path / "log")
    out = tmp_path / "out.jsonl"
    try:
        assert wait_for(lambda: len(read_jsonl_ids(out)) >= 3, 60)
        dead: list[dict[str, Any]] = []

        def dead_lettered() -> bool:
            dead.extend(drain_queue(sqs, dlq))
            return bool(dead)

        assert wait_for(dead_lettered, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert len(dead) == 1
    reason = dead[0]["MessageAttributes"]["riposte-reason"]["StringValue"]
    assert "invalid_json" in reason
    assert dead[0]["Body"] == '{"detail-type": "GuardDuty Finding", '
