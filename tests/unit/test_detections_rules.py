"""Table-driven tests of every CloudTrail rule over records derived from real samples.

Each case in ``tests/fixtures/cloudtrail_rules/cases.json`` is a published CloudTrail
record with a few fields edited (see PROVENANCE.md there), run through the real
normalize stage and then the detect stage holding only the rule under test.
"""

from __future__ import annotations

import ipaddress
from functools import cache
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import metrics
from pipeline.detections.registry import RULES
from pipeline.models import Event, EventKind
from pipeline.stages.detect import DetectStage, build
from tests.unit.cloudtrail_cases import derive, load_cases, make_ctx, normalized

CASES = load_cases()


def _stage(rule_id: str, config: dict[str, Any] | None = None) -> DetectStage:
    ctx = make_ctx(**(config or {}))
    return DetectStage(RULES.build(ctx.config.detections.model_copy(
        update={"rules": [rule_id]}), ctx))


@cache
def _default_stage(rule_id: str) -> DetectStage:
    """One stage per rule for the property tests (these rules keep no state)."""
    return _stage(rule_id)


@pytest.mark.parametrize("case", CASES, ids=[f"{c['rule']}-{c['name']}" for c in CASES])
async def test_rule_case(case: dict[str, Any]) -> None:
    event = normalized(derive(case["base"], case.get("set"), case.get("unset")))
    stage = _stage(case["rule"], case.get("config"))
    out = await stage.process(event)
    assert out[0] is event, "the CloudTrail event itself always passes through"
    detections = [e for e in out[1:] if isinstance(e, Event)]
    if not case["expect"]:
        assert detections == [], detections[0].detection if detections else None
        return
    assert len(detections) == 1
    det = detections[0]
    assert det.kind is EventKind.DETECTION and det.item_kind == "detection"
    assert det.type == case["rule"]
    assert det.detection is not None and det.detection.rule_id == case["rule"]
    assert det.detection.trigger_event_id == event.id
    assert det.detection.facts.get("why"), "every detection explains itself"
    if "severity" in case:
        assert det.severity.label.value == case["severity"]
        assert det.detection.severity.value == case["severity"]


def test_every_rule_has_cases_both_ways() -> None:
    for rule_id in RULES.ids():
        expects = {c["expect"] for c in CASES if c["rule"] == rule_id}
        if rule_id == "first_seen_activity":
            continue  # stateful: tested in test_detections_baseline.py
        assert expects == {True, False}, f"{rule_id} needs positive and negative cases"


def test_cases_only_use_apache_bases() -> None:
    assert not any(c["base"].startswith("panther-go-") for c in CASES)


# --- properties --------------------------------------------------------------------------------
_PRIVATE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
_BASE_RECORD = derive("panther-getcalleridentity-awscli.json",
                      {"eventName": "ListUsers", "eventSource": "iam.amazonaws.com"})


@settings(max_examples=100, deadline=None)
@given(st.one_of(
    st.ip_addresses(),
    # Both sides of each trusted range's edges (172.16/12 sits inside 172/8), and the
    # IPv4-mapped IPv6 form of such addresses.
    *[st.ip_addresses(network=net) for net in ("10.0.0.0/7", "172.0.0.0/8", "192.168.0.0/15")],
    st.ip_addresses(network="172.0.0.0/8").map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}")),
))
async def test_sensitive_api_fires_exactly_outside_trusted_cidrs(
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    record = dict(_BASE_RECORD, sourceIPAddress=str(addr))
    out = await _default_stage("sensitive_api_untrusted_network").process(normalized(record))
    v4 = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else addr
    inside = v4 is not None and any(v4 in n for n in _PRIVATE)
    assert (len(out) == 2) is (not inside)


@settings(max_examples=80, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=200)))
async def test_user_agent_rule_never_raises(user_agent: str | None) -> None:
    record = dict(_BASE_RECORD)
    if user_agent is None:
        record.pop("userAgent")
    else:
        record["userAgent"] = user_agent
    out = await _default_stage("unusual_user_agent").process(normalized(record))
    assert out[0].kind is EventKind.CLOUDTRAIL and len(out) in (1, 2)


_ACTIONS = st.sampled_from(["*", "*:*", "s3:*", "s3:GetObject", "iam:PassRole", "ec2:*"])
_RESOURCES = st.sampled_from(["*", "arn:aws:s3:::bucket/*", "arn:aws:iam::123456789012:role/x"])
_STATEMENT = st.fixed_dictionaries({
    "Effect": st.sampled_from(["Allow", "Deny", "allow"]),
    "Action": st.one_of(_ACTIONS, st.lists(_ACTIONS, min_size=1, max_size=3)),
    "Resource": st.one_of(_RESOURCES, st.lists(_RESOURCES, min_size=1, max_size=3)),
})


def _wild(value: Any, wild: set[str]) -> bool:
    return any(v in wild for v in (value if isinstance(value, list) else [value]))


@settings(max_examples=80, deadline=None)
@given(st.lists(_STATEMENT, min_size=1, max_size=4), st.booleans(), st.booleans())
async def test_iam_policy_severity_follows_the_statements(
        statements: list[dict[str, Any]], url_encoded: bool, single: bool) -> None:
    body: Any = statements[0] if single else statements
    text = orjson.dumps({"Version": "2012-10-17", "Statement": body}).decode()
    record = derive("panther-attachuserpolicy-admin.json", {
        "eventName": "PutRolePolicy",
        "requestParameters": {"roleName": "r", "policyName": "p",
                              "policyDocument": quote(text) if url_encoded else text}})
    out = await _default_stage("iam_policy_wildcard").process(normalized(record))
    allows = [s for s in (statements[:1] if single else statements)
              if s["Effect"].lower() == "allow"]
    both = any(_wild(s["Action"], {"*", "*:*"}) and _wild(s["Resource"], {"*"}) for s in allows)
    either = any(_wild(s["Action"], {"*", "*:*"}) or _wild(s["Resource"], {"*"}) for s in allows)
    assert (len(out) == 2) is either
    if either:
        assert out[1].severity.label.value == ("critical" if both else "high")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)
_CTX = make_ctx()
_ALL_RULES = build(_CTX.config, _CTX)
_ALL_NAMES = sorted({n for r in RULES for n in (r.meta.event_names or ())}
                    | {"ListUsers", "ConsoleLogin"})


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(_ALL_NAMES), st.dictionaries(st.text(max_size=30), _JSON, max_size=6),
       st.sampled_from(["Root", "IAMUser", "AssumedRole", "AWSService"]))
async def test_no_rule_fails_on_arbitrary_parameters(
        name: str, params: dict[str, Any], user_type: str) -> None:
    record = derive("panther-createuser-console.json", {
        "eventName": name, "requestParameters": params, "userIdentity.type": user_type})
    before = sum(metrics.value(metrics.ERRORS, stage="detect", error_type=r) for r in RULES.ids())
    out = await _ALL_RULES.process(normalized(record))
    assert out[0].kind is EventKind.CLOUDTRAIL
    after = sum(metrics.value(metrics.ERRORS, stage="detect", error_type=r) for r in RULES.ids())
    assert after == before, "a rule raised on well-formed but unexpected parameters"
