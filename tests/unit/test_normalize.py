"""Normalize behaviour beyond the manifest facts: mappings, scales, shapes and fan-out.

Inputs are the project's copied samples (tests/fixtures/samples) or small edits of
them made in the test, so each case shows which field drives which output.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import metrics
from pipeline.aws import AwsClients
from pipeline.config import RiposteConfig
from pipeline.context import RuntimeContext
from pipeline.models import Event, EventKind, RawRecord, SeverityLabel
from pipeline.normalizers import asff, guardduty, inspector
from pipeline.normalizers.common import _parse_text, parse_time
from pipeline.stages.normalize import NormalizeStage, build, normalize
from pipeline.state.memory import MemoryStore
from tests.conftest import FIXTURES

SAMPLES = FIXTURES / "samples"
DERIVED = FIXTURES / "derived"


def load(name: str, root: Any = SAMPLES) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((root / name).read_bytes())
    return data


def one(payload: Any, **kw: Any) -> Event:
    (event,) = normalize(RawRecord(payload=payload, message_id="m-1", **kw))
    return event


# --- time -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    ("2017-12-08T15:32:49.865Z", datetime(2017, 12, 8, 15, 32, 49, 865000, tzinfo=UTC)),
    ("2018-11-28T23:26:17.728987+00:00", datetime(2018, 11, 28, 23, 26, 17, 728987, tzinfo=UTC)),
    ("2024-06-02 20:16:22.000000000", datetime(2024, 6, 2, 20, 16, 22, tzinfo=UTC)),
    ("2024-06-02T22:16:22+02:00", datetime(2024, 6, 2, 20, 16, 22, tzinfo=UTC)),
    ("Mar 20, 2023, 6:08:05 PM", datetime(2023, 3, 20, 18, 8, 5, tzinfo=UTC)),
    ("Wed Sep 04 16:59:44.356 UTC 2024", datetime(2024, 9, 4, 16, 59, 44, 356000, tzinfo=UTC)),
    (1513612691.5, datetime(2017, 12, 18, 15, 58, 11, 500000, tzinfo=UTC)),
    (1513612691500, datetime(2017, 12, 18, 15, 58, 11, 500000, tzinfo=UTC)),
    ({"__class__": "datetime", "year": 2023, "month": 9, "day": 8, "hour": 20, "minute": 7,
      "second": 30, "microsecond": 243000},
     datetime(2023, 9, 8, 20, 7, 30, 243000, tzinfo=UTC)),
    ("Jan 01, 2019 0:00:00 PM", None),
    ("not a time", None), ("", None), (None, None), (True, None), (float("nan"), None),
    ("0001-01-01T00:00:00+05:00", None),
    ({"__class__": "datetime", "year": "x"}, None),
])
def test_parse_time(value: Any, expected: datetime | None) -> None:
    assert parse_time(value) == expected


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ")),
    st.text(alphabet="0123456789-:T Z.+", min_size=19, max_size=19).map(lambda t: t + "Z"),
))
def test_cloudtrail_times_parse_as_the_general_path_does(value: str) -> None:
    """Twenty characters ending in Z skip the cache; the answer must be the same."""
    assert parse_time(value) == _parse_text.__wrapped__(value)


def test_event_time_falls_back_to_envelope_then_arrival() -> None:
    ev = load("guardduty/custodian-ec2-duty-event.json")
    ev["detail"]["updatedAt"] = "garbage"
    assert one(ev).time == datetime(1970, 1, 1, tzinfo=UTC)  # the envelope's own time
    ev["time"] = "2024-01-02T03:04:05Z"
    assert one(ev).time == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    raw = load("cloudtrail/panther-createuser-console.json")
    del raw["eventTime"]
    assert one(raw, received_at=1_700_000_000.0).time == datetime.fromtimestamp(1.7e9, UTC)


# --- severity -------------------------------------------------------------------------------
@pytest.mark.parametrize(("native", "score", "label"), [
    (0.5, 5, SeverityLabel.LOW), (2, 20, SeverityLabel.LOW), (3.9, 39, SeverityLabel.LOW),
    (4, 40, SeverityLabel.MEDIUM), (6.9, 69, SeverityLabel.MEDIUM),
    (7, 70, SeverityLabel.HIGH), (8, 80, SeverityLabel.HIGH), (8.9, 89, SeverityLabel.HIGH),
    (9, 90, SeverityLabel.CRITICAL), (10, 100, SeverityLabel.CRITICAL),
])
def test_guardduty_severity_bands(native: float, score: int, label: SeverityLabel) -> None:
    sev = guardduty.severity_of(float(native))
    assert (sev.native, sev.score, sev.label) == (native, score, label)


@pytest.mark.parametrize(("label", "score", "expected"), [
    ("CRITICAL", 9.8, (98, SeverityLabel.CRITICAL)),
    ("HIGH", None, (70, SeverityLabel.HIGH)),
    ("MEDIUM", 4.8, (48, SeverityLabel.MEDIUM)),
    ("LOW", 2.0, (20, SeverityLabel.LOW)),
    ("INFORMATIONAL", None, (0, SeverityLabel.INFORMATIONAL)),
    ("UNTRIAGED", None, (0, SeverityLabel.INFORMATIONAL)),
    ("UNTRIAGED", 7.5, (75, SeverityLabel.HIGH)),
])
def test_inspector_severity(label: str, score: float | None,
                            expected: tuple[int, SeverityLabel]) -> None:
    sev = inspector.severity_of(label, score)
    assert (sev.score, sev.label) == expected and sev.native == label


@pytest.mark.parametrize(("raw", "expected"), [
    ({"Label": "CRITICAL"}, (90, SeverityLabel.CRITICAL, "CRITICAL")),
    ({"Label": "HIGH", "Normalized": 75}, (75, SeverityLabel.HIGH, "HIGH")),
    ({"Normalized": 10, "Product": 10}, (10, SeverityLabel.LOW, 10)),
    ({"Normalized": 50, "Product": 5}, (50, SeverityLabel.MEDIUM, 50)),
    ({"Product": 8}, (80, SeverityLabel.HIGH, 8)),
    ({}, (0, SeverityLabel.INFORMATIONAL, None)),
])
def test_asff_severity(raw: dict[str, Any], expected: tuple[int, SeverityLabel, Any]) -> None:
    sev = asff.severity_of(raw)
    assert (sev.score, sev.label, sev.native) == expected


# --- GuardDuty ------------------------------------------------------------------------------
def test_guardduty_attributes_and_lifecycle() -> None:
    ev = one(load("guardduty/custodian-iam-duty-event.json"))
    assert ev.attributes["finding_family"] == "UnauthorizedAccess"
    assert ev.attributes["threat_purpose"] == "UnauthorizedAccess"
    assert ev.attributes["action_type"] == "AWS_API_CALL"
    assert ev.attributes["remote_ip"] == "198.51.100.0"
    assert ev.attributes["remote_country"] == "United States"
    assert ev.count == 1 and ev.status == "ACTIVE"
    assert ev.source == "aws.guardduty" and ev.detail_type == "GuardDuty Finding"
    assert ev.account == "883606788610"  # the finding's account, not the envelope's
    assert ev.origin["eventbridge_id"] == "805320a1-2f09-4237-64fc-f3f136e41a69"
    dns = one(load("guardduty/custodian-ec2-duty-event.json"))
    assert dns.attributes["domain"] == "example.com"
    assert dns.attributes["action_type"] == "DNS_REQUEST"
    archived = one(load("guardduty/awssamples-gdar-s3-pentest-parrotlinux.json"))
    assert archived.status == "ARCHIVED"
    assert archived.origin["shape"] == "raw"
    assert archived.detail_type == "GuardDuty Finding"


def test_guardduty_access_key_resources_key_first_then_principal() -> None:
    ev = one(load("guardduty/gd-iam-accesskey-finding.json", DERIVED))
    key, user = ev.resources
    assert (key.type, key.id) == ("iam.access_key", "AKIAIOSFODNN7EXAMPLE")
    assert key.details == {"user_name": "deploy-bot", "user_type": "IAMUser",
                           "principal_id": "AIDAXEXAMPLEPRINCIPAL7"}
    assert (user.type, user.id, user.arn) == (
        "iam.user", "deploy-bot", "arn:aws:iam::123456789012:user/deploy-bot")
    assert not ev.sample and not ev.observe_only


def test_guardduty_s3_bucket_is_primary_with_tags() -> None:
    ev = one(load("guardduty/awssamples-gdar-s3-pentest-parrotlinux.json"))
    assert [r.type for r in ev.resources] == ["s3.bucket", "iam.access_key", "iam.user"]
    bucket = ev.resources[0]
    assert (bucket.id, bucket.arn) == ("bucketName", "arn:aws:s3:::bucketName")
    assert bucket.tags == {"foo": "bar"}
    assert bucket.details["effective_permission"] == "NOT_PUBLIC"


def test_guardduty_instance_details() -> None:
    ev = load("guardduty/gd-ec2-paired-finding.json", DERIVED)
    ev["detail"]["resource"]["instanceDetails"].update({
        "imageId": "ami-062f7200baf2fa504",
        "tags": [{"key": "Criticality", "value": "high"}, {"key": "Owner", "value": None}],
        "iamInstanceProfile": {"arn": "arn:aws:iam::123456789012:instance-profile/EC2Dev"},
        "networkInterfaces": [{
            "networkInterfaceId": "eni-0fd8e8a70bb7804e3", "vpcId": "vpc-4a486c30",
            "subnetId": "subnet-48998e66", "privateIpAddress": "172.31.81.237",
            "privateIpAddresses": [{"privateIpAddress": "172.31.81.237"},
                                   {"privateIpAddress": "172.31.81.238"}],
            "publicIp": "54.152.215.140",
            "securityGroups": [{"groupName": "web", "groupId": "sg-0225c1ef2723cd87d"}],
        }],
    })
    (inst,) = one(ev).resources
    assert inst.tags == {"Criticality": "high", "Owner": ""}
    d = inst.details
    assert (d["vpc_id"], d["subnet_id"], d["image_id"]) == (
        "vpc-4a486c30", "subnet-48998e66", "ami-062f7200baf2fa504")
    assert d["private_ips"] == ["172.31.81.237", "172.31.81.238"]
    assert d["public_ips"] == ["54.152.215.140"]
    assert d["security_group_ids"] == ["sg-0225c1ef2723cd87d"]
    assert d["instance_profile_arn"] == "arn:aws:iam::123456789012:instance-profile/EC2Dev"
    assert d["network_interfaces"][0]["id"] == "eni-0fd8e8a70bb7804e3"
    assert inst.arn == "arn:aws:ec2:us-east-1:123456789012:instance/i-0abc123def4567890"


@pytest.mark.parametrize("additional", [
    {"sample": True}, {"sample": "true"},
    {"value": '{"sample": true, "unusual": {}}', "type": "default"},
])
def test_guardduty_sample_flag_forms(additional: dict[str, Any]) -> None:
    ev = load("guardduty/gd-ec2-paired-finding.json", DERIVED)
    ev["detail"]["service"]["additionalInfo"] = additional
    event = one(ev)
    assert event.sample and event.observe_only and event.observe_reason == "sample_finding"


def test_guardduty_generated_placeholders_mark_a_sample() -> None:
    ev = load("guardduty/gd-iam-accesskey-finding.json", DERIVED)
    ev["detail"]["resource"]["accessKeyDetails"]["accessKeyId"] = "GeneratedFindingAccessKeyId"
    assert one(ev).sample


def test_guardduty_workloads_lambda_and_affected_resources() -> None:
    base = load("guardduty/panther-privesc-iamuser-adminpermissions.json")
    # No ``resource``: the API call's affected resources still name something.
    (role,) = one(base).resources
    assert (role.type, role.id) == ("iam.role", "IAMRole")
    eks = copy.deepcopy(base)
    digest = "sha256:" + "ab" * 32
    eks["resource"] = {
        "resourceType": "EKSCluster",
        "eksClusterDetails": {"name": "prod", "arn": "arn:aws:eks:us-east-1:123456789012:"
                                                     "cluster/prod"},
        "kubernetesDetails": {"kubernetesWorkloadDetails": {"containers": [
            {"image": f"123456789012.dkr.ecr.us-east-1.amazonaws.com/web@{digest}"},
            {"image": "nginx:latest"}]}},
        "instanceDetails": {"instanceId": "i-0123456789abcdef0"},
    }
    types = [(r.type, r.id) for r in one(eks).resources]
    assert types == [("eks.cluster", "prod"), ("ecr.image", digest),
                     ("ec2.instance", "i-0123456789abcdef0")]
    fn = copy.deepcopy(base)
    fn["resource"] = {"resourceType": "Lambda", "lambdaDetails": {
        "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:pay:3",
        "functionName": "pay"}}
    (ref,) = one(fn).resources
    assert (ref.type, ref.id) == ("lambda.function",
                                  "arn:aws:lambda:us-east-1:123456789012:function:pay")


def pascal(value: Any) -> Any:
    """What boto3's GetFindings returns for a GuardDuty finding: PascalCase keys."""
    if isinstance(value, dict):
        return {(k[:1].upper() + k[1:] if "::" not in k else k): pascal(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [pascal(v) for v in value]
    return value


@pytest.mark.parametrize("name", ["guardduty/gd-iam-accesskey-finding.json",
                                  "guardduty/gd-ec2-paired-finding.json"])
def test_guardduty_from_boto_getfindings_normalizes_the_same(name: str) -> None:
    detail = load(name, DERIVED)["detail"]
    detail["service"]["additionalInfo"] = {"value": '{"sample":true}', "type": "default"}
    expected = one(detail)
    boto_shape = pascal(detail)
    assert "Service" in boto_shape and "service" not in boto_shape
    got = one(boto_shape)
    assert replace(got, raw={}) == replace(expected, raw={})
    assert got.kind is EventKind.GUARDDUTY and got.sample and got.raw is boto_shape
    response = {"status_code": 200, "data": {"Findings": [boto_shape]}}
    (from_placebo,) = normalize(RawRecord(payload=response, message_id="m-1"))
    assert from_placebo.resources == expected.resources


# --- Inspector ------------------------------------------------------------------------------
def test_inspector_attributes() -> None:
    ev = one(load("inspector2/awsdocs-inspector2-ec2-package-vulnerability.json"))
    a = ev.attributes
    assert a["vulnerability_id"] == "CVE-2024-29069"
    assert a["cvss"] == 7.3  # the highest base score, NVD's here
    assert a["epss"] == 0.00043
    assert a["exploit_available"] is False and a["fix_available"] == "YES"
    assert a["packages"] == ["snapd"] and a["inspector_score"] == 4.8
    assert a["network_reachable"] is False
    assert ev.status == "CLOSED"
    (inst,) = ev.resources
    assert inst.details["instance_profile_arn"].endswith("AmazonSSMRoleForInstancesQuickSetup")
    assert inst.details["vpc_id"] == "vpc-12345678"
    reach = one(load("inspector2/workshop-network-reachability-ssh-eventbridge.json"))
    assert reach.attributes["network_reachable"] is True
    assert reach.attributes["open_port_range"] == [22, 22]
    assert reach.time == datetime(2023, 3, 20, 18, 8, 5, tzinfo=UTC)
    assert reach.resources[0].tags["Name"] == "Database Server for AZ1"


def test_inspector_ecr_and_lambda_resources() -> None:
    ev = load("inspector2/inspector-ec2-paired-finding.json", DERIVED)
    digest = "sha256:" + "cd" * 32
    ev["detail"]["resources"] = [
        {"type": "AWS_ECR_CONTAINER_IMAGE",
         "id": f"arn:aws:ecr:us-east-1:123456789012:repository/web/{digest}",
         "details": {"awsEcrContainerImage": {"imageHash": digest, "repositoryName": "web",
                                              "imageTags": ["v1", "latest"]}}},
        {"type": "AWS_LAMBDA_FUNCTION",
         "id": "arn:aws:lambda:us-east-1:123456789012:function:pay:$LATEST",
         "details": {"awsLambdaFunction": {"functionName": "pay", "runtime": "python3.12"}}},
    ]
    image, fn = one(ev).resources
    assert (image.type, image.id) == ("ecr.image", digest)
    assert image.details["repository"] == "web"
    assert image.details["image_tags"] == ["v1", "latest"]
    assert (fn.type, fn.id) == ("lambda.function",
                                "arn:aws:lambda:us-east-1:123456789012:function:pay")


def test_placebo_response_is_a_list_of_findings() -> None:
    events = normalize(RawRecord(
        payload=load("inspector2/custodian-placebo-inspector2-listfindings-query-filter.json"),
        message_id="m-1"))
    assert [e.origin["finding_index"] for e in events] == [0, 1, 2, 3]
    assert all(e.origin["shape"] == "placebo" for e in events)
    assert events[0].raw["findingArn"] == events[0].id
    assert len({e.id for e in events}) == 4


def test_placebo_with_an_unknown_element_keeps_it_observe_only() -> None:
    payload = {"status_code": 200, "data": {"findings": [{"hello": "world"}]}}
    (ev,) = normalize(RawRecord(payload=payload, message_id="m-9"))
    assert ev.kind is EventKind.UNKNOWN and ev.observe_only


# --- CloudTrail -----------------------------------------------------------------------------
def test_cloudtrail_via_eventbridge_equals_the_log_file_record() -> None:
    envelope = load("cloudtrail/custodian-event-cloud-trail-create-bucket.json")
    via_eb = one(envelope)
    from_file = one(envelope["detail"])
    assert via_eb.origin["shape"] == "eventbridge" and from_file.origin["shape"] == "raw"
    assert replace(via_eb, origin={}, raw={}) == replace(from_file, origin={}, raw={})
    assert via_eb.id == "c4fa3db1-2303-40e4-bde0-3b7246bdbf0b"
    assert via_eb.source == from_file.source == "aws.s3"
    assert via_eb.detail_type == from_file.detail_type == "AWS API Call via CloudTrail"


def test_cloudtrail_attributes_and_resources() -> None:
    ev = one(load("cloudtrail/custodian-event-cloud-trail-appelb-add-tags.json"))
    a = ev.attributes
    assert a["access_key_id"] == "ASIAVD4IK2M7LCL6FD6T"
    assert a["principal_arn"] == "arn:aws:sts::123456789123:assumed-role/c7nbot/HarishAchappa"
    assert a["session_issuer_arn"] == "arn:aws:iam::123456789123:role/c7nbot"
    assert a["user_type"] == "AssumedRole" and a["user_name"] == "c7nbot"
    assert a["read_only"] is False and a["recipient_account_id"] == "123456789123"
    assert a["request_parameters"]["tags"] == [{"value": "Internal", "key": "WAF"}]
    key, role = ev.resources
    assert (key.type, key.id, key.details["temporary"]) == (
        "iam.access_key", "ASIAVD4IK2M7LCL6FD6T", True)
    assert (role.type, role.id, role.arn) == ("iam.role", "c7nbot",
                                              "arn:aws:iam::123456789123:role/c7nbot")
    policy = one(load("cloudtrail/panther-attachuserpolicy-admin.json"))
    assert [(r.type, r.id) for r in policy.resources] == [
        ("iam.access_key", "1"), ("iam.role", "Tester"), ("iam.user", "new-user")]
    root = one(load("cloudtrail/custodian-event-cloud-trail-create-bucket.json"))
    assert [(r.type, r.id) for r in root.resources] == [
        ("aws.account", "619193117841"), ("s3.bucket", "custodian-create-bucket-v4")]
    assert root.created_at == root.time
    cli = one(load("cloudtrail/panther-getcalleridentity-awscli.json"))
    assert cli.attributes["read_only"] is True and cli.source == "aws.sts"


def test_cloudtrail_instances_set_and_error_code() -> None:
    rec = load("cloudtrail/panther-createuser-console.json")
    rec.update(eventName="StopInstances", eventSource="ec2.amazonaws.com",
               errorCode="Client.UnauthorizedOperation",
               requestParameters={"instancesSet": {"items": [{"instanceId": "i-1"},
                                                             {"instanceId": "i-2"}]}})
    ev = one(rec)
    assert ev.attributes["error_code"] == "Client.UnauthorizedOperation"
    assert [r.id for r in ev.resources if r.type == "ec2.instance"] == ["i-1", "i-2"]


def test_cloudtrail_via_eventbridge_without_event_id_uses_the_envelope_id() -> None:
    envelope = load("cloudtrail/custodian-event-cloud-trail-create-bucket.json")
    del envelope["detail"]["eventID"]
    assert one(envelope).id == "075efcc5-cc27-4041-accc-5fe2f65ef80d"


# --- Security Hub ---------------------------------------------------------------------------
def test_security_hub_event_fans_out_one_event_per_finding() -> None:
    envelope = load("securityhub/asr-cis-1.4-imported.json")
    second = copy.deepcopy(envelope["detail"]["findings"][0])
    second["Id"] = "second-finding"
    second["RecordState"] = "ARCHIVED"
    envelope["detail"]["findings"].append(second)
    first, other = normalize(RawRecord(payload=envelope, message_id="m-1"))
    assert (first.id, other.id) == (envelope["detail"]["findings"][0]["Id"], "second-finding")
    assert (first.status, other.status) == ("NEW", "ARCHIVED")
    assert other.raw is second or other.raw == second
    assert [first.origin["finding_index"], other.origin["finding_index"]] == [0, 1]
    assert first.detail_type == "Security Hub Findings - Imported"
    (account,) = first.resources
    assert (account.type, account.id) == ("aws.account", "111111111111")


def test_security_hub_resources_map_to_the_vocabulary() -> None:
    ev = one(load("securityhub/panther-asff-decoy-s3-accessed.json"))
    assert [(r.type, r.id) for r in ev.resources] == [
        ("s3.bucket", "panther-databucket"),
        ("other", "arn:aws:s3:::panther-databucket/object"),
        ("iam.access_key", "ABCDEFG1HIJ2KLMNOPQR"),
        ("iam.role", "ABCDEFG1HIJ2KLMNOPQR"),
    ]
    placebo = normalize(RawRecord(
        payload=load("securityhub/custodian-placebo-securityhub-getfindings-instance.json"),
        message_id="m"))
    (inst,) = placebo[0].resources
    assert (inst.type, inst.id) == ("ec2.instance", "i-0fdc9cff318add68f")
    assert inst.tags == {"CreatorName": "kapil", "Name": "bar-run"}


def test_security_hub_custom_action_names_the_action() -> None:
    ev = one(load("securityhub/custodian-securityhub-custom-action-iamkey.json"))
    assert ev.origin["custom_action"] == "Ec2 aws" and ev.origin["finding_index"] == 0
    assert ev.detail_type == "Security Hub Findings - Custom Action"
    assert ev.count == 1 and ev.attributes["product_name"] == "GuardDuty"
    assert ev.attributes["remote_ip"] == "208.115.85.104"


def test_empty_findings_list_is_dropped_and_counted() -> None:
    envelope = load("securityhub/asr-cis-1.4-imported.json")
    envelope["detail"]["findings"] = []
    stage = NormalizeStage()
    before = metrics.value(metrics.DISCARDED, reason="empty_findings")
    assert stage.normalize(RawRecord(payload=envelope, message_id="m")) == []
    assert metrics.value(metrics.DISCARDED, reason="empty_findings") == before + 1


# --- unknown and the stage ------------------------------------------------------------------
def test_unknown_eventbridge_event_is_observe_only_and_counted() -> None:
    payload = load("envelopes/powertools-eventBridgeEvent.json")
    before = metrics.value(metrics.EVENTS, kind="unknown")
    (ev,) = NormalizeStage().normalize(RawRecord(payload=payload, message_id="m"))
    assert metrics.value(metrics.EVENTS, kind="unknown") == before + 1
    assert ev.kind is EventKind.UNKNOWN and ev.observe_only
    assert ev.observe_reason == "unknown_event"
    assert ev.id == payload["id"] and ev.type == "EC2 Instance State-change Notification"
    assert ev.source == "aws.ec2" and ev.raw == payload
    assert [(r.type, r.id) for r in ev.resources] == [("ec2.instance", "i-1234567890abcdef0")]


async def test_stage_passes_other_items_through() -> None:
    stage = NormalizeStage()
    event = one(load("cloudtrail/panther-createuser-console.json"))
    assert await stage.process(event) == (event,)
    assert await stage.process("anything") == ("anything",)


async def test_build_returns_the_stage() -> None:
    config = RiposteConfig()
    aws = AwsClients("us-east-1")
    try:
        stage = build(config, RuntimeContext(config=config, store=MemoryStore(), aws=aws))
    finally:
        await aws.aclose()
    assert stage.name == "normalize"
    record = RawRecord(payload=load("guardduty/custodian-ec2-duty-event.json"), message_id="m",
                       origin={"source": "sqs"}, received_at=123.0, envelope="eventbridge")
    (ev,) = await stage.process(record)
    assert ev.received_at == 123.0
    assert ev.origin["source"] == "sqs" and ev.origin["message_id"] == "m"
    assert ev.origin["envelope"] == "eventbridge"
