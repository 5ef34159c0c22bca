"""Bad input to normalize: each case has one clear outcome, and nothing else ever escapes.

Malformed events of a known kind and forged sources raise ``PermanentError`` with
a reason (the runner dead-letters them); unknown but well-formed events become
observe-only; extra or oddly typed *optional* fields are tolerated, because AWS
adds fields without notice.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import PermanentError
from pipeline.models import Event, EventKind, RawRecord
from pipeline.stages.normalize import NORMALIZERS, REASONS, NormalizeStage, normalize
from tests.conftest import FIXTURES

SAMPLES = FIXTURES / "samples"
GD_EVENT = orjson.loads((SAMPLES / "guardduty/custodian-ec2-duty-event.json").read_bytes())
GD_RAW = orjson.loads((SAMPLES / "guardduty/panther-privesc-iamuser-adminpermissions.json")
                      .read_bytes())
INSP_EVENT = orjson.loads(
    (SAMPLES / "inspector2/awsdocs-inspector2-ec2-package-vulnerability.json").read_bytes())
CT_EVENT = orjson.loads(
    (SAMPLES / "cloudtrail/custodian-event-cloud-trail-create-bucket.json").read_bytes())
CT_RAW = orjson.loads((SAMPLES / "cloudtrail/panther-createuser-console.json").read_bytes())
SH_EVENT = orjson.loads((SAMPLES / "securityhub/asr-cis-1.4-imported.json").read_bytes())
ASFF_RAW = orjson.loads((SAMPLES / "securityhub/panther-asff-decoy-s3-accessed.json")
                        .read_bytes())
PLACEBO = orjson.loads(
    (SAMPLES / "inspector2/custodian-placebo-inspector2-listfindings-query-filter.json")
    .read_bytes())

Edit = Callable[[dict[str, Any]], Any]


def edited(base: dict[str, Any], edit: Edit) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    edit(doc)
    return doc


def run(payload: Any) -> list[Event]:
    return normalize(RawRecord(payload=payload, message_id="m-bad"))


BAD: list[tuple[str, dict[str, Any] | Any, str]] = [
    ("guardduty detail missing", edited(GD_EVENT, lambda d: d.pop("detail")), "missing_detail"),
    ("guardduty detail null", edited(GD_EVENT, lambda d: d.update(detail=None)),
     "missing_detail"),
    ("guardduty detail list", edited(GD_EVENT, lambda d: d.update(detail=[1, 2])),
     "invalid_detail"),
    ("guardduty detail string", edited(GD_EVENT, lambda d: d.update(detail="{}")),
     "invalid_detail"),
    ("guardduty from aws.s3", edited(GD_EVENT, lambda d: d.update(source="aws.s3")),
     "source_mismatch"),
    ("guardduty from custom source", edited(GD_EVENT, lambda d: d.update(source="my.app")),
     "source_mismatch"),
    ("inspector from guardduty", edited(INSP_EVENT, lambda d: d.update(source="aws.guardduty")),
     "source_mismatch"),
    ("security hub from custom", edited(SH_EVENT, lambda d: d.update(source="custom.sechub")),
     "source_mismatch"),
    ("cloudtrail from non-aws source", edited(CT_EVENT, lambda d: d.update(source="evil")),
     "source_mismatch"),
    ("envelope detail-type not a string", edited(GD_EVENT, lambda d: d.update(
        {"detail-type": 7})), "invalid_event"),
    ("envelope without source", edited(GD_EVENT, lambda d: d.pop("source")), "invalid_event"),
    ("unknown detail-type, no detail", {"detail-type": "Something", "source": "x.y"},
     "missing_detail"),
    ("guardduty finding without id", edited(GD_EVENT, lambda d: d["detail"].pop("id")),
     "invalid_event"),
    ("guardduty id not a string", edited(GD_EVENT, lambda d: d["detail"].update(id=5)),
     "invalid_event"),
    ("guardduty empty id", edited(GD_EVENT, lambda d: d["detail"].update(id="")),
     "invalid_event"),
    ("guardduty severity text", edited(GD_EVENT, lambda d: d["detail"].update(severity="high")),
     "invalid_event"),
    ("guardduty severity out of range", edited(GD_EVENT, lambda d: d["detail"].update(
        severity=42)), "invalid_event"),
    ("guardduty no type", edited(GD_EVENT, lambda d: d["detail"].pop("type")), "invalid_event"),
    ("guardduty resource not an object", edited(GD_EVENT, lambda d: d["detail"].update(
        resource="i-123")), "invalid_event"),
    ("raw guardduty service list", edited(GD_RAW, lambda d: d.update(service=[])),
     "invalid_event"),
    ("inspector without findingArn", edited(INSP_EVENT, lambda d: d["detail"].pop(
        "findingArn")), "invalid_event"),
    ("inspector resources not a list", edited(INSP_EVENT, lambda d: d["detail"].update(
        resources={"id": "i-1"})), "invalid_event"),
    ("inspector score not numeric", edited(INSP_EVENT, lambda d: d["detail"].update(
        inspectorScore="bad")), "invalid_event"),
    ("raw cloudtrail without eventID", edited(CT_RAW, lambda d: d.pop("eventID")),
     "invalid_event"),
    ("cloudtrail eventName not a string", edited(CT_RAW, lambda d: d.update(eventName=["x"])),
     "invalid_event"),
    ("cloudtrail userIdentity not an object", edited(CT_EVENT, lambda d: d["detail"].update(
        userIdentity="root")), "invalid_event"),
    ("asff without Id", edited(ASFF_RAW, lambda d: d.pop("Id")), "invalid_event"),
    ("asff Resources a string", edited(ASFF_RAW, lambda d: d.update(Resources="bucket")),
     "invalid_event"),
    ("security hub without findings", edited(SH_EVENT, lambda d: d["detail"].pop("findings")),
     "invalid_event"),
    ("security hub finding not an object", edited(SH_EVENT, lambda d: d["detail"].update(
        findings=["x"])), "invalid_event"),
    ("placebo findings not a list", edited(PLACEBO, lambda d: d["data"].update(findings={})),
     "invalid_event"),
    ("payload a list", [GD_EVENT], "not_an_object"),
    ("payload a string", "GuardDuty Finding", "not_an_object"),
]


@pytest.mark.parametrize(("payload", "reason"), [(p, r) for _, p, r in BAD],
                         ids=[name for name, _, _ in BAD])
def test_bad_input_is_permanent_with_a_reason(payload: Any, reason: str) -> None:
    with pytest.raises(PermanentError) as info:
        run(payload)
    assert info.value.reason == reason
    assert info.value.component == "normalize"
    assert str(info.value).startswith("normalize: ")


def test_validation_message_names_the_field_but_not_the_value() -> None:
    secret = "AKIA-super-secret-value"
    doc = edited(GD_EVENT, lambda d: d["detail"].update(severity=secret))
    with pytest.raises(PermanentError) as info:
        run(doc)
    assert "severity" in info.value.message
    assert secret not in info.value.message


UNKNOWN: list[tuple[str, dict[str, Any]]] = [
    ("unknown detail-type", {"detail-type": "Some Partner Event", "source": "partner.x",
                             "id": "e-1", "detail": {"a": 1}}),
    ("guardduty source other detail-type", edited(GD_EVENT, lambda d: d.update(
        {"detail-type": "GuardDuty Malware Protection Object Scan Result"}))),
    ("plain object", {"hello": "world"}),
    ("empty object", {}),
    ("lambda records batch", {"Records": [{"eventSource": "aws:sqs", "body": "{}"}]}),
    ("placebo without findings", {"status_code": 200, "data": {"Reservations": []}}),
]


@pytest.mark.parametrize("payload", [p for _, p in UNKNOWN], ids=[n for n, _ in UNKNOWN])
def test_unknown_well_formed_events_are_observe_only(payload: dict[str, Any]) -> None:
    (ev,) = run(payload)
    assert ev.kind is EventKind.UNKNOWN
    assert ev.observe_only and ev.observe_reason == "unknown_event"
    assert ev.raw == payload


LENIENT: list[tuple[str, dict[str, Any]]] = [
    ("new top-level fields", edited(GD_EVENT, lambda d: d["detail"].update(
        newField={"x": [1]}, anotherOne=None))),
    ("service.count text", edited(GD_EVENT, lambda d: d["detail"]["service"].update(
        count="many"))),
    ("additionalInfo a string", edited(GD_EVENT, lambda d: d["detail"]["service"].update(
        additionalInfo="nothing"))),
    ("instanceDetails a list", edited(GD_EVENT, lambda d: d["detail"]["resource"].update(
        instanceDetails=[]))),
    ("tags in a strange shape", edited(GD_EVENT, lambda d: d["detail"]["resource"][
        "instanceDetails"].update(tags=[1, {"key": 2}, {"Key": "k", "Value": "v"}]))),
    ("inspector epss a number", edited(INSP_EVENT, lambda d: d["detail"].update(epss=0.5))),
    ("inspector cvss entries odd", edited(INSP_EVENT, lambda d: d["detail"][
        "packageVulnerabilityDetails"].update(cvss=[None, {"baseScore": "9.1"}]))),
    ("cloudtrail resources odd", edited(CT_RAW, lambda d: d.update(resources=[1, {"ARN": 5}]))),
    ("cloudtrail readOnly text", edited(CT_RAW, lambda d: d.update(readOnly="true"))),
    ("asff Workflow missing", edited(ASFF_RAW, lambda d: d.pop("Workflow"))),
    ("envelope resources not a list", edited(GD_EVENT, lambda d: d.update(resources="x"))),
    ("cloudtrail userIdentity null", edited(CT_RAW, lambda d: d.update(userIdentity=None))),
    ("inspector resources null", edited(INSP_EVENT, lambda d: d["detail"].update(
        resources=None))),
    ("asff Resources and Types null", edited(ASFF_RAW, lambda d: d.update(Resources=None,
                                                                           Types=None))),
]


@pytest.mark.parametrize("payload", [p for _, p in LENIENT], ids=[n for n, _ in LENIENT])
def test_extra_and_oddly_typed_optional_fields_are_tolerated(payload: dict[str, Any]) -> None:
    (ev,) = run(payload)
    assert ev.kind is not EventKind.UNKNOWN
    assert ev.id


async def test_stage_logs_a_forged_event_before_refusing_it(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.normalize"), \
            pytest.raises(PermanentError) as info:
        await NormalizeStage().process(RawRecord(
            payload=edited(GD_EVENT, lambda d: d.update(source="aws.s3")), message_id="m-forged"))
    assert info.value.reason == "source_mismatch"
    (record,) = [r for r in caplog.records if r.name == "pipeline.stages.normalize"]
    assert record.message == "forged event refused"
    assert record.__dict__["message_id"] == "m-forged"


def test_a_normalizer_bug_is_dead_lettered_not_retried(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A bug is deterministic for its input: retrying cannot help, so it is poison."""
    def broken(doc: Any, env: Any, raw: Any) -> Event:
        raise KeyError("resource")

    monkeypatch.setitem(NORMALIZERS, "guardduty", broken)
    with caplog.at_level(logging.ERROR, logger="pipeline.stages.normalize"), \
            pytest.raises(PermanentError) as info:
        NormalizeStage().normalize(RawRecord(payload=GD_EVENT, message_id="m-bug"))
    assert info.value.reason == "normalize_failed"
    assert isinstance(info.value.__cause__, KeyError)
    assert any(r.exc_info for r in caplog.records)


