"""The operator commands as a person runs them: actions list/pause/resume, approve, rollback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.aws import AwsClients
from pipeline.clock import WALL_CLOCK
from pipeline.models import ActionStatus
from pipeline.stages import contain
from pipeline.state.sqlite import SqliteStore
from tests.integration.actions_support import (
    HOME,
    REGION,
    containment,
    context,
    ec2_ref,
    incident,
    instance_groups,
    make_instance,
)

pytestmark = pytest.mark.integration


def riposte(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                          timeout=120, env=dict(os.environ), check=False)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "riposte.toml"
    path.write_text(f"""
[state]
type = "sqlite"
path = "{tmp_path / 'state.db'}"

[containment]
mode = "approve"
accounts = ["{HOME}"]
regions = ["{REGION}"]

[[containment.policies]]
name = "isolate"
match = {{ finding_types = ["*"], min_score = 50 }}
actions = [{{ kind = "ec2.isolate" }}]
""")
    return path


async def test_approve_then_rollback_from_the_command_line(boto: Any, tmp_path: Path) -> None:
    config = _config(tmp_path)
    ids = make_instance(boto)
    before = instance_groups(boto, ids["instance"])
    store = await SqliteStore.open(str(tmp_path / "state.db"))
    aws = AwsClients(REGION)
    try:
        ctx = context(containment(["ec2.isolate"], mode="approve"), store, aws, WALL_CLOCK)
        stage = contain.build(ctx.config, ctx)
        out = await stage.process(incident(ec2_ref(ids)))
    finally:
        await store.aclose()
        await aws.aclose()
    pending = [r for r in out if getattr(r, "item_kind", "") == "action"]
    assert [r.status for r in pending] == [ActionStatus.AWAITING_APPROVAL]
    plan_id = pending[0].id
    assert instance_groups(boto, ids["instance"]) == before, "nothing applied before approval"

    listed = riposte("actions", "list", "-c", str(config), "--status", "awaiting_approval")
    assert listed.returncode == 0, listed.stderr
    assert plan_id in {a["id"] for a in orjson.loads(listed.stdout)}

    approved = riposte("approve", plan_id, "-c", str(config))
    assert approved.returncode == 0, approved.stderr
    isolated = instance_groups(boto, ids["instance"])
    assert isolated != before and len(isolated) == 1

    rolled = riposte("rollback", plan_id, "-c", str(config))
    assert rolled.returncode == 0, rolled.stderr
    assert instance_groups(boto, ids["instance"]) == before

    again = riposte("approve", plan_id, "-c", str(config))
    assert again.returncode == 1 and b"Traceback" not in again.stderr


def test_pause_resume_and_refusals_are_plain_messages(moto_server: str, tmp_path: Path) -> None:
    config = _config(tmp_path)
    paused = riposte("actions", "pause", "-c", str(config))
    assert paused.returncode == 0, paused.stderr
    assert orjson.loads(paused.stdout)["paused"] is True
    resumed = riposte("actions", "resume", "-c", str(config))
    assert orjson.loads(resumed.stdout)["paused"] is False
    unknown = riposte("approve", "act-does-not-exist", "-c", str(config))
    assert unknown.returncode == 1
    assert b"act-does-not-exist" in unknown.stderr and b"Traceback" not in unknown.stderr
    usage = riposte("rollback", "-c", str(config))
    assert usage.returncode == 2 and b"ACTION_ID or --incident" in usage.stderr
