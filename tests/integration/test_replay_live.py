"""Replay against the live chain and against AWS: same incidents, zero mutating calls.

* The real samples sent through SQS to the live pipeline (run in-process, as
  `riposte demo` does) end in the same incidents (ids, finding sets, scores) as
  `replay` of the same files. Revision numbers may differ: SQS delivers in any
  order, replay in event-time order.
* Every AWS request replay makes goes through a recording HTTP proxy in front of
  the moto server; all of them are reads, even with containment in enforce mode
  and matching policies (replay plans, it never applies).
* The blast-radius bucket runs on event time: findings seconds apart exhaust it,
  the same findings minutes apart do not.
* An S3 prefix of 2,000 gzipped CloudTrail objects, with a few broken ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import orjson
import pytest
from aiohttp import web

from pipeline import report
from pipeline.config import RiposteConfig, parse_config
from pipeline.demo import Tally, _run_pipeline
from pipeline.readonly_aws import is_read_only
from pipeline.replay import ReplayOptions, run_replay
from tests.integration.actions_support import make_instance
from tests.loopback import start_app

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SAMPLES = FIXTURES / "samples"
DERIVED = FIXTURES / "derived"
GD_PAIRED = DERIVED / "guardduty" / "gd-ec2-paired-finding.json"
CT_RECORD = orjson.loads((SAMPLES / "cloudtrail" / "panther-createuser-console.json")
                         .read_bytes())


# --- a recording proxy in front of moto ------------------------------------------------------
class RecordingProxy:
    """Forwards every request to moto and records the AWS operation it names."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.operations: list[str] = []
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    @staticmethod
    def operation(request: web.Request, body: bytes) -> str:
        target = request.headers.get("X-Amz-Target")
        if target:
            return target.rsplit(".", 1)[-1]
        action = request.query.get("Action")
        if action is None and body and "x-www-form-urlencoded" in request.headers.get(
                "Content-Type", ""):
            found = parse_qs(body.decode()).get("Action")
            action = found[0] if found else None
        if action:
            return action
        return f"s3:{request.method}"  # REST (S3): the method says read or write

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.operations.append(self.operation(request, body))
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                         data=body, headers=headers,
                                         allow_redirects=False) as answer:
            payload = await answer.read()
            out = {k: v for k, v in answer.headers.items()
                   if k.lower() not in ("content-length", "transfer-encoding",
                                        "content-encoding", "connection")}
            return web.Response(status=answer.status, body=payload, headers=out)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner, self.url = await start_app(app)

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def mutating(self) -> list[str]:
        return [op for op in self.operations
                if not (is_read_only(op) or op in ("s3:GET", "s3:HEAD"))]


@contextlib.asynccontextmanager
async def recording_proxy(moto_server: str, monkeypatch: pytest.MonkeyPatch
                          ) -> AsyncIterator[RecordingProxy]:
    """A proxy in front of moto; AWS clients made inside go through it."""
    rec = RecordingProxy(moto_server)
    await rec.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", rec.url)  # replay's clients are made after this
    try:
        yield rec
    finally:
        await rec.aclose()


