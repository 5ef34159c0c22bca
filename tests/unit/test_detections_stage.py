"""The detect stage: passthrough, detection events, ids, metrics, containment of rule bugs."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from pipeline import metrics
from pipeline.config import parse_config
from pipeline.detections._cloudtrail import CloudTrailView
from pipeline.detections.config import DetectionsConfig
from pipeline.detections.registry import (
    RULES,
    SEVERITY_SCORE,
    CloudTrailRule,
    Hit,
    RuleMeta,
    RuleRegistry,
)
from pipeline.errors import ConfigError
from pipeline.models import Event, EventKind, RawRecord, SeverityLabel
from pipeline.stages.detect import DetectStage, build, detection_id
from tests.conftest import shared_samples_or_skip
from tests.unit.cloudtrail_cases import derive, make_ctx, normalized

# The published AttachUserPolicy(AdministratorAccess) record, made from curl.
ATTACH_FROM_CURL = {"userAgent": "curl/8.4.0"}


def full_stage(**config: Any) -> DetectStage:
    ctx = make_ctx(**config)
    return build(ctx.config, ctx)


async def test_non_cloudtrail_items_pass_through_untouched() -> None:
    stage = full_stage()
    finding = Event(id="gd-1", kind=EventKind.GUARDDUTY, type="Recon:EC2/PortProbeUnprotectedPort",
                    title="t", source="aws.guardduty", account="123456789012",
                    region="us-east-1", time=datetime(2024, 1, 1, tzinfo=UTC))
    record = RawRecord(payload={"x": 1}, message_id="m")
    assert await stage.process(finding) == (finding,)
    assert await stage.process(record) == (record,)
    # A detection is never re-examined as if it were a CloudTrail call.
    out = await stage.process(normalized(derive("panther-attachuserpolicy-admin.json")))
    detection = out[1]
    assert await stage.process(detection) == (detection,)


async def test_several_rules_fire_on_one_call_in_a_stable_order() -> None:
    stage = full_stage()
    event = normalized(derive("panther-attachuserpolicy-admin.json", ATTACH_FROM_CURL))
    out = await stage.process(event)
    assert out[0] is event
    rules = [d.type for d in out[1:]]
    assert rules == ["iam_admin_policy_attached", "sensitive_api_untrusted_network",
                     "unusual_user_agent"]
    again = await full_stage().process(event)
    assert [d.id for d in again[1:]] == [d.id for d in out[1:]]


async def test_detection_event_fields() -> None:
    stage = full_stage(rules=["iam_admin_policy_attached"])
    event = normalized(derive("panther-attachuserpolicy-admin.json"))
    event = replace(event, observe_only=True, observe_reason="account_not_allowed")
    (_, det) = await stage.process(event)
    expected_id = "det-" + hashlib.sha256(
        b"iam_admin_policy_attached|" + event.id.encode()).hexdigest()[:24]
    assert det.id == expected_id == detection_id("iam_admin_policy_attached", event.id)
    assert det.kind is EventKind.DETECTION and det.item_kind == "detection"
    assert det.type == "iam_admin_policy_attached"
    assert det.title == "Administrator policy attached to an IAM identity"
    assert det.severity.label is SeverityLabel.HIGH
    assert det.severity.score == SEVERITY_SCORE[SeverityLabel.HIGH]
    assert det.mitre == ("T1098.003",)
    assert (det.account, det.region, det.time) == (event.account, event.region, event.time)
    assert det.observe_only and det.observe_reason == "account_not_allowed"
    keys = [r.key for r in det.resources]
    assert keys[:2] == ["iam.access_key:1", "iam.role:Tester"]
    assert "iam.user:new-user" in keys
    assert det.detection is not None
    assert det.detection.trigger_event_id == event.id
    assert det.detection.facts["policy_arn"] == "arn:aws:iam::aws:policy/AdministratorAccess"
    assert det.detection.mitre == det.mitre


async def test_hit_severity_and_mitre_refine_the_rule_defaults() -> None:
    stage = full_stage(rules=["iam_policy_wildcard", "sensitive_api_untrusted_network"],
                       extra_sensitive_apis=["PutUserPolicy"])
    doc = '{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'
    event = normalized(derive("panther-attachuserpolicy-admin.json", {
        "eventName": "PutUserPolicy",
        "requestParameters": {"userName": "u", "policyName": "p", "policyDocument": doc}}))
    out = await stage.process(event)
    by_rule = {d.type: d for d in out[1:]}
    assert by_rule["iam_policy_wildcard"].severity.label is SeverityLabel.CRITICAL
    assert by_rule["iam_policy_wildcard"].severity.score == 95
    assert by_rule["sensitive_api_untrusted_network"].severity.label is SeverityLabel.MEDIUM

    createuser = normalized(derive("panther-createuser-console.json"))
    (_, det) = await full_stage(rules=["sensitive_api_untrusted_network"]).process(createuser)
    assert det.mitre == ("T1078.004", "T1136.003")


async def test_rules_fall_back_to_the_raw_record_without_attributes() -> None:
    stage = full_stage()
    event = normalized(derive("custodian-event-cloud-trail-create-bucket.json"))
    bare = replace(event, attributes={}, resources=())
    out = await stage.process(bare)
    assert [d.type for d in out[1:]] == ["root_credential_use"]
    assert [r.key for r in out[1].resources] == ["aws.account:619193117841"]


class Exploding(CloudTrailRule):
    meta = RuleMeta("test_exploding", "boom", SeverityLabel.LOW, (), "always raises")

    async def evaluate(self, view: CloudTrailView) -> Hit | None:
        raise KeyError("bug in a rule")


class Always(CloudTrailRule):
    meta = RuleMeta("test_always", "always", SeverityLabel.LOW, (), "always fires")

    async def evaluate(self, view: CloudTrailView) -> Hit | None:
        return Hit(facts={"why": "always"})


async def test_a_failing_rule_is_contained_logged_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    ctx = make_ctx()
    stage = DetectStage([Exploding(ctx.config.detections, ctx),
                         Always(ctx.config.detections, ctx)])
    errors = metrics.value(metrics.ERRORS, stage="detect", error_type="test_exploding")
    fired = metrics.value(metrics.DETECTIONS, rule="test_always")
    event = normalized(derive("panther-createuser-console.json"))
    out = await stage.process(event)
    assert [d.type for d in out[1:]] == ["test_always"]
    assert metrics.value(metrics.ERRORS, stage="detect", error_type="test_exploding") \
        == errors + 1
    assert metrics.value(metrics.DETECTIONS, rule="test_always") == fired + 1
    assert any(r.message == "detection rule failed" and getattr(r, "rule", None)
               == "test_exploding" for r in caplog.records)


def test_rule_dispatch_by_event_name() -> None:
    stage = full_stage()
    generic = {r.meta.id for r in stage.rules_for("SomethingElse")}
    assert generic == {"first_seen_activity", "root_credential_use", "unusual_user_agent"}
    # The sensitive-API rule is indexed under the configured names, extras included.
    extra = full_stage(extra_sensitive_apis=["GetSecretValue"])
    for name in ("ListUsers", "GetSecretValue"):
        assert "sensitive_api_untrusted_network" in {r.meta.id for r in extra.rules_for(name)}
    assert "role_trust_cross_account_no_external_id" in {
        r.meta.id for r in stage.rules_for("CreateRole")}
    assert generic <= {r.meta.id for r in stage.rules_for("CreateRole")}


def test_rule_selection_from_config() -> None:
    assert len(full_stage().rules) == len(RULES.ids()) == 9
    only = full_stage(rules=["logging_disabled", "root_credential_use"],
                      disabled_rules=["root_credential_use"])
    assert [r.meta.id for r in only.rules] == ["logging_disabled"]
    assert full_stage(enabled=False).rules == ()
    # A typo is caught when the config is loaded, naming the key...
    with pytest.raises(ConfigError, match=r"detections\.rules.*no_such_rule"):
        parse_config({"detections": {"rules": ["no_such_rule"]}}, env={})
    with pytest.raises(ConfigError, match=r"detections\.disabled_rules.*typo"):
        parse_config({"detections": {"disabled_rules": ["typo"]}}, env={})
    # ...and again when rules are built from a config made without validation.
    ctx = make_ctx()
    unchecked = DetectionsConfig.model_construct(rules=["no_such_rule"], disabled_rules=[])
    with pytest.raises(ConfigError, match="unknown detection rule: 'no_such_rule'"):
        RULES.build(unchecked, ctx)


def test_rule_metadata_is_complete() -> None:
    for cls in RULES:
        meta = cls.meta
        assert re.fullmatch(r"[a-z0-9_]+", meta.id)
        assert meta.title and meta.description
        assert meta.mitre and all(re.fullmatch(r"T\d{4}(\.\d{3})?", m) for m in meta.mitre)
        assert isinstance(meta.severity, SeverityLabel)
        assert all(name in DetectionsConfig.model_fields for name in meta.config)


def test_registry_rejects_unknown_config_and_duplicate_ids() -> None:
    registry = RuleRegistry()
    with pytest.raises(ConfigError, match="unknown config field"):
        registry.register("x", title="t", severity=SeverityLabel.LOW, mitre=(),
                          description="d", config=("no_such_setting",))
    decorate = registry.register("dup", title="t", severity=SeverityLabel.LOW, mitre=(),
                                 description="d")

    @decorate
    class First(CloudTrailRule):
        pass

    with pytest.raises(ConfigError, match="registered twice"):
        @decorate
        class Second(CloudTrailRule):
            pass


@pytest.mark.parametrize("config", [
    {"trusted_cidrs": ["10.0.0.0/33"]},
    {"user_agent_allow": ["("]},
    {"baseline_dimensions": ["asn-typo"]},
    {"no_such_key": True},
])
def test_config_errors_are_caught_at_load(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DetectionsConfig(**config)


def test_empty_config_is_valid_and_normalises_domains() -> None:
    cfg = DetectionsConfig(org_email_domains=[" @Example.COM ", ""])
    assert cfg.org_email_domains == ["example.com"]
    assert DetectionsConfig().trusted_cidrs == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]


SHARED_EXPECTED = {
    "custodian-event-cloud-trail-appelb-add-tags.json": [],  # AWS Internal: a service call
    "custodian-event-cloud-trail-create-bucket.json": ["root_credential_use"],
    "panther-assumerole-sdk-go.json": [],
    "panther-attachuserpolicy-admin.json": ["iam_admin_policy_attached",
                                            "sensitive_api_untrusted_network"],
    "panther-createtrail-console.json": [],
    "panther-createuser-console.json": ["sensitive_api_untrusted_network"],
    "panther-getcalleridentity-awscli.json": [],
}


async def test_shared_cloudtrail_samples_through_the_chain() -> None:
    """Every CloudTrail file of the shared sample set, through normalize -> trust -> detect."""
    from pipeline.chain import Chain
    from pipeline.stages.normalize import NormalizeStage
    from pipeline.trust import build as build_trust

    root = shared_samples_or_skip()
    manifest = orjson.loads((root / "manifest.json").read_bytes())
    files = [f["file"] for f in manifest["files"] if f["kind"] == "cloudtrail"]
    assert sorted(Path(f).name for f in files) == sorted(SHARED_EXPECTED)
    ctx = make_ctx()
    chain = Chain([NormalizeStage(), build_trust(ctx.config, ctx)], [build(ctx.config, ctx)])
    for name in files:
        payload = orjson.loads((root / name).read_bytes())
        out = await chain.run(RawRecord(payload=payload, message_id=name))
        assert out[0].kind is EventKind.CLOUDTRAIL
        assert [e.type for e in out[1:]] == SHARED_EXPECTED[Path(name).name], name
