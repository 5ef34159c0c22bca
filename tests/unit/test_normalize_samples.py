"""Normalize every real sample and check it against the facts its manifest records.

Three tables: the shared developer set (``../shared/samples/events``, skipped when
absent, including the AGPL files that are never copied), the project's copies in
``tests/fixtures/samples`` (runs anywhere), and the derived fixtures whose
expectations are written next to them in ``tests/fixtures/derived/manifest.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import metrics
from pipeline.models import Event, EventKind, RawRecord
from pipeline.stages.normalize import NormalizeStage, normalize
from tests.conftest import FIXTURES, SHARED_SAMPLES, shared_samples_or_skip

LOCAL_SAMPLES = FIXTURES / "samples"
DERIVED = FIXTURES / "derived"

KINDS = {
    "guardduty_finding": EventKind.GUARDDUTY,
    "inspector2_finding": EventKind.INSPECTOR,
    "cloudtrail_api_call": EventKind.CLOUDTRAIL,
    "securityhub_asff_finding": EventKind.SECURITYHUB,
    # Lambda batch envelopes, S3 notification bodies and other EventBridge events are
    # not findings: normalize keeps them, observe-only, as ``unknown``.
    "eventbridge_other": EventKind.UNKNOWN,
    "envelope_record": EventKind.UNKNOWN,
}


def manifest_entries(root: Path) -> list[dict[str, Any]]:
    path = root / "manifest.json"
    if not path.is_file():
        return []
    entries: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["files"]
    return entries


def run(root: Path, name: str) -> list[Event]:
    payload = orjson.loads((root / name).read_bytes())
    return normalize(RawRecord(payload=payload, message_id=f"msg-{name}", received_at=1.7e9))


def resource_names(event: Event) -> set[str]:
    names: set[str] = set()
    for res in event.resources:
        names.add(res.id)
        if res.arn:
            names.add(res.arn)
        source_id = res.details.get("source_id")
        if isinstance(source_id, str):
            names.add(source_id)
    return names


def check_severity(event: Event, expected: Any) -> None:
    if expected is None:
        return
    if isinstance(expected, str):
        assert str(event.severity.native).upper() == expected.upper()
        assert event.severity.label.value == expected.lower()
    else:
        # GuardDuty's 0-10 native value, or ASFF's Normalized 0-100.
        assert isinstance(event.severity.native, int | float)
        assert float(event.severity.native) == float(expected)
        if event.kind is EventKind.GUARDDUTY:
            assert event.severity.score == round(float(expected) * 10)
        else:
            assert event.severity.score == round(float(expected))


def check_event(event: Event, exp: dict[str, Any]) -> None:
    kind = KINDS[exp["event_kind"]]
    assert event.kind is kind
    assert event.time.tzinfo is not None and event.time.utcoffset() == UTC.utcoffset(None)
    assert event.id
    if kind is EventKind.UNKNOWN:
        assert event.observe_only and event.observe_reason == "unknown_event"
        if exp.get("envelope_detail_type"):
            assert event.type == exp["envelope_detail_type"]
            assert event.account == exp["account"]
            assert event.region == exp["region"]
            assert set(exp.get("envelope_resources") or ()) <= resource_names(event)
        return
    expected_type = exp.get("finding_type") or exp.get("event_name")
    if isinstance(expected_type, list):
        expected_type = expected_type[0]
    assert event.type == expected_type
    assert event.account == exp["account"]
    if exp.get("region"):
        assert event.region == exp["region"]
    missing = set(exp.get("resource_ids") or ()) - resource_names(event)
    assert not missing, f"resource ids not found: {missing} in {resource_names(event)}"
    check_severity(event, exp.get("severity"))
    if "sample" in exp:
        assert event.sample is exp["sample"]
        assert event.observe_only is exp["sample"]
    if kind is EventKind.INSPECTOR:
        assert event.status == exp["status"]
        assert event.attributes.get("vulnerability_id") == exp.get("vulnerability_id")
    if kind is EventKind.CLOUDTRAIL:
        attrs = event.attributes
        assert attrs["event_name"] == exp["event_name"]
        assert attrs["event_source"] == exp["event_source"]
        assert attrs.get("user_type") == exp["user_identity_type"]
        assert attrs.get("source_ip") == exp["source_ip"]
        assert attrs.get("user_agent") == exp["user_agent"]
        assert attrs.get("error_code") == exp["error_code"]
        expected_time = datetime.fromisoformat(exp["event_time"]).replace(tzinfo=UTC)
        assert event.time == expected_time
    if kind is EventKind.SECURITYHUB and exp.get("finding_id"):
        assert event.id == exp["finding_id"]
    if exp.get("envelope_detail_type"):
        assert event.detail_type == exp["envelope_detail_type"]
        assert event.origin["shape"] == "eventbridge"


def check_file(root: Path, entry: dict[str, Any]) -> None:
    events = run(root, entry["file"])
    if entry["kind"] == "envelopes" and entry["shape"] != "eventbridge":
        # Transport wrappers are unwrapped by the decode stage (its own tests); if one
        # reaches normalize whole it is one observe-only unknown event, never an error.
        (event,) = events
        assert event.kind is EventKind.UNKNOWN and event.observe_only
        return
    assert len(events) == entry["event_count"] == len(entry["events"])
    for event, exp in zip(events, entry["events"], strict=True):
        check_event(event, exp)


SHARED_ENTRIES = manifest_entries(SHARED_SAMPLES)
LOCAL_ENTRIES = manifest_entries(LOCAL_SAMPLES)
# Without the shared set, one placeholder case reports the skip and why.
SHARED_PARAMS: list[dict[str, Any] | None] = [*SHARED_ENTRIES] or [None]


@pytest.mark.parametrize("entry", SHARED_PARAMS,
                         ids=[e["file"] for e in SHARED_ENTRIES] or ["shared-set-absent"])
def test_shared_sample_matches_manifest(entry: dict[str, Any] | None) -> None:
    root = shared_samples_or_skip()
    assert entry is not None
    check_file(root, entry)


@pytest.mark.parametrize("entry", LOCAL_ENTRIES, ids=[e["file"] for e in LOCAL_ENTRIES])
def test_project_sample_matches_manifest(entry: dict[str, Any]) -> None:
    check_file(LOCAL_SAMPLES, entry)


def test_every_shared_file_has_a_manifest_entry() -> None:
    root = shared_samples_or_skip()
    files = {str(p.relative_to(root)) for p in root.rglob("*.json") if p.name != "manifest.json"}
    assert files == {e["file"] for e in SHARED_ENTRIES}


DERIVED_ENTRIES = manifest_entries(DERIVED)


@pytest.mark.parametrize("entry", DERIVED_ENTRIES, ids=[e["file"] for e in DERIVED_ENTRIES])
def test_derived_fixture_normalizes_as_documented(entry: dict[str, Any]) -> None:
    exp = entry["expect"]
    (event,) = run(DERIVED, entry["file"])
    assert event.kind.value == exp["kind"]
    assert event.type == exp["type"]
    assert event.id == exp["id"]
    assert event.account == exp["account"] and event.region == exp["region"]
    assert event.sample is exp["sample"] and not event.observe_only
    assert event.status == exp["status"]
    assert event.count == exp.get("count")
    assert event.primary_resource is not None
    assert event.primary_resource.type == exp["resource_type"]
    assert [r.id for r in event.resources][: len(exp["resource_ids"])] == exp["resource_ids"]
    check_severity(event, exp["severity"])


def test_derived_pair_names_the_same_instance() -> None:
    (gd,) = run(DERIVED, "guardduty/gd-ec2-paired-finding.json")
    (insp,) = run(DERIVED, "inspector2/inspector-ec2-paired-finding.json")
    assert gd.primary_resource is not None and insp.primary_resource is not None
    key = "ec2.instance:i-0abc123def4567890"
    assert gd.primary_resource.key == insp.primary_resource.key == key
    assert gd.lane_key == insp.lane_key
    assert gd.primary_resource.arn == insp.primary_resource.arn


def test_derived_update_is_newer_with_higher_count() -> None:
    (first,) = run(DERIVED, "guardduty/gd-ec2-paired-finding.json")
    (update,) = run(DERIVED, "guardduty/gd-ec2-paired-finding-update.json")
    assert update.id == first.id
    assert update.time > first.time
    assert (update.count or 0) == (first.count or 0) + 1
    (active,) = run(DERIVED, "inspector2/inspector-ec2-paired-finding.json")
    (closed,) = run(DERIVED, "inspector2/inspector-ec2-paired-finding-closed.json")
    assert closed.id == active.id and closed.time > active.time
    assert (active.status, closed.status) == ("ACTIVE", "CLOSED")


async def test_stage_over_all_project_samples_counts_every_event() -> None:
    stage = NormalizeStage()
    before = {k: metrics.value(metrics.EVENTS, kind=k.value) for k in EventKind}
    seen: Counter[EventKind] = Counter()
    for entry in LOCAL_ENTRIES:
        payload = orjson.loads((LOCAL_SAMPLES / entry["file"]).read_bytes())
        out = await stage.process(RawRecord(payload=payload, message_id=entry["file"]))
        assert all(isinstance(e, Event) for e in out)
        seen.update(e.kind for e in out)
    assert seen[EventKind.GUARDDUTY] == 5 and seen[EventKind.INSPECTOR] == 6
    assert seen[EventKind.CLOUDTRAIL] == 7 and seen[EventKind.SECURITYHUB] == 4
    for kind in EventKind:
        assert metrics.value(metrics.EVENTS, kind=kind.value) - before[kind] == seen[kind]