# --- property: nothing but PermanentError, whatever the shape --------------------------------
KNOWN_KEYS = [
    "detail-type", "source", "detail", "id", "account", "region", "time", "resources",
    "schemaVersion", "type", "severity", "service", "resource", "accountId", "updatedAt",
    "findingArn", "awsAccountId", "status", "inspectorScore", "packageVulnerabilityDetails",
    "eventVersion", "eventName", "eventSource", "eventID", "eventTime", "userIdentity",
    "requestParameters", "SchemaVersion", "ProductArn", "Id", "Types", "Severity", "Resources",
    "UpdatedAt", "findings", "status_code", "data", "Findings", "instanceDetails",
    "accessKeyDetails", "resourceType", "additionalInfo", "action", "count", "archived",
]
DETAIL_TYPES = ["GuardDuty Finding", "Inspector2 Finding", "AWS API Call via CloudTrail",
                "Security Hub Findings - Imported", "Other"]
SOURCES = ["aws.guardduty", "aws.inspector2", "aws.securityhub", "aws.s3", "x"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(DETAIL_TYPES + SOURCES + ["2024-01-01T00:00:00Z", "Mar 20, 2023, 6:08:05 PM",
                                              "i-0abc", "arn:aws:s3:::b", "GeneratedFindingX",
                                              "AWS_EC2_INSTANCE", "Instance", "AccessKey"]),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(keys, children, max_size=6)),
    max_leaves=25,
)
objects = st.dictionaries(keys, json_values, max_size=10)


