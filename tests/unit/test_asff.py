"""ASFF mapping and validation: Riposte items become findings Security Hub accepts."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.models import (
    ActionMode,
    ActionRecord,
    ActionStatus,
    Detection,
    Event,
    EventKind,
    FindingRef,
    Incident,
    IncidentPhase,
    ResourceRef,
    RiskScore,
    ScoreReason,
    Severity,
    SeverityLabel,
)
from pipeline.serde import dumps
from sinks import asff

CTX = asff.AsffContext(account_id="123456789012", region="eu-west-1")
T0 = datetime(2026, 11, 23, 9, 0, 0, 123456, tzinfo=UTC)
INSTANCE = ResourceRef(type="ec2.instance", id="i-0abc", account="210987654321",
                       region="eu-west-1", tags={"env": "prod", "aws:cloudformation:x": "y"})


def make_incident(**changes: object) -> Incident:
    base = Incident(
        id="inc-1234", key="ec2.instance:i-0abc", title="Crypto mining on i-0abc",
        account="210987654321", region="eu-west-1", resources=(INSTANCE,),
        findings=(
            FindingRef(event_id="gd-1", kind=EventKind.GUARDDUTY,
                       type="CryptoCurrency:EC2/BitcoinTool.B!DNS",
                       severity=Severity.of_score(80, 8.0), time=T0),
            FindingRef(event_id="insp-1", kind=EventKind.INSPECTOR, type="PACKAGE_VULNERABILITY",
                       severity=Severity.of_score(95, "CRITICAL"), time=T0),
        ),
        first_seen=T0, last_seen=T0 + timedelta(minutes=5), correlated=True,
        score=RiskScore(value=93, label=SeverityLabel.CRITICAL, reasons=(
            ScoreReason("guardduty", 60, "CryptoCurrency finding, severity 8.0"),
            ScoreReason("cve_exploitable", 33, "CVE-2024-1 with a public exploit"),
        )),
        mitre=("T1496", "T1190"),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def make_detection(**changes: object) -> Event:
    base = Event(
        id="evt-77", kind=EventKind.DETECTION, type="riposte:cloudtrail/root-login",
        title="Root console login", source="riposte", account="210987654321",
        region="us-east-1", time=T0,
        severity=Severity.of_score(75),
        resources=(ResourceRef(type="iam.user", id="root", account="210987654321"),),
        detection=Detection(rule_id="ct.root_login", title="Root console login",
                            description="The root user signed in to the console.",
                            severity=SeverityLabel.HIGH, mitre=("T1078.004",),
                            trigger_event_id="ct-1"),
        item_kind="detection",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def make_action(**changes: object) -> ActionRecord:
    base = ActionRecord(
        id="act-1", incident_id="inc-1234", kind="ec2.isolate", resource=INSTANCE,
        mode=ActionMode.ENFORCE, status=ActionStatus.APPLIED, planned_at=T0,
        applied_at=T0 + timedelta(seconds=3),
        rollback_hint="riposte rollback act-1 (restores security groups sg-1)")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_incident_finding_is_valid_asff_with_the_expected_fields() -> None:
    finding = asff.to_finding(make_incident(), CTX)
    assert asff.validate(finding) == []
    assert finding["SchemaVersion"] == "2018-10-08"
    assert finding["Id"] == "riposte/inc-1234"
    assert finding["ProductArn"] == (
        "arn:aws:securityhub:eu-west-1:123456789012:product/123456789012/default")
    assert finding["GeneratorId"] == "riposte/correlate"
    # With the default product ARN the finding belongs to the importing account.
    assert finding["AwsAccountId"] == "123456789012"
    assert finding["ProductFields"]["riposte/account"] == "210987654321"
    assert finding["Severity"] == {"Label": "CRITICAL", "Normalized": 93, "Original": "93"}
    assert finding["FindingProviderFields"]["Severity"]["Label"] == "CRITICAL"
    assert finding["ProductFields"]["riposte/mitre"] == "T1496,T1190"
    assert "cve_exploitable +33" in finding["ProductFields"]["riposte/score_reasons"]
    assert finding["CreatedAt"] == "2026-11-23T09:00:00.123Z"
    assert finding["FirstObservedAt"] == "2026-11-23T09:00:00.123Z"
    assert finding["LastObservedAt"] == "2026-11-23T09:05:00.123Z"
    assert finding["RecordState"] == "ACTIVE"
    assert finding["Workflow"] == {"Status": "NEW"}
    types = finding["Types"]
    assert "Effects/Resource Consumption/T1496" in types
    assert "TTPs/Initial Access/T1190" in types
    assert "Effects/Resource Consumption/CryptoCurrency:EC2-BitcoinTool.B!DNS" in types
    assert "Software and Configuration Checks/Vulnerabilities/CVE" in types
    assert finding["FindingProviderFields"]["Types"] == types
    [resource] = finding["Resources"]
    assert resource == {
        "Type": "AwsEc2Instance", "Id": "arn:aws:ec2:eu-west-1:210987654321:instance/i-0abc",
        "Partition": "aws", "Region": "eu-west-1", "Tags": {"env": "prod"}}
    assert "No containment action" in finding["Remediation"]["Recommendation"]["Text"]


def test_same_incident_same_id_and_updated_at_grows_with_every_revision() -> None:
    first = make_incident()
    # A later revision with no new finding (a containment action landed): same last_seen.
    action_rev = dataclasses.replace(first, revision=2, actions=(make_action(),),
                                     phase=IncidentPhase.CONTAINED)
    newer = dataclasses.replace(action_rev, revision=3, last_seen=first.last_seen
                                + timedelta(minutes=1))
    findings = [asff.to_finding(i, CTX) for i in (first, action_rev, newer)]
    assert {f["Id"] for f in findings} == {"riposte/inc-1234"}
    stamps = [f["UpdatedAt"] for f in findings]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    # A redelivered revision maps to exactly the same finding (idempotent import).
    assert asff.to_finding(first, CTX) == findings[0]
    assert all(f["CreatedAt"] == findings[0]["CreatedAt"] for f in findings)


def test_updated_at_never_goes_backwards_when_last_seen_is_before_first_seen() -> None:
    odd = make_incident(last_seen=T0 - timedelta(hours=1))
    finding = asff.to_finding(odd, CTX)
    assert finding["UpdatedAt"] >= finding["CreatedAt"]
    assert asff.validate(finding) == []


def test_remediation_says_what_was_done_what_waits_and_how_to_roll_back() -> None:
    waiting = make_action(id="plan-9", kind="iam.deactivate_key",
                          status=ActionStatus.AWAITING_APPROVAL, mode=ActionMode.APPROVE,
                          resource=ResourceRef(type="iam.access_key", id="AKIAEXAMPLE"))
    incident = make_incident(actions=(make_action(), waiting), revision=2)
    finding = asff.to_finding(incident, CTX)
    text = finding["Remediation"]["Recommendation"]["Text"]
    assert "Done: ec2.isolate on i-0abc (applied, enforce)" in text
    assert "plan plan-9" in text and "riposte approve" in text
    assert "Roll back: riposte rollback act-1" in text
    assert len(text) <= asff.MAX_RECOMMENDATION
    assert "ec2.isolate" in finding["ProductFields"]["riposte/actions"]


def test_recovered_incident_is_archived_and_sample_is_marked() -> None:
    finding = asff.to_finding(make_incident(phase=IncidentPhase.RECOVERED, sample=True), CTX)
    assert finding["RecordState"] == "ARCHIVED"
    assert finding["Title"].startswith("[sample] ")
    assert finding["ProductFields"]["riposte/sample"] == "true"


@pytest.mark.parametrize(("ref", "asff_type", "asff_id"), [
    (ResourceRef("ec2.instance", "i-1"), "AwsEc2Instance",
     "arn:aws:ec2:eu-west-1:123456789012:instance/i-1"),
    (ResourceRef("s3.bucket", "my-bucket"), "AwsS3Bucket", "arn:aws:s3:::my-bucket"),
    (ResourceRef("iam.access_key", "AKIAEXAMPLE"), "AwsIamAccessKey", "AKIAEXAMPLE"),
    (ResourceRef("iam.user", "alice"), "AwsIamUser", "arn:aws:iam::123456789012:user/alice"),
    (ResourceRef("iam.role", "ops"), "AwsIamRole", "arn:aws:iam::123456789012:role/ops"),
    (ResourceRef("ecr.image", "sha256:abc",
                 arn="arn:aws:ecr:eu-west-1:123456789012:repository/app/sha256:abc"),
     "AwsEcrContainerImage", "arn:aws:ecr:eu-west-1:123456789012:repository/app/sha256:abc"),
    (ResourceRef("lambda.function", "fn"), "AwsLambdaFunction",
     "arn:aws:lambda:eu-west-1:123456789012:function:fn"),
    (ResourceRef("eks.cluster", "prod"), "AwsEksCluster",
     "arn:aws:eks:eu-west-1:123456789012:cluster/prod"),
    (ResourceRef("other", "thing-1"), "Other", "thing-1"),
    (ResourceRef("ec2.instance", "i-2", arn="arn:aws:ec2:us-east-1:1:instance/i-2",
                 region="us-east-1"), "AwsEc2Instance", "arn:aws:ec2:us-east-1:1:instance/i-2"),
])
def test_resource_type_mapping(ref: ResourceRef, asff_type: str, asff_id: str) -> None:
    entry = asff.resource_entry(ref, CTX, account=None, region=None)
    assert (entry["Type"], entry["Id"], entry["Partition"]) == (asff_type, asff_id, "aws")
    assert entry["Region"] == (ref.region or "eu-west-1")


@pytest.mark.parametrize(("region", "partition"), [
    ("us-east-1", "aws"), ("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov")])
def test_partition_and_product_arn_follow_the_region(region: str, partition: str) -> None:
    ctx = asff.AsffContext(account_id="123456789012", region=region)
    finding = asff.to_finding(make_incident(), ctx)
    assert finding["ProductArn"].startswith(f"arn:{partition}:securityhub:{region}:")
    assert asff.validate(finding) == []


def test_detection_finding() -> None:
    finding = asff.to_finding(make_detection(), CTX)
    assert asff.validate(finding) == []
    assert finding["Id"] == "riposte/detection/evt-77"
    assert finding["GeneratorId"] == "riposte/detection/ct.root_login"
    assert finding["Types"] == ["TTPs/Initial Access/T1078.004"]
    assert finding["Severity"] == {"Label": "HIGH", "Normalized": 75, "Original": "75"}
    assert finding["Resources"][0]["Id"] == "arn:aws:iam::210987654321:user/root"
    assert finding["ProductFields"]["riposte/rule_id"] == "ct.root_login"


def test_detection_without_mitre_gets_a_behaviour_type_for_its_resource() -> None:
    event = make_detection()
    assert event.detection is not None
    event = dataclasses.replace(
        event, mitre=(), detection=dataclasses.replace(event.detection, mitre=()),
        severity=Severity.of_score(10))
    finding = asff.to_finding(event, CTX)
    assert finding["Types"] == ["Unusual Behaviors/User/ct.root_login"]
    # Event severity disagrees with the rule's label: the label wins, Normalized follows it.
    assert finding["Severity"] == {"Label": "HIGH", "Normalized": 70, "Original": "high"}


def test_action_finding_links_to_its_incident() -> None:
    finding = asff.to_finding(make_action(), CTX)
    assert asff.validate(finding) == []
    assert finding["Id"] == "riposte/action/act-1"
    assert finding["GeneratorId"] == "riposte/contain/ec2.isolate"
    assert finding["FindingProviderFields"]["RelatedFindings"] == [
        {"ProductArn": CTX.product, "Id": "riposte/inc-1234"}]
    assert "riposte rollback act-1" in finding["Remediation"]["Recommendation"]["Text"]


def test_raw_events_are_not_findings() -> None:
    event = dataclasses.replace(make_detection(), detection=None, item_kind="event",
                                kind=EventKind.CLOUDTRAIL)
    with pytest.raises(asff.AsffError) as err:
        asff.to_finding(event, CTX)
    assert err.value.reason == "not_a_finding"


@pytest.mark.parametrize(("change", "problem"), [
    ({"Title": ""}, "Title is required"),
    ({"Title": "x" * 257}, "Title is longer than 256"),
    ({"Description": "d" * 1025}, "Description is longer than 1024"),
    ({"AwsAccountId": "12345"}, "AwsAccountId must be 12 digits"),
    ({"SchemaVersion": "2020-01-01"}, "SchemaVersion must be"),
    ({"ProductArn": "arn:aws:s3:::bucket"}, "ProductArn is not"),
    ({"Types": []}, "Types must be a non-empty list"),
    ({"Types": ["Bad Namespace/Thing"]}, "not an ASFF namespace"),
    ({"Types": ["TTPs/a/b/c"]}, "namespace/category/classifier"),
    ({"Severity": {"Label": "SEVERE"}}, "Severity.Label invalid"),
    ({"Severity": {"Label": "LOW", "Normalized": 101}}, "Normalized must be an integer"),
    ({"Severity": {"Label": "LOW", "Normalized": 95}}, "disagrees"),
    ({"Resources": []}, "Resources must be a non-empty list"),
    ({"Resources": [{"Type": "AwsEc2Instance", "Id": ""}]}, "Resources[0].Id is required"),
    ({"Resources": [{"Type": "Other", "Id": "x", "Partition": "azure"}]}, "Partition invalid"),
    ({"Resources": [{"Type": "Other", "Id": f"r{i}"} for i in range(33)]}, "more than 32"),
    ({"UpdatedAt": "2020-01-01T00:00:00.000Z"}, "UpdatedAt is earlier than CreatedAt"),
    ({"CreatedAt": "yesterday"}, "CreatedAt is not an ISO 8601"),
    ({"ProductFields": {"k": "v" * 2049}}, "ProductFields"),
    ({"Remediation": {"Recommendation": {"Text": "r" * 513}}}, "Remediation"),
    ({"RecordState": "DELETED"}, "RecordState"),
])
def test_validate_catches_what_security_hub_would_refuse(change: dict[str, object],
                                                         problem: str) -> None:
    finding = {**asff.to_finding(make_incident(), CTX), **change}
    problems = asff.validate(finding)
    assert any(problem in p for p in problems), problems


def test_validate_requires_every_required_field() -> None:
    finding = asff.to_finding(make_incident(), CTX)
    for key in ("SchemaVersion", "Id", "ProductArn", "GeneratorId", "AwsAccountId",
                "CreatedAt", "UpdatedAt", "Title", "Description", "Types", "Severity",
                "Resources"):
        reduced = {k: v for k, v in finding.items() if k != key}
        assert asff.validate(reduced), key


def test_empty_resource_id_makes_an_invalid_finding() -> None:
    bad = make_incident(resources=(ResourceRef(type="other", id=""),))
    assert any("Resources[0].Id" in p for p in asff.validate(asff.to_finding(bad, CTX)))


def test_no_resources_names_the_account() -> None:
    finding = asff.to_finding(make_incident(resources=()), CTX)
    # The account the incident is about, not the importing one.
    assert finding["Resources"][0]["Id"] == "AWS::::Account:210987654321"
    assert asff.validate(finding) == []


@pytest.mark.parametrize(("score", "label", "normalized"), [
    (0, "INFORMATIONAL", 0), (1, "LOW", 1), (39, "LOW", 39), (40, "MEDIUM", 40),
    (69, "MEDIUM", 69), (70, "HIGH", 70), (89, "HIGH", 89), (90, "CRITICAL", 90),
    (100, "CRITICAL", 100)])
def test_severity_label_and_normalized_agree(score: int, label: str, normalized: int) -> None:
    incident = make_incident(score=RiskScore(value=score, label=SeverityLabel.from_score(score)))
    finding = asff.to_finding(incident, CTX)
    assert (finding["Severity"]["Label"], finding["Severity"]["Normalized"]) == (label,
                                                                                 normalized)


@settings(max_examples=150, deadline=None)
@given(title=st.text(max_size=2000), reason=st.text(max_size=3000),
       mitre=st.lists(st.from_regex(r"T1[0-9]{3}(\.00[1-9])?", fullmatch=True), max_size=60),
       gd_type=st.text(max_size=300), tags=st.dictionaries(st.text(max_size=300),
                                                           st.text(max_size=400), max_size=80),
       revision=st.integers(min_value=1, max_value=10_000))
def test_any_incident_maps_to_a_valid_bounded_finding(title: str, reason: str,
                                                      mitre: list[str], gd_type: str,
                                                      tags: dict[str, str],
                                                      revision: int) -> None:
    incident = make_incident(
        title=title, mitre=tuple(mitre), revision=revision,
        resources=(dataclasses.replace(INSTANCE, tags=tags),),
        findings=(FindingRef("x", EventKind.GUARDDUTY, gd_type, Severity.of_score(50), T0),),
        score=RiskScore(value=50, label=SeverityLabel.MEDIUM,
                        reasons=(ScoreReason("f", 1.5, reason),)))
    finding = asff.to_finding(incident, CTX)
    assert asff.validate(finding) == []
    assert len(finding["Title"]) <= 256 and len(finding["Description"]) <= 1024
    assert len(dumps(finding)) <= asff.MAX_FINDING_BYTES


@given(text=st.text(max_size=600), limit=st.integers(min_value=1, max_value=300))
def test_clip_never_exceeds_the_limit(text: str, limit: int) -> None:
    clipped = asff.clip(text, limit)
    assert len(clipped) <= limit
    if len(text.strip()) <= limit:
        assert clipped == text.strip()
    else:
        assert clipped.endswith("…")


@given(st.datetimes(timezones=st.one_of(st.none(), st.timezones())))
def test_iso_is_utc_milliseconds_with_z(when: datetime) -> None:
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    try:
        utc = aware.astimezone(UTC)
    except OverflowError:  # an offset that takes it outside years 1-9999
        return
    expected = (f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:"
                f"{utc.minute:02d}:{utc.second:02d}.{utc.microsecond // 1000:03d}Z")
    assert asff.iso(when) == expected