@pytest.fixture
async def proxy(moto_server: str, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[RecordingProxy]:
    async with recording_proxy(moto_server, monkeypatch) as rec:
        yield rec


def _config(data: dict[str, Any]) -> RiposteConfig:
    return parse_config({"service": {"region": "us-east-1"}, "metrics": {"enabled": False},
                         **data}, env={})


# --- live vs replay ----------------------------------------------------------------------------
def _sqs_bodies() -> list[tuple[str, bytes]]:
    """Every sample SQS can carry (valid UTF-8 text), named by file."""
    out = []
    for root in (SAMPLES, DERIVED):
        for path in sorted(root.rglob("*.json")):
            if path.name == "manifest.json":
                continue
            out.append((str(path.relative_to(FIXTURES)), path.read_bytes()))
    return out


def _final_incidents(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    final: dict[str, dict[str, Any]] = {}
    for item in lines:
        if item.get("item_kind") == "incident":
            seen = final.get(item["id"])
            if seen is None or item["revision"] >= seen["revision"]:
                final[item["id"]] = item
    return final


async def test_replay_matches_the_live_pipeline_incident_by_incident(
        boto: Any, moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sqs = boto("sqs")
    name = f"replay-live-{uuid.uuid4().hex[:8]}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    bodies = _sqs_bodies()
    for i in range(0, len(bodies), 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(j), "MessageBody": body.decode()}
            for j, (_, body) in enumerate(bodies[i:i + 10])])
    out = tmp_path / "out.jsonl"
    live_config = {
        "service": {"region": "us-east-1", "shutdown_deadline": 5},
        "metrics": {"enabled": False},
        "state": {"type": "sqlite", "path": str(tmp_path / "live.db")},
        "sources": [{"type": "sqs", "name": "sqs", "queue_url": url,
                     "dead_letter_queue_url": dlq, "wait_time_seconds": 1,
                     "visibility_timeout": 30, "max_receive_count": 1}],
        "sinks": [{"type": "jsonl", "name": "out", "path": str(out),
                   "routing": {"kinds": ["incident", "detection"]}}],
    }
    tally = Tally()
    await _run_pipeline(live_config, len(bodies), tally)
    assert tally.settled == len(bodies), (tally.retried, tally.dead_lettered)
    live = _final_incidents([orjson.loads(x) for x in out.read_bytes().splitlines()])

    async with recording_proxy(moto_server, monkeypatch) as rec:
        result = await run_replay(_config({}), ReplayOptions(inputs=[str(SAMPLES),
                                                                     str(DERIVED)]))
    replayed = {i["id"]: i for i in report.build_report(result)["incidents"]}
    # It did talk to AWS (the S3 notification sample names a CloudTrail object), only reading.
    assert "s3:GET" in rec.operations
    assert rec.mutating() == []

    assert sorted(replayed) == sorted(live)
    for inc_id, inc in live.items():
        mine = replayed[inc_id]
        assert sorted(f["event_id"] for f in inc["findings"]) == mine["findings"], inc_id
        assert (inc["score"] or {}).get("value") == mine["score"], inc_id
        assert bool(inc["correlated"]) == mine["correlated"], inc_id


# --- zero mutating calls, enforce mode, blast radius on event time -----------------------------
def _findings_on(instances: list[str], start: str, step_seconds: int) -> list[bytes]:
    """One GuardDuty finding per instance, ``step_seconds`` apart in event time."""
    from datetime import datetime, timedelta

    t0 = datetime.fromisoformat(start)
    template = GD_PAIRED.read_bytes()
    out = []
    for i, instance in enumerate(instances):
        doc = orjson.loads(template.replace(b"i-0abc123def4567890", instance.encode()))
        when = (t0 + timedelta(seconds=i * step_seconds)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        doc["id"] = f"evt-{uuid.uuid4().hex}"
        doc["time"] = when[:19] + "Z"
        doc["detail"]["id"] = uuid.uuid4().hex
        doc["detail"]["updatedAt"] = when
        doc["detail"]["createdAt"] = when
        out.append(orjson.dumps(doc))
    return out


def _enforce_config(per_minute: float) -> RiposteConfig:
    return _config({"containment": {
        "mode": "enforce",
        "rate_limit": {"actions_per_minute": per_minute},
        "policies": [{"name": "isolate-instances",
                      "match": {"resource_types": ["ec2.instance"], "min_score": 0},
                      "actions": [{"kind": "ec2.snapshot"}, {"kind": "ec2.isolate"}]}]}})


@pytest.mark.parametrize(("step", "held"), [(10, 2), (120, 0)])
async def test_enforce_config_only_plans_and_the_bucket_runs_on_event_time(
        boto: Any, proxy: RecordingProxy, tmp_path: Path, step: int, held: int) -> None:
    first = make_instance(boto, groups=1)
    instances = [first["instance"]] + [
        make_instance(boto, groups=1, vpc=first["vpc"], subnet=first["subnet"])["instance"]
        for _ in range(2)]
    for i, body in enumerate(_findings_on(instances, "2024-09-04T17:00:00+00:00", step)):
        (tmp_path / f"{i}.json").write_bytes(body)
    before = boto("ec2").describe_instances(InstanceIds=instances)["Reservations"]

    rep = report.build_report(await run_replay(
        _enforce_config(per_minute=1), ReplayOptions(inputs=[str(tmp_path)])))

    assert proxy.operations, "replay did describe the instances (through the proxy)"
    assert proxy.mutating() == []
    assert {"DescribeInstances", "GetCallerIdentity"} <= set(proxy.operations)
    assert boto("ec2").describe_instances(InstanceIds=instances)["Reservations"] == before
    isolate = [a for a in rep["actions"] if a["kind"] == "ec2.isolate"]
    snapshot = [a for a in rep["actions"] if a["kind"] == "ec2.snapshot"]
    assert len(isolate) == 3 and len(snapshot) == 3
    assert all(a["mode"] == "enforce" for a in rep["actions"])
    # Snapshots are not disruptive: never held back by the blast-radius limit.
    assert {a["status"] for a in snapshot} == {"planned"}
    assert all(a["calls"] for a in isolate), "the exact calls that would have been made"
    assert rep["held_for_approval"] == held
    assert sum(1 for a in isolate if a["status"] == "planned") == 3 - held
    if held:
        assert list(rep["held_for_approval_by_reason"]) == [
            "blast-radius limit reached (1 actions/min)"]
        assert rep["time_to_contain"]["count"] == 1
    else:
        assert rep["time_to_contain"]["count"] == 3


# --- an S3 prefix with thousands of objects ----------------------------------------------------
def _put_many(boto: Any, bucket: str, n: int) -> None:
    s3 = boto("s3")
    s3.create_bucket(Bucket=bucket)
    base = "AWSLogs/123456789012/CloudTrail/us-east-1/2024/01"

    def put(i: int) -> None:
        # Routine reads from inside: archives are mostly quiet, and rules stay quiet here.
        rec = dict(CT_RECORD, eventID=f"ev-{i:05d}", eventName="DescribeInstances",
                   eventSource="ec2.amazonaws.com", sourceIPAddress="10.1.2.3",
                   userAgent="aws-cli/2.15.59 md/awscrt#0.19.19 ua/2.0 os/linux#6.1",
                   eventTime=f"2024-01-{1 + i % 10:02d}T{i % 24:02d}:00:00Z")
        key = f"{base}/{1 + i % 10:02d}/123456789012_CloudTrail_us-east-1_{i:05d}.json.gz"
        s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(orjson.dumps({"Records": [rec]})))

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(n)))
    s3.put_object(Bucket=bucket, Key=f"{base}/03/truncated.json.gz",
                  Body=gzip.compress(orjson.dumps({"Records": [CT_RECORD]}))[:-10])
    s3.put_object(Bucket=bucket, Key=f"{base}/03/notes.json", Body=b'{"not": "an event"}')
    s3.put_object(Bucket=bucket, Key=f"{base}/04/broken.json", Body=b"{{{")


