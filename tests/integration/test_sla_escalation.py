"""Incidents not contained within the SLA are escalated to the alert sinks by `riposte run`."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.actions_support import HOME, REGION, make_instance
from tests.integration.e2e_helpers import start_riposte, wait_for, write_config
from tests.integration.test_forged_findings import finding_event

pytestmark = pytest.mark.integration


def _actions(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    items = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return [i for i in items if i.get("item_kind") == "action"]


def test_a_plan_left_waiting_past_the_sla_is_escalated(boto: Any, tmp_path: Path) -> None:
    target = make_instance(boto)
    sqs = boto("sqs")
    url = sqs.create_queue(QueueName=f"sla-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    sqs.send_message(QueueUrl=url,
                     MessageBody=orjson.dumps(finding_event(target["instance"])).decode())
    out = tmp_path / "out.jsonl"
    config = write_config(tmp_path / "riposte.toml", f"""
[service]
region = "{REGION}"
shutdown_deadline = 5

[metrics]
enabled = false

[state]
type = "sqlite"
path = "{tmp_path / 'state.db'}"

[[sources]]
type = "sqs"
queue_url = "{url}"
wait_time_seconds = 1

[containment]
mode = "approve"
accounts = ["{HOME}"]
regions = ["{REGION}"]
sla_seconds = 1

[[containment.policies]]
name = "isolate"
match = {{ resource_types = ["ec2.instance"] }}
actions = [{{ kind = "ec2.isolate" }}]

[[sinks]]
type = "jsonl"
name = "alerts"
path = "{out}"
routing = {{ kinds = ["action"] }}
""")
    proc = start_riposte(config, tmp_path / "log")
    try:
        assert wait_for(lambda: any(a["status"] == "awaiting_approval"
                                    for a in _actions(out)), 30), \
            (tmp_path / "log").read_text()[-2000:]
        # The escalation pass runs every max(5 s, SLA / 4).
        assert wait_for(lambda: any(a["kind"] == "escalate" for a in _actions(out)), 20), \
            (tmp_path / "log").read_text()[-2000:]
        # One more pass goes by: the same decision must not be escalated again.
        time.sleep(6)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    escalated = [a for a in _actions(out) if a["kind"] == "escalate"]
    assert len(escalated) == 1, "escalated once, not on every pass"
    assert "SLA" in escalated[0]["reason"]
    assert escalated[0]["resource"]["id"] == target["instance"]
