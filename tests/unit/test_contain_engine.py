"""Policy matching, fail-closed gates, error mapping and plan serialization (no AWS)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.actions.base import (
    ActionFailed,
    Plan,
    Step,
    classify,
    resolve,
)
from pipeline.actions.codec import plan_from, plan_to, record_from, record_to
from pipeline.actions.config import ContainmentConfig
from pipeline.actions.policy import match_policies
from pipeline.aws import AwsClients
from pipeline.errors import RetriableError
from pipeline.models import ActionMode, ActionRecord, ActionStatus, ApiCall, ResourceRef
from pipeline.stages.contain import build
from pipeline.state.memory import MemoryStore
from tests.integration.actions_support import HOME, FixedClock, context, incident

EC2 = ResourceRef(type="ec2.instance", id="i-0123", account=HOME, tags={"env": "prod-eu"})
KEY = ResourceRef(type="iam.access_key", id="AKIA1", account=HOME)


def cfg(*policies: dict[str, Any], **extra: Any) -> ContainmentConfig:
    return ContainmentConfig.model_validate({"mode": "enforce", "accounts": [HOME],
                                             "regions": ["us-east-1"], "policies": policies,
                                             **extra})


MATCH_CASES = [
    ("wildcard type", {"finding_types": ["UnauthorizedAccess:EC2/*"]}, EC2,
     "UnauthorizedAccess:EC2/TorClient", 80, True),
    ("other type", {"finding_types": ["Recon:*"]}, EC2, "UnauthorizedAccess:EC2/TorClient", 80,
     False),
    ("below score", {"min_score": 90}, EC2, "X", 80, False),
    ("resource type", {"resource_types": ["iam.access_key"]}, EC2, "X", 80, False),
    ("tag wildcard", {"tags": {"env": "prod*"}}, EC2, "X", 80, True),
    ("tag missing", {"tags": {"team": "*"}}, EC2, "X", 80, False),
    ("account", {"accounts": ["210987654321"]}, EC2, "X", 80, False),
]


@pytest.mark.parametrize(("name", "match", "resource", "ftype", "score", "expected"),
                         MATCH_CASES, ids=[c[0] for c in MATCH_CASES])
def test_policy_matching(name: str, match: dict[str, Any], resource: ResourceRef, ftype: str,
                         score: int, expected: bool) -> None:
    config = cfg({"name": "p", "match": match, "actions": [{"kind": "notify"}]},
                 accounts=[HOME, "210987654321"])
    found = match_policies(config, incident(resource, finding_type=ftype, score=score))
    assert bool(found) is expected


def test_actions_keep_policy_order_and_are_deduplicated_across_policies() -> None:
    config = cfg({"name": "a", "actions": [{"kind": "ec2.snapshot"}, {"kind": "ec2.isolate"}]},
                 {"name": "b", "mode": "approve", "actions": [{"kind": "ec2.isolate"},
                                                              {"kind": "ec2.tag"}]})
    found = match_policies(config, incident(EC2))
    assert [(c.spec.kind, c.policy, c.mode) for c in found] == [
        ("ec2.snapshot", "a", "enforce"), ("ec2.isolate", "a", "enforce"),
        ("ec2.tag", "b", "approve")]


def test_actions_only_apply_to_their_resource_types() -> None:
    config = cfg({"name": "a", "actions": [{"kind": "iam.deactivate_access_key"},
                                           {"kind": "notify"}]})
    inc = incident(EC2)
    inc = type(inc)(**{**{f: getattr(inc, f) for f in inc.__dataclass_fields__},
                       "resources": (EC2, KEY)})
    found = match_policies(config, inc)
    assert [(c.spec.kind, c.resource.type) for c in found] == [
        ("iam.deactivate_access_key", "iam.access_key"), ("notify", "ec2.instance"),
        ("notify", "iam.access_key")]


GATES = [
    ("sample", {}, {"sample": True}, "sample"),
    ("observe-only", {}, {"observe_only": True}, "observe-only"),
    ("kill switch", {"kill_switch": True}, {}, "kill switch"),
    ("account", {}, {"account": "999999999999"}, "allowlist"),
    ("no account", {}, {"account": None}, "allowlist"),
    ("region", {}, {"region": "ap-south-2"}, "allowlist"),
    ("source", {"sources": ["aws.guardduty"]}, {"source": "evil"}, "allowlist"),
]


@pytest.mark.parametrize(("name", "extra", "kw", "needle"), GATES, ids=[g[0] for g in GATES])
async def test_gates_skip_before_any_aws_call(name: str, extra: dict[str, Any],
                                              kw: dict[str, Any], needle: str) -> None:
    # The AWS clients point nowhere: a gate that let anything through would fail loudly.
    aws = AwsClients("us-east-1")
    try:
        config = cfg({"name": "p", "actions": [{"kind": "ec2.isolate"}]}, **extra)
        ctx = context(config, MemoryStore(), aws, FixedClock())
        out = await build(ctx.config, ctx).process(incident(EC2, **kw))
    finally:
        await aws.aclose()
    incident_out, record = out
    assert isinstance(record, ActionRecord)
    assert record.status == ActionStatus.SKIPPED and needle in record.reason
    assert incident_out.actions == (record,)


async def test_no_policy_passes_the_incident_and_other_items_through() -> None:
    aws = AwsClients("us-east-1")
    try:
        ctx = context(cfg({"name": "p", "match": {"min_score": 99},
                           "actions": [{"kind": "notify"}]}), MemoryStore(), aws, FixedClock())
        stage = build(ctx.config, ctx)
        inc = incident(EC2, score=50)
        assert await stage.process(inc) == [inc]
        assert await stage.process("not an incident") == ["not an incident"]
    finally:
        await aws.aclose()


async def test_observe_mode_records_without_aws() -> None:
    aws = AwsClients("us-east-1")
    try:
        config = cfg({"name": "p", "mode": "observe", "actions": [{"kind": "ec2.isolate"}]})
        ctx = context(config, MemoryStore(), aws, FixedClock())
        _, record = await build(ctx.config, ctx).process(incident(EC2))
    finally:
        await aws.aclose()
    assert record.status == ActionStatus.RECORDED and record.mode == ActionMode.OBSERVE


def _client_error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "m"},
                     "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "Op")


@pytest.mark.parametrize(("code", "status", "retriable", "denied"), [
    ("Throttling", 400, True, False), ("RequestLimitExceeded", 503, True, False),
    ("InternalError", 500, True, False), ("AccessDenied", 403, False, True),
    ("UnauthorizedOperation", 403, False, True), ("InvalidGroup.NotFound", 400, False, False),
])
def test_error_mapping(code: str, status: int, retriable: bool, denied: bool) -> None:
    mapped = classify(_client_error(code, status), "ec2.Op")
    if retriable:
        assert isinstance(mapped, RetriableError)
    else:
        assert isinstance(mapped, ActionFailed) and mapped.access_denied is denied
        assert mapped.code == code


def test_connection_errors_are_retriable() -> None:
    exc = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    assert isinstance(classify(exc, "x"), RetriableError)


def test_references_resolve_and_unbound_ones_fail() -> None:
    assert resolve({"Groups": ["$ref:q"], "X": {"Y": "$ref:q"}}, {"q": "sg-1"}) == {
        "Groups": ["sg-1"], "X": {"Y": "sg-1"}}
    with pytest.raises(ActionFailed):
        resolve(["$ref:missing"], {})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3), max_leaves=10)


@settings(deadline=None)
@given(params=st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=4),
       before=st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=4))
def test_plans_and_records_survive_the_state_store(params: dict[str, Any],
                                                   before: dict[str, Any]) -> None:
    call = ApiCall("ec2", "CreateTags", params, HOME, "us-east-1")
    plan = Plan(id="act-1", kind="ec2.tag", incident_id="inc", resource=EC2, account=HOME,
                region="us-east-1", steps=(Step(call, bind={"a": "B"},
                                                tolerate=frozenset({"X"})),),
                before=before, settings={}, created_at=datetime(2026, 1, 1, tzinfo=UTC),
                resource_tags={"k": "v"})
    assert plan_from(plan_to(plan)) == plan
    record = ActionRecord(id="act-1", incident_id="inc", kind="ec2.tag", resource=EC2,
                          mode=ActionMode.ENFORCE, status=ActionStatus.VERIFIED,
                          calls=(call,), before=before,
                          applied_at=datetime(2026, 1, 1, tzinfo=UTC))
    assert record_from(record_to(record)) == record


ACCOUNTS = [HOME, "222222222222", None]
REGIONS = ["us-east-1", "eu-west-1", None]


@settings(deadline=None, max_examples=60)
@given(account=st.sampled_from(ACCOUNTS), region=st.sampled_from(REGIONS),
       sample=st.booleans(), observe_only=st.booleans(),
       source=st.sampled_from(["aws.guardduty", "forged"]),
       exempt=st.booleans(), kill=st.booleans())
async def test_only_input_passing_every_check_gets_past_the_gates(
        account: str | None, region: str | None, sample: bool, observe_only: bool, source: str,
        exempt: bool, kill: bool) -> None:
    """Observe mode stops right after the gates, so the property needs no AWS."""
    config = cfg({"name": "p", "mode": "observe", "actions": [{"kind": "ec2.isolate"}]},
                 sources=["aws.guardduty"], kill_switch=kill)
    resource = ResourceRef(type="ec2.instance", id="i-1", account=account,
                           tags={"riposte:exempt": ""} if exempt else {})
    aws = AwsClients("us-east-1")
    try:
        ctx = context(config, MemoryStore(), aws, FixedClock())
        out = await build(ctx.config, ctx).process(incident(
            resource, account=account, region=region, sample=sample, observe_only=observe_only,
            source=source))
    finally:
        await aws.aclose()
    allowed = (account == HOME and region == "us-east-1" and not sample and not observe_only
               and source == "aws.guardduty" and not exempt and not kill)
    record = out[1]
    assert record.status == (ActionStatus.RECORDED if allowed else ActionStatus.SKIPPED)