async def test_s3_prefix_with_thousands_of_objects(boto: Any, proxy: RecordingProxy) -> None:
    from datetime import UTC, datetime

    bucket = f"replay-{uuid.uuid4().hex[:10]}"
    await asyncio.to_thread(_put_many, boto, bucket, 2000)
    url = f"s3://{bucket}/AWSLogs/123456789012/CloudTrail/"

    rep = report.build_report(await run_replay(_config({}), ReplayOptions(inputs=[url])))
    inputs = rep["inputs"]
    assert inputs["events"] == 2000
    assert inputs["files"] == 2001  # files that held a message: the 2,000 and notes.json
    assert inputs["errors"] == {"bad_gzip": 1, "invalid_json": 1, "unrecognized_document": 1}
    assert proxy.mutating() == []
    assert proxy.operations.count("s3:GET") >= 2003  # listing pages + one GET per object

    # The date path narrows what is fetched: one day (plus the day after, for late files).
    proxy.operations.clear()
    since, until = datetime(2024, 1, 5, tzinfo=UTC), datetime(2024, 1, 5, 23, 59, tzinfo=UTC)
    rep = report.build_report(await run_replay(_config({}), ReplayOptions(
        inputs=[url], since=since, until=until)))
    assert rep["inputs"]["events"] == 200
    assert rep["inputs"]["filtered_out"] == 200  # the day after: fetched, then filtered
    assert rep["inputs"]["files"] == 400  # days 5 and 6; 03/ and 04/ are never fetched
    assert proxy.operations.count("s3:GET") < 420


