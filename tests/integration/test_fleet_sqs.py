"""Two `riposte run` workers on one SQS queue and one DynamoDB table behave like one.

The input is the derived GuardDuty x Inspector pair (tests/fixtures/derived/) with
its ids rewritten for several real (moto) EC2 instances, each GuardDuty finding
delivered several times, plus a later update of it. The same shuffled input goes
once through a single worker (the baseline) and once through two workers sharing
a fresh queue and table; the fleet must end with the same incidents (last revision
per id: same finding sets) and the same action ledger, every dry-run action
decided and emitted exactly once.

The queue depth stays in the hundreds: moto's SQS scans the whole queue on every
receive (DESIGN.md).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.e2e_helpers import (
    FIXTURES,
    drain_queue,
    send_batches,
    start_riposte,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration

GD_PAIRED = FIXTURES / "derived" / "guardduty" / "gd-ec2-paired-finding.json"
GD_UPDATE = FIXTURES / "derived" / "guardduty" / "gd-ec2-paired-finding-update.json"
INSPECTOR_PAIRED = FIXTURES / "derived" / "inspector2" / "inspector-ec2-paired-finding.json"
TEMPLATE_INSTANCE = "i-0abc123def4567890"
INSTANCES = 12
GD_COPIES = 3  # the same GuardDuty finding delivered this many times


def _rewrite(template: bytes, replacements: dict[str, str]) -> bytes:
    """Replace ids everywhere in the event text (ids appear in ARNs, titles, resources)."""
    text = template.decode()
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text.encode()


def fleet_input(instance_ids: list[str], tag: str) -> list[bytes]:
    """GuardDuty x3 (duplicates), its update and one Inspector finding per instance, shuffled."""
    gd = orjson.loads(GD_PAIRED.read_bytes())
    gd_id = gd["detail"]["id"]
    gd_envelope = gd["id"]
    upd_envelope = orjson.loads(GD_UPDATE.read_bytes())["id"]
    insp = orjson.loads(INSPECTOR_PAIRED.read_bytes())
    insp_arn_id = insp["detail"]["findingArn"].rsplit("/", 1)[1]
    insp_envelope = insp["id"]
    bodies: list[bytes] = []
    for n, instance in enumerate(instance_ids):
        common = {TEMPLATE_INSTANCE: instance}
        gd_body = _rewrite(GD_PAIRED.read_bytes(), {
            **common, gd_id: f"{tag}gd{n:04d}", gd_envelope: f"{tag}-gd-{n}"})
        bodies.extend([gd_body] * GD_COPIES)
        bodies.append(_rewrite(GD_UPDATE.read_bytes(), {
            **common, gd_id: f"{tag}gd{n:04d}", upd_envelope: f"{tag}-gdu-{n}"}))
        bodies.append(_rewrite(INSPECTOR_PAIRED.read_bytes(), {
            **common, insp_arn_id: f"{tag}insp{n:04d}", insp_envelope: f"{tag}-insp-{n}"}))
    random.Random(8).shuffle(bodies)
    return bodies


def make_instances(boto: Any, n: int) -> list[str]:
    ec2 = boto("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.30.1.0/24")["Subnet"]["SubnetId"]
    # A fixed image from moto's built-in catalogue (listing all of them takes seconds).
    made = ec2.run_instances(ImageId="ami-03cf127a", MinCount=n, MaxCount=n, SubnetId=subnet)
    return sorted(i["InstanceId"] for i in made["Instances"])


@dataclass
class Run:
    """One fleet run: its queue, table, configs and outputs."""

    name: str
    table: str
    queue_url: str
    dead_letter_url: str
    configs: list[Path]
    outputs: list[Path]
    logs: list[Path]


def _config(path: Path, *, queue_url: str, dlq: str, table: str, out: Path) -> Path:
    return write_config(path, f"""
[service]
region = "us-east-1"
in_flight_limit = 50
concurrency = 16
shutdown_deadline = 10

[metrics]
enabled = false

[state]
type = "dynamodb"
table = "{table}"

[[sources]]
type = "sqs"
name = "sqs"
queue_url = "{queue_url}"
dead_letter_queue_url = "{dlq}"
wait_time_seconds = 1
visibility_timeout = 30
pollers = 2

[containment]
mode = "dry-run"
home_account = "123456789012"

[[containment.policies]]
name = "mark-instances"
match = {{ resource_types = ["ec2.instance"], min_score = 0 }}
actions = [{{ kind = "ec2.tag" }}]

[[sinks]]
type = "jsonl"
name = "out"
path = "{out}"
routing = {{ kinds = ["incident", "action"] }}
""")


def prepare(boto: Any, tmp_path: Path, name: str, workers: int) -> Run:
    sqs = boto("sqs")
    suffix = uuid.uuid4().hex[:8]
    url = sqs.create_queue(QueueName=f"fleet-{name}-{suffix}",
                           Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    dlq = sqs.create_queue(QueueName=f"fleet-{name}-{suffix}-dlq")["QueueUrl"]
    table = f"fleet-{name}-{suffix}"
    run = Run(name, table, url, dlq, [], [], [])
    for w in range(workers):
        out = tmp_path / f"{name}-w{w}.jsonl"
        run.configs.append(_config(tmp_path / f"{name}-w{w}.toml", queue_url=url, dlq=dlq,
                                   table=table, out=out))
        run.outputs.append(out)
        run.logs.append(tmp_path / f"{name}-w{w}.log")
    return run


def init_state(config: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "pipeline", "init-state", "-c", str(config)],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode()


def queue_empty(sqs: Any, url: str) -> bool:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return bool(attrs["ApproximateNumberOfMessages"] == "0"
                and attrs["ApproximateNumberOfMessagesNotVisible"] == "0")


def read_items(paths: list[Path]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for path in paths:
        if path.exists():
            items.extend(orjson.loads(line) for line in path.read_bytes().splitlines()
                         if line.strip())
    return items


def start(boto: Any, run: Run, bodies: list[bytes]) -> list[subprocess.Popen[bytes]]:
    """Start the run's workers, then feed its queue."""
    procs = [start_riposte(c, log) for c, log in zip(run.configs, run.logs, strict=True)]
    send_batches(boto("sqs"), run.queue_url, bodies)
    return procs