def assert_only_permanent(payload: Any) -> None:
    try:
        events = run(payload)
    except PermanentError as err:
        assert err.reason in REASONS - {"normalize_failed"}, err
        return
    for ev in events:
        assert isinstance(ev, Event)
        assert ev.time.tzinfo is not None
        assert 0 <= ev.severity.score <= 100


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objects)
def test_arbitrary_objects_never_raise_anything_but_permanent(payload: dict[str, Any]) -> None:
    assert_only_permanent(payload)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(DETAIL_TYPES), st.sampled_from(SOURCES), objects)
def test_arbitrary_details_never_raise_anything_but_permanent(
        detail_type: str, source: str, detail: dict[str, Any]) -> None:
    assert_only_permanent({"detail-type": detail_type, "source": source, "detail": detail})


SEEDS = [GD_EVENT, GD_RAW, INSP_EVENT, CT_EVENT, CT_RAW, SH_EVENT, ASFF_RAW, PLACEBO]


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):
            out.extend(_paths(v, (*prefix, i)))
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_real_samples_never_raise_anything_but_permanent(data: st.DataObject) -> None:
    doc = copy.deepcopy(data.draw(st.sampled_from(SEEDS)))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:  # every key deleted already
            break
        path = data.draw(st.sampled_from(paths))
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[part]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(json_values)
    assert_only_permanent(doc)