async def test_missing_bucket_is_a_counted_error(proxy: RecordingProxy) -> None:
    rep = report.build_report(await run_replay(_config({}), ReplayOptions(
        inputs=[f"s3://no-such-{uuid.uuid4().hex[:8]}/AWSLogs/"])))
    assert rep["inputs"]["errors"] == {"s3_list_failed": 1}
    assert rep["inputs"]["events"] == 0


async def test_sinks_flag_delivers_to_aws_sinks_while_the_chain_only_reads(
        boto: Any, proxy: RecordingProxy, tmp_path: Path) -> None:
    """`--sinks` is a request to publish the replay's output; nothing else may write."""
    sns, sqs = boto("sns"), boto("sqs")
    name = f"replay-sink-{uuid.uuid4().hex[:8]}"
    topic = sns.create_topic(Name=name)["TopicArn"]
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn,
                  Attributes={"RawMessageDelivery": "true"})
    ids = make_instance(boto, groups=1)
    (tmp_path / "gd.json").write_bytes(_findings_on([ids["instance"]],
                                                    "2024-09-04T17:00:00+00:00", 0)[0])
    cfg = _enforce_config(per_minute=5).model_copy(update={"sinks": _config({"sinks": [
        {"type": "sns", "name": "sns", "topic_arn": topic,
         "routing": {"kinds": ["incident"]}}]}).sinks})

    rep = report.build_report(await run_replay(cfg, ReplayOptions(
        inputs=[str(tmp_path)], send_to_sinks=True)))

    assert {a["status"] for a in rep["actions"]} == {"planned"}
    writes = proxy.mutating()
    assert writes and set(writes) <= {"Publish", "PublishBatch"}, writes
    got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=2)
    bodies = [orjson.loads(m["Body"]) for m in got.get("Messages", [])]
    assert {b.get("id") for b in bodies} == {i["id"] for i in rep["incidents"]}


async def test_compare_a_containment_policy_change(boto: Any, proxy: RecordingProxy,
                                                   tmp_path: Path) -> None:
    """A looser blast-radius limit: the held plans become planned, nothing else moves."""
    first = make_instance(boto, groups=1)
    instances = [first["instance"]] + [
        make_instance(boto, groups=1, vpc=first["vpc"], subnet=first["subnet"])["instance"]
        for _ in range(2)]
    for i, body in enumerate(_findings_on(instances, "2024-09-04T17:00:00+00:00", 5)):
        (tmp_path / f"{i}.json").write_bytes(body)
    opts = ReplayOptions(inputs=[str(tmp_path)])
    strict = report.build_report(await run_replay(_enforce_config(per_minute=1), opts))
    loose = report.build_report(await run_replay(_enforce_config(per_minute=10), opts))
    diff = report.compare_reports(strict, loose)
    assert diff["incidents_only_in_a"] == diff["incidents_only_in_b"] == []
    assert diff["incidents_scored_differently"] == []
    assert [(a["kind"], a["status"]) for a in diff["actions_only_in_a"]] == [
        ("ec2.isolate", "awaiting_approval")] * 2
    assert [(a["kind"], a["status"]) for a in diff["actions_only_in_b"]] == [
        ("ec2.isolate", "planned")] * 2
    assert proxy.mutating() == []