def finish(boto: Any, run: Run, procs: list[subprocess.Popen[bytes]]) -> list[dict[str, Any]]:
    """Wait until the queue is drained and the sinks flushed, stop the workers (SIGTERM)."""
    sqs = boto("sqs")
    try:
        drained = wait_for(lambda: queue_empty(sqs, run.queue_url), 45, 0.5)
        time.sleep(1.0)  # the last sink batches linger briefly before they are written
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(30) for proc in procs]
    logs = "\n".join(p.read_text()[-2000:] for p in run.logs if p.exists())
    assert drained, logs
    assert codes == [0] * len(procs), logs
    assert drain_queue(sqs, run.dead_letter_url, settle_seconds=1.0) == [], \
        "nothing was dead-lettered"
    return read_items(run.outputs)


def final_incidents(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last revision of every incident, whichever worker wrote it."""
    last: dict[str, dict[str, Any]] = {}
    for item in items:
        if item.get("item_kind") != "incident":
            continue
        seen = last.get(item["id"])
        if seen is None or item["revision"] > seen["revision"]:
            last[item["id"]] = item
    return last


def incident_shape(incidents: dict[str, dict[str, Any]]
                   ) -> dict[str, frozenset[tuple[str, Any, Any]]]:
    """Per incident: its findings at their latest version (id, count, status)."""
    return {iid: frozenset((f["event_id"], f.get("count"), f.get("status"))
                           for f in inc["findings"])
            for iid, inc in incidents.items()}


def ledger_entries(boto: Any, table: str) -> list[dict[str, Any]]:
    """Every ledger item in the table, read directly with boto3 (pk = "ledger")."""
    ddb = boto("dynamodb")
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True,
                              "KeyConditionExpression": "pk = :pk",
                              "ExpressionAttributeValues": {":pk": {"S": "ledger"}}}
    while True:
        page = ddb.query(**kwargs)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def action_keys(items: list[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    return Counter((a["incident_id"], a["kind"], a["resource"]["id"])
                   for a in items if a.get("item_kind") == "action")


def riposte_actions_list(config: Path) -> list[dict[str, Any]]:
    listed = subprocess.run([sys.executable, "-m", "pipeline", "actions", "list", "-c",
                             str(config)], capture_output=True, timeout=60, check=False)
    assert listed.returncode == 0, listed.stderr.decode()[-2000:]
    entries: list[dict[str, Any]] = orjson.loads(listed.stdout)
    return entries


def test_two_workers_match_one_worker(boto: Any, tmp_path: Path) -> None:
    instances = make_instances(boto, INSTANCES)
    bodies = fleet_input(instances, uuid.uuid4().hex[:6])
    single = prepare(boto, tmp_path, "one", 1)
    fleet = prepare(boto, tmp_path, "two", 2)
    assert "created" in init_state(single.configs[0])
    assert "already exists" in init_state(single.configs[0]), "init-state is idempotent"
    assert "created" in init_state(fleet.configs[0])

    # The baseline and the fleet run side by side on their own queues and tables.
    single_procs = start(boto, single, bodies)
    fleet_procs = start(boto, fleet, bodies)
    baseline = finish(boto, single, single_procs)
    fleet_items = finish(boto, fleet, fleet_procs)

    # Both workers did part of the work (otherwise this test shows nothing about a fleet).
    per_worker = [len(read_items([p])) for p in fleet.outputs]
    assert all(n > 0 for n in per_worker), per_worker

    expected_incidents = final_incidents(baseline)
    expected = incident_shape(expected_incidents)
    got = incident_shape(final_incidents(fleet_items))
    assert len(expected) == INSTANCES, "one incident per instance"
    assert all(inc["correlated"] for inc in expected_incidents.values())
    for findings in expected.values():
        # Its GuardDuty finding at the update's count, and its Inspector finding.
        assert sorted(str(count) for _, count, _ in findings) == ["2", "None"], findings
    assert got == expected, "the fleet ends with the same incidents as one worker"

    # The action ledger: one entry per (incident, kind, resource), the same as one worker's.
    one_ledger = ledger_entries(boto, single.table)
    two_ledger = ledger_entries(boto, fleet.table)
    assert len(one_ledger) == INSTANCES
    assert sorted(i["sk"]["S"] for i in two_ledger) == sorted(i["sk"]["S"] for i in one_ledger)
    states = Counter(orjson.loads(i["v"]["S"])["state"] for i in two_ledger)
    assert states == Counter({"planned": INSTANCES}), states

    # Each decision was emitted exactly once across the fleet, as with one worker.
    emitted = action_keys(fleet_items)
    assert set(emitted.values()) == {1}, emitted
    assert emitted == action_keys(baseline)
    assert {k[0] for k in emitted} == set(expected)
    assert {k[2] for k in emitted} == set(instances)

    # The operator's view of the shared ledger says the same.
    listed = riposte_actions_list(fleet.configs[1])
    assert len(listed) == INSTANCES
    assert {str(e["id"]) for e in listed} == {a["id"] for a in fleet_items
                                              if a.get("item_kind") == "action"}
