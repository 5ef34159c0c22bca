"""A GuardDuty finding forged straight into the queue never reaches containment.

With ``trust.refetch_guardduty`` on, the whole pipeline (SQS source, decode,
normalize, trust, correlate, score, contain in enforce mode) asks GuardDuty
whether each finding exists before believing it. GuardDuty's GetFindings is
served by a local fake of its REST API (moto has none); everything else is moto.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from typing import Any

import orjson
import pytest

from pipeline.assemble import build_pipeline, open_context
from pipeline.config import parse_config
from pipeline.sources.base import Message, Outcome
from pipeline.worker import Runner
from tests.integration.actions_support import HOME, REGION, instance_groups, make_instance
from tests.integration.e2e_helpers import GUARDDUTY_EVENT
from tests.unit.test_trust import FakeGuardDuty, guardduty  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

DETECTOR = "c0b018e3eb2130078632d999e41d4f02"


def finding_event(instance_id: str) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads(GUARDDUTY_EVENT.read_bytes())
    detail = copy.deepcopy(event["detail"])
    finding_id = uuid.uuid4().hex
    detail.update({
        "id": finding_id, "accountId": HOME, "region": REGION, "severity": 8,
        "arn": f"arn:aws:guardduty:{REGION}:{HOME}:detector/{DETECTOR}/finding/{finding_id}",
        "resource": {"resourceType": "Instance", "instanceDetails": {"instanceId": instance_id}},
    })
    detail["service"]["additionalInfo"] = {}
    event.update({"detail": detail, "account": HOME, "region": REGION,
                  "id": str(uuid.uuid4())})
    return event


async def test_forged_finding_is_never_contained_and_a_real_one_is(
        boto: Any, guardduty: FakeGuardDuty, tmp_path: Any) -> None:  # noqa: F811
    forged_target, real_target = make_instance(boto), make_instance(boto)
    forged_before = instance_groups(boto, forged_target["instance"])
    real_before = instance_groups(boto, real_target["instance"])
    real = finding_event(real_target["instance"])
    guardduty.add(real["detail"])
    forged = finding_event(forged_target["instance"])

    sqs = boto("sqs")
    url = sqs.create_queue(QueueName=f"forged-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    for event in (forged, real):
        sqs.send_message(QueueUrl=url, MessageBody=orjson.dumps(event).decode())

    config = parse_config({
        "service": {"region": REGION, "shutdown_deadline": 5},
        "metrics": {"enabled": False},
        "state": {"type": "sqlite", "path": str(tmp_path / "state.db")},
        "sources": [{"type": "sqs", "queue_url": url, "wait_time_seconds": 1}],
        "trust": {"accounts": [HOME], "regions": [REGION], "refetch_guardduty": True},
        "containment": {"mode": "enforce", "accounts": [HOME], "regions": [REGION],
                        "policies": [{"name": "isolate",
                                      "match": {"resource_types": ["ec2.instance"]},
                                      "actions": [{"kind": "ec2.isolate"}]}]},
        "sinks": [{"type": "jsonl", "name": "out", "path": str(tmp_path / "out.jsonl"),
                   "routing": {"kinds": ["incident", "action"]}}],
    }, env={})
    ctx = await open_context(config)
    pipeline = await build_pipeline(config, ctx)
    runner = Runner(pipeline.sources, pipeline.chain, concurrency=4, shutdown_deadline=5,
                    on_close=[pipeline.aclose])
    settled: list[Outcome] = []

    def on_settled(_source: Any, _message: Message, outcome: Outcome) -> None:
        settled.append(outcome)
        if len(settled) >= 2:
            runner.stop()

    runner.on_settled = on_settled
    await asyncio.wait_for(runner.run(), 60)

    assert [o.kind.value for o in settled] == ["ack", "ack"]
    assert instance_groups(boto, forged_target["instance"]) == forged_before, \
        "the forged finding changed nothing"
    assert instance_groups(boto, real_target["instance"]) != real_before, \
        "the genuine finding was contained"
    asked = {i for r in guardduty.requests for i in r["ids"]}
    assert asked == {forged["detail"]["id"], real["detail"]["id"]}
    outputs = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    forged_incident = next(o for o in outputs if o["item_kind"] == "incident"
                           and o["resources"][0]["id"] == forged_target["instance"])
    assert forged_incident["observe_only"] and "refetch_not_found" in str(
        forged_incident["observe_reason"])
