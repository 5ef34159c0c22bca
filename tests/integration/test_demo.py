"""`riposte demo`, the README's first command, end to end in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import orjson
import pytest

pytestmark = pytest.mark.integration


def _demo(*args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    done = subprocess.run([sys.executable, "-m", "pipeline", "demo", "--json", *args],
                          capture_output=True, timeout=240, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    summary: dict[str, Any] = orjson.loads(done.stdout)
    return summary


def test_demo_runs_the_whole_chain_on_the_bundled_samples() -> None:
    s = _demo()
    assert s["messages_settled"] == s["messages_sent"] > 20
    assert set(s["messages_by_path"]) == {"SQS", "Kinesis"}
    assert s["cloudtrail_log_file_records"] >= 5
    assert {"guardduty", "inspector2", "cloudtrail", "securityhub"} <= set(s["normalized"])
    # Every deliberately broken message is dead-lettered with its own reason.
    assert s["dead_lettered"] == {
        "bad/forged-source": "normalize:source_mismatch",
        "bad/invalid-json": "decode:invalid_json",
        "bad/invalid-utf8": "decode:invalid_utf8",
        "bad/missing-detail": "normalize:missing_detail",
    }
    correlated = [i for i in s["incidents"] if i["correlated"]]
    assert correlated, "the derived GuardDuty + Inspector pair correlates"
    top = correlated[0]
    assert top["score"]["label"] in ("high", "critical")
    assert {r["factor"] for r in top["score"]["reasons"]} >= {"guardduty_severity", "cvss"}
    assert any(i["sample"] and i["observe_only"] for i in s["incidents"])
    assert {d["type"] for d in s["detections"]} >= {"root_credential_use"}
    planned = [a for a in s["actions"] if a["status"] == "planned"]
    assert {a["kind"] for a in planned} >= {"ec2.isolate", "iam.deactivate_access_key"}
    assert all(a["status"] != "applied" for a in s["actions"]), "dry-run changes nothing"


def test_demo_enforce_applies_verifies_and_rolls_back() -> None:
    s = _demo("--enforce")
    verified = [a for a in s["actions"] if a["status"] == "verified"]
    assert {a["kind"] for a in verified} >= {"ec2.isolate", "iam.deactivate_access_key"}
    assert sorted(s["rolled_back"]) == sorted(a["id"] for a in verified)
