"""`riposte demo`: the whole pipeline, end to end, with no AWS account.

It starts a local AWS stand-in (moto in server mode, on 127.0.0.1), creates an
SQS queue with a dead-letter queue, a Kinesis stream and an S3 bucket holding a
gzipped CloudTrail log file, sends the bundled real sample events (plus a few
deliberately broken messages, to show what happens to them), runs the same
runner and chain as `riposte run` until every message is settled, and prints
what happened: per event kind and type, received / normalized / dead-lettered,
the incidents with their scores and reasons, the detections, the containment
plans and where the output went.

With ``--enforce`` containment is applied to resources created in the stand-in,
verified by describing them, and rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import boto3
import orjson

from pipeline.models import Event, EventKind, Item
from pipeline.sources.base import Message, Outcome, OutcomeKind

log = logging.getLogger(__name__)

DEMO_ACCOUNT = "123456789012"
REGION = "us-east-1"
_SETTLE_TIMEOUT = 90.0

# Messages that show the pipeline's answer to bad input: each must be dead-lettered
# with its reason, never crash the worker, never be lost.
BAD_MESSAGES: dict[str, bytes] = {
    "bad/invalid-json": b'{"detail-type": "GuardDuty Finding", ',
    "bad/invalid-utf8": b'{"source": "aws.guardduty", "x": "\xff\xfe"}',
    "bad/forged-source": orjson.dumps({
        "version": "0", "id": "forged-1", "detail-type": "GuardDuty Finding",
        "source": "evil.example", "account": DEMO_ACCOUNT, "region": REGION,
        "time": "2024-01-01T00:00:00Z", "resources": [], "detail": {"id": "x"}}),
    "bad/missing-detail": orjson.dumps({
        "version": "0", "id": "no-detail-1", "detail-type": "GuardDuty Finding",
        "source": "aws.guardduty", "account": DEMO_ACCOUNT, "region": REGION,
        "time": "2024-01-01T00:00:00Z", "resources": []}),
}


def demo_data_dir() -> Path:
    return Path(str(resources.files("pipeline") / "demo_data"))


def iter_sample_files() -> Iterator[Path]:
    root = demo_data_dir()
    for path in sorted(root.rglob("*.json")):
        if path.name == "manifest.json":
            continue
        yield path


@dataclass
class Tally:
    """What the demo saw, keyed by (kind, type)."""

    files: dict[str, str] = field(default_factory=dict)  # message id -> file
    normalized: Counter[tuple[str, str]] = field(default_factory=Counter)
    received_by_file: Counter[str] = field(default_factory=Counter)
    # How the messages travelled: "sqs", "kinesis"; and the log file's record count.
    paths: Counter[str] = field(default_factory=Counter)
    log_file_records: int = 0
    dead_lettered: dict[str, str] = field(default_factory=dict)  # file -> reason
    retried: dict[str, str] = field(default_factory=dict)
    settled: int = 0


class TapStage:
    """Counts normalized events by kind and type as they pass; changes nothing."""

    name = "demo_tap"

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    async def process(self, item: Any) -> Sequence[Any]:
        if isinstance(item, Event):
            self.tally.normalized[(item.kind.value, item.type)] += 1
        return (item,)


# --- the stand-in --------------------------------------------------------------------------
@dataclass
class DemoResources:
    queue_url: str
    dlq_url: str
    stream: str
    bucket: str
    instance_id: str = ""
    access_key_id: str = ""


# The derived fixtures name these; the demo rewrites them to resources it creates, so
# the containment plans describe real (stand-in) resources.
FIXTURE_INSTANCE = "i-0abc123def4567890"
FIXTURE_ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
FIXTURE_USER = "deploy-bot"


def _create_resources(endpoint: str) -> DemoResources:
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
    dlq_url = sqs.create_queue(QueueName="riposte-demo-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(QueueName="riposte-demo", Attributes={
        "VisibilityTimeout": "30",
        "RedrivePolicy": orjson.dumps({"deadLetterTargetArn": dlq_arn,
                                       "maxReceiveCount": "5"}).decode(),
    })["QueueUrl"]
    kinesis = boto3.client("kinesis", region_name=REGION, endpoint_url=endpoint)
    kinesis.create_stream(StreamName="riposte-demo", ShardCount=2)
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=endpoint)
    s3.create_bucket(Bucket="riposte-demo-cloudtrail")
    res = DemoResources(queue_url, dlq_url, "riposte-demo", "riposte-demo-cloudtrail")
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
    image = "ami-03cf127a"  # in moto's built-in catalogue; listing them all takes seconds
    inst = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet,
                             TagSpecifications=[{"ResourceType": "instance", "Tags": [
                                 {"Key": "Name", "Value": "web-1"},
                                 {"Key": "criticality", "Value": "high"}]}])
    res.instance_id = inst["Instances"][0]["InstanceId"]
    iam = boto3.client("iam", region_name=REGION, endpoint_url=endpoint)
    iam.create_role(RoleName="web-1", AssumeRolePolicyDocument=orjson.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                "Principal": {"Service": "ec2.amazonaws.com"}}],
    }).decode())
    iam.create_instance_profile(InstanceProfileName="web-1")
    iam.add_role_to_instance_profile(InstanceProfileName="web-1", RoleName="web-1")
    ec2.associate_iam_instance_profile(IamInstanceProfile={"Name": "web-1"},
                                       InstanceId=res.instance_id)
    iam.create_user(UserName=FIXTURE_USER)
    res.access_key_id = iam.create_access_key(UserName=FIXTURE_USER)["AccessKey"]["AccessKeyId"]
    return res


def _cloudtrail_records() -> list[dict[str, Any]]:
    """Raw CloudTrail records among the samples, as a CloudTrail log file would hold them."""
    return [orjson.loads(path.read_bytes()) for path in iter_sample_files()
            if _is_cloudtrail_record(path.read_bytes())]


def _send_all(endpoint: str, res: DemoResources, tally: Tally) -> int:
    """Send every sample; returns how many messages the pipeline must settle."""
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
    kinesis = boto3.client("kinesis", region_name=REGION, endpoint_url=endpoint)
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=endpoint)
    root = demo_data_dir()
    sent = 0

    def via_sqs(name: str, body: bytes) -> None:
        nonlocal sent
        answer = sqs.send_message(QueueUrl=res.queue_url, MessageBody=body.decode())
        tally.files[answer["MessageId"]] = name
        tally.received_by_file[name] += 1
        tally.paths["SQS"] += 1
        sent += 1

    for path in iter_sample_files():
        name = str(path.relative_to(root))
        if name.endswith("-closed.json"):
            continue  # the closed Inspector finding is for the tests; the demo keeps it open
        body = path.read_bytes()
        if name.startswith("derived/"):
            body = body.replace(FIXTURE_INSTANCE.encode(), res.instance_id.encode())
            body = body.replace(FIXTURE_ACCESS_KEY.encode(), res.access_key_id.encode())
        if name.startswith("cloudtrail/") and b'"detail-type"' in body:
            # CloudTrail API calls via EventBridge arrive on the Kinesis stream.
            answer = kinesis.put_record(StreamName=res.stream, Data=body, PartitionKey=name)
            tally.files[f"{answer['ShardId']}:{answer['SequenceNumber']}"] = name
            tally.received_by_file[name] += 1
            tally.paths["Kinesis"] += 1
            sent += 1
        elif name.startswith("envelopes/sekoia-sqs-body-s3-notification"):
            continue  # replaced below by a notification for the demo's own log file
        elif _is_cloudtrail_record(body):
            continue  # raw CloudTrail records travel in the log file below, as they do live
        else:
            via_sqs(name, body)

    # A CloudTrail log file in S3, announced by an S3 event notification.
    key = (f"AWSLogs/{DEMO_ACCOUNT}/CloudTrail/{REGION}/2024/01/01/"
           f"{DEMO_ACCOUNT}_CloudTrail_{REGION}_20240101T0000Z_demo.json.gz")
    records = _cloudtrail_records()
    tally.log_file_records = len(records)
    s3.put_object(Bucket=res.bucket, Key=key,
                  Body=gzip.compress(orjson.dumps({"Records": records})))
    notification = {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION,
        "eventTime": "2024-01-01T00:05:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "cloudtrail",
               "bucket": {"name": res.bucket, "arn": f"arn:aws:s3:::{res.bucket}"},
               "object": {"key": key, "size": 1}}}]}
    via_sqs("s3-notification/cloudtrail-log-file", orjson.dumps(notification))
    for name, body in BAD_MESSAGES.items():
        if _valid_utf8(body):
            via_sqs(name, body)
        else:  # SQS only carries valid Unicode; Kinesis carries any bytes
            answer = kinesis.put_record(StreamName=res.stream, Data=body, PartitionKey=name)
            tally.files[f"{answer['ShardId']}:{answer['SequenceNumber']}"] = name
            tally.received_by_file[name] += 1
            tally.paths["Kinesis"] += 1
            sent += 1
    return sent


def _is_cloudtrail_record(body: bytes) -> bool:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and "eventVersion" in data and "eventName" in data


def _valid_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- running ------------------------------------------------------------------------------
def _demo_config(res: DemoResources, workdir: Path, enforce: bool) -> dict[str, Any]:
    policies: list[dict[str, Any]] = [
        {"name": "isolate-attacked-vulnerable-instances",
         "match": {"resource_types": ["ec2.instance"], "min_score": 60},
         "actions": [{"kind": k} for k in ("ec2.snapshot", "ec2.tag", "ec2.isolate",
                                           "ec2.detach_instance_profile")]},
        {"name": "disable-abused-access-keys",
         "match": {"resource_types": ["iam.access_key"], "min_score": 40},
         "actions": [{"kind": "iam.deactivate_access_key"}]},
    ]
    return {
        "service": {"region": REGION, "shutdown_deadline": 10},
        "metrics": {"enabled": False},
        "logging": {"level": "WARNING", "format": "text"},
        "state": {"type": "sqlite", "path": str(workdir / "state.db")},
        "sources": [
            {"type": "sqs", "name": "sqs", "queue_url": res.queue_url,
             "dead_letter_queue_url": res.dlq_url, "wait_time_seconds": 1,
             "visibility_timeout": 30},
            {"type": "kinesis", "name": "kinesis", "stream_name": res.stream,
             "idle_poll_interval": 0.2},
        ],
        "containment": {"mode": "enforce" if enforce else "dry-run", "policies": policies},
        "sinks": [{"type": "jsonl", "name": "jsonl", "path": str(workdir / "out.jsonl"),
                   "routing": {"kinds": ["event", "detection", "incident", "action"]}}],
    }


async def _run_pipeline(config_data: dict[str, Any], expected: int, tally: Tally) -> Any:
    from pipeline.assemble import build_pipeline, open_context
    from pipeline.config import parse_config
    from pipeline.worker import Runner

    config = parse_config(config_data, origin="demo", env={})
    ctx = await open_context(config)
    pipeline = await build_pipeline(config, ctx, extra_prefix=[TapStage(tally)])
    runner = Runner(pipeline.sources, pipeline.chain, concurrency=32,
                    shutdown_deadline=config.service.shutdown_deadline,
                    on_close=[pipeline.aclose])
    settled = asyncio.Event()

    def on_settled(_source: Any, message: Message, outcome: Outcome) -> None:
        name = tally.files.get(message.id, message.id)
        if outcome.kind is OutcomeKind.DEAD_LETTER:
            tally.dead_lettered[name] = outcome.reason
        elif outcome.kind is OutcomeKind.RETRY:
            tally.retried[name] = outcome.reason
            return
        tally.settled += 1
        if tally.settled >= expected:
            settled.set()

    runner.on_settled = on_settled

    async def stop_when_done() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settled.wait(), _SETTLE_TIMEOUT)
        runner.stop()

    stopper = asyncio.create_task(stop_when_done())
    stats = await runner.run()
    stopper.cancel()
    return stats


def _read_output(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


# --- the summary ----------------------------------------------------------------------------
def _summary(tally: Tally, outputs: list[dict[str, Any]], out_path: Path, seconds: float,
             expected: int) -> dict[str, Any]:
    incidents: dict[str, dict[str, Any]] = {}
    detections: list[dict[str, Any]] = []
    actions: list[dict[str, Any]] = []
    for item in outputs:
        kind = item.get("item_kind")
        if kind == "incident":
            incidents[item["id"]] = item  # the last revision wins
        elif kind == "detection":
            detections.append(item)
        elif kind == "action":
            actions.append(item)
    by_kind: dict[str, dict[str, int]] = defaultdict(dict)
    for (kind, type_), n in sorted(tally.normalized.items()):
        by_kind[kind][type_] = n
    return {
        "messages_sent": expected,
        "messages_by_path": dict(sorted(tally.paths.items())),
        "cloudtrail_log_file_records": tally.log_file_records,
        "messages_settled": tally.settled,
        "seconds": round(seconds, 2),
        "normalized": by_kind,
        "dead_lettered": dict(sorted(tally.dead_lettered.items())),
        "incidents": sorted(incidents.values(),
                            key=lambda i: -((i.get("score") or {}).get("value") or 0)),
        "detections": detections,
        "actions": actions,
        "output": str(out_path),
        "output_by_kind": dict(sorted(Counter(str(i.get("item_kind")) for i in outputs).items())),
    }


def _print_summary(s: dict[str, Any], enforce: bool, rolled_back: list[str]) -> None:
    w = sys.stdout.write
    paths = ", ".join(f"{n} via {p}" for p, n in s["messages_by_path"].items())
    w(f"\nRiposte demo: {s['messages_settled']}/{s['messages_sent']} messages settled in "
      f"{s['seconds']} s on a local AWS stand-in ({paths}; one of them an S3 notification "
      f"for a gzipped CloudTrail log file of {s['cloudtrail_log_file_records']} records)\n")
    w("\nNormalized events, by kind and type\n")
    for kind, types in s["normalized"].items():
        for type_, n in types.items():
            w(f"  {kind:<12} {type_[:70]:<70} {n:>3}\n")
    w("\nDead-lettered, reason kept (SQS: in the DLQ as message attributes; Kinesis: a "
      "record in the state store)\n")
    for name, reason in s["dead_lettered"].items():
        w(f"  {name:<44} {reason}\n")
    if not s["dead_lettered"]:
        w("  (none)\n")
    w(f"\nDetections ({len(s['detections'])})\n")
    for det in s["detections"]:
        sev = (det.get("severity") or {}).get("label", "")
        w(f"  [{sev:<8}] {det.get('type')}: {det.get('title')}\n")
    w(f"\nIncidents ({len(s['incidents'])}), highest risk first\n")
    for inc in s["incidents"]:
        score = inc.get("score") or {}
        flags = [f for f in ("correlated", "sample", "observe_only") if inc.get(f)]
        w(f"  {score.get('value', '?'):>3} {score.get('label', ''):<13} {inc['id']}  "
          f"{inc.get('title', '')[:60]}" + (f"  ({', '.join(flags)})" if flags else "") + "\n")
        for reason in (score.get("reasons") or [])[:6]:
            w(f"        +{reason.get('points', 0):>5.1f}  {reason.get('factor')}: "
              f"{reason.get('detail')}\n")
        if inc.get("mitre"):
            w(f"        MITRE ATT&CK: {', '.join(inc['mitre'])}\n")
    w(f"\nContainment ({'enforce' if enforce else 'dry-run: nothing was changed'})\n")
    if not s["actions"]:
        w("  (no action: no incident matched a response policy)\n")
    for act in s["actions"]:
        res = act.get("resource") or {}
        w(f"  {act.get('status'):<18} {act.get('kind'):<28} {res.get('type')}:{res.get('id')}"
          + (f"  ({act.get('reason')})" if act.get("reason") else "") + "\n")
        for call in (act.get("calls") or [])[:4]:
            w(f"        {call.get('service')}.{call.get('operation')} "
              f"{orjson.dumps(call.get('params')).decode()[:90]}\n")
    if rolled_back:
        w(f"\nRolled back: {', '.join(rolled_back)}\n")
    kinds = ", ".join(f"{n} {k}s" for k, n in s["output_by_kind"].items())
    w(f"\nOutput: the jsonl sink received {kinds}: {s['output']}\n")


def run_demo(*, enforce: bool = False, as_json: bool = False, verbose: bool = False) -> int:
    from pipeline import logs
    from pipeline.localaws import local_aws_environment

    # The summary reports every dead letter and failure; the logs are for --verbose.
    logs.configure("INFO" if verbose else "CRITICAL", "text")
    workdir = Path(tempfile.mkdtemp(prefix="riposte-demo-"))
    tally = Tally()
    with local_aws_environment() as aws:
        res = _create_resources(aws.endpoint_url)
        expected = _send_all(aws.endpoint_url, res, tally)
        started = time.monotonic()
        config_data = _demo_config(res, workdir, enforce)
        asyncio.run(_run_pipeline(config_data, expected, tally))
        seconds = time.monotonic() - started
        rolled_back: list[str] = []
        if enforce:
            rolled_back = asyncio.run(_rollback_all(config_data))
    summary = _summary(tally, _read_output(workdir / "out.jsonl"), workdir / "out.jsonl",
                       seconds, expected)
    summary["rolled_back"] = rolled_back
    if as_json:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_summary(summary, enforce, rolled_back)
    return 0 if tally.settled >= expected else 1


async def _rollback_all(config_data: dict[str, Any]) -> list[str]:
    from pipeline.actions import ops
    from pipeline.assemble import open_context
    from pipeline.config import parse_config

    config = parse_config(config_data, origin="demo", env={})
    ctx = await open_context(config)
    done: list[str] = []
    try:
        listed = await ops.list_actions(ctx, status="verified")
        for action in listed:
            action_id = action["id"] if isinstance(action, dict) else action.id
            await ops.rollback(ctx, action_id=action_id, incident_id=None)
            done.append(action_id)
    finally:
        await ctx.aclose()
    return done


__all__ = ["EventKind", "Item", "run_demo"]
