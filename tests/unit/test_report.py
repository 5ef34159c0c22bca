"""The replay report from hand-made results: ordering, time to contain, held plans, compare."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from pipeline import report
from pipeline.models import (
    ActionMode,
    ActionRecord,
    ActionStatus,
    EventKind,
    FindingRef,
    Incident,
    ResourceRef,
    RiskScore,
    ScoreReason,
    Severity,
    SeverityLabel,
)
from pipeline.replay import ReplayResult

T0 = datetime(2024, 9, 4, 17, 0, tzinfo=UTC)


def _incident(n: int, score: int) -> Incident:
    ref = ResourceRef(type="ec2.instance", id=f"i-{n:017x}")
    sev = Severity.of_score(score)
    return Incident(
        id=f"inc-{n}", key=ref.key, title=f"incident {n}", account="123456789012",
        region="us-east-1", resources=(ref,),
        findings=(FindingRef(f"f-{n}", EventKind.GUARDDUTY, "Backdoor:EC2/X", sev, T0),),
        first_seen=T0, last_seen=T0,
        score=RiskScore(score, SeverityLabel.from_score(score),
                        (ScoreReason("severity", float(score), "GuardDuty rating"),)))


def _action(inc: Incident, kind: str, status: ActionStatus, delay: float,
            reason: str = "") -> ActionRecord:
    return ActionRecord(id=f"a-{inc.id}-{kind}", incident_id=inc.id, kind=kind,
                        resource=inc.resources[0], mode=ActionMode.ENFORCE, status=status,
                        reason=reason, planned_at=T0 + timedelta(seconds=delay))


def _result() -> ReplayResult:
    result = ReplayResult(inputs=2, messages=3, events=3)
    incs = [_incident(1, 90), _incident(2, 40), _incident(3, 90)]
    for inc in reversed(incs):  # insertion order must not matter
        result.incidents[inc.id] = inc
    held = "blast-radius limit reached (1 actions/min)"
    for record in (
            _action(incs[0], "ec2.isolate", ActionStatus.PLANNED, 30),
            _action(incs[0], "ec2.snapshot", ActionStatus.PLANNED, 1),  # contains nothing
            _action(incs[1], "ec2.isolate", ActionStatus.AWAITING_APPROVAL, 5, held),
            _action(incs[2], "ec2.isolate", ActionStatus.PLANNED, 90)):
        result.actions[(record.incident_id, record.kind, record.resource.key)] = record
    for ev_time, kind in ((T0, "guardduty"), (T0 + timedelta(hours=2), "cloudtrail")):
        result.events_by_type[(kind, "T")] += 1
        result.events_by_hour[(ev_time.strftime("%Y-%m-%dT%H:00Z"), kind)] += 1
    result.first_time, result.last_time = T0, T0 + timedelta(hours=2)
    result.error("x.json", "invalid_json", "oops")
    return result


def test_report_fields_and_order() -> None:
    rep = report.build_report(_result())
    assert [i["id"] for i in rep["incidents"]] == ["inc-1", "inc-3", "inc-2"]
    assert rep["incidents"][0]["reasons"] == ["severity: GuardDuty rating (+90)"]
    assert [a["kind"] for a in rep["actions"]] == ["ec2.snapshot", "ec2.isolate",
                                                   "ec2.isolate", "ec2.isolate"]
    assert rep["held_for_approval"] == 1
    assert rep["held_for_approval_by_reason"] == {"blast-radius limit reached (1 actions/min)": 1}
    assert rep["actions_by_status"] == {"awaiting_approval": 1, "planned": 3}
    assert rep["time_range"] == {"first": "2024-09-04T17:00:00Z", "last": "2024-09-04T19:00:00Z"}
    assert rep["inputs"]["errors"] == {"invalid_json": 1}


def test_time_to_contain_counts_unattended_containing_actions_only() -> None:
    ttc = report.build_report(_result())["time_to_contain"]
    # inc-1: isolate at 30 s (the 1 s snapshot contains nothing); inc-3: 90 s; inc-2 held.
    assert ttc == {"count": 2, "p50_seconds": 60.0, "p90_seconds": 90.0, "max_seconds": 90.0}
    assert report.build_report(ReplayResult())["time_to_contain"] == {"count": 0}


def test_json_is_canonical() -> None:
    data = report.to_json(report.build_report(_result()))
    assert data.endswith(b"\n")
    assert data == report.to_json(orjson.loads(data))  # keys sorted, stable


def test_compare_reports_actions_and_scores() -> None:
    a = report.build_report(_result())
    changed = _result()
    inc = changed.incidents["inc-2"]
    changed.incidents["inc-2"] = _incident(2, 70)
    key = ("inc-2", "ec2.isolate", inc.resources[0].key)
    changed.actions[key] = _action(inc, "ec2.isolate", ActionStatus.PLANNED, 5)
    del changed.incidents["inc-3"]
    b = report.build_report(changed)
    diff: dict[str, Any] = report.compare_reports(a, b)
    assert [i["id"] for i in diff["incidents_only_in_a"]] == ["inc-3"]
    assert diff["incidents_scored_differently"] == [
        {"id": "inc-2", "a": [40, "medium"], "b": [70, "high"]}]
    assert [x["status"] for x in diff["actions_only_in_a"]] == ["awaiting_approval"]
    assert [x["status"] for x in diff["actions_only_in_b"]] == ["planned"]


def test_markdown_and_html_carry_the_essentials() -> None:
    rep = report.build_report(_result())
    md = report.to_markdown(rep)
    for text in ("inc-1", "ec2.isolate", "Held back for approval by the blast-radius limit: 1",
                 "invalid_json", "p50 60.0 s"):
        assert text in md
    page = report.to_html(rep)
    assert "<svg" in page and "inc-1" in page and "<script" not in page
