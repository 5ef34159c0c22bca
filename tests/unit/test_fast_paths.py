"""The shortcuts taken on the replay hot path give exactly what the general code gives.

Each shortcut (reading a CloudTrail record without the model, parsing a dotted quad
without ``ipaddress``, remembering user-agent verdicts, computing view fields once)
is checked against the general code it stands in for, on the real fixtures and on
generated input.
"""

from __future__ import annotations

import gc
import ipaddress
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipeline.config import RiposteConfig
from pipeline.detections._cloudtrail import (
    _SERVICE_HOST,
    CloudTrailView,
    is_service_name,
    lazy,
    parse_ip,
)
from pipeline.detections.registry import RULES
from pipeline.detections.user_agent import UnusualUserAgent
from pipeline.errors import PermanentError
from pipeline.normalizers.cloudtrail import CloudTrailAttributes, CloudTrailRecord, _read
from pipeline.replay import ReplayOptions, run_replay
from tests.unit.cloudtrail_cases import BASE, derive, make_ctx, normalized

# The model's fields under their CloudTrail names, which is how normalize reads them.
ALIASES = {name: info.alias or name for name, info in CloudTrailRecord.model_fields.items()}


def _records() -> list[dict[str, Any]]:
    out = []
    for path in sorted(BASE.glob("*.json")):
        doc = orjson.loads(path.read_bytes())
        out.append(doc.get("detail", doc) if "detail-type" in doc else doc)
    return out


def _model_fields(doc: dict[str, Any]) -> dict[str, Any]:
    rec = CloudTrailRecord.model_validate(doc)
    return {alias: getattr(rec, name) for name, alias in ALIASES.items()}


def _read_fields(doc: dict[str, Any]) -> dict[str, Any]:
    got = _read(doc)
    return {alias: got.get(alias) for alias in ALIASES.values()}


@pytest.mark.parametrize("doc", _records())
def test_well_formed_records_skip_the_model_with_the_same_fields(doc: dict[str, Any]) -> None:
    assert _read(doc) is doc
    assert _read_fields(doc) == _model_fields(doc)


@pytest.mark.parametrize("edit", [
    {"eventName": ""}, {"eventName": 7}, {"eventSource": None}, {"eventID": ""},
    {"eventID": 12}, {"awsRegion": 3}, {"userIdentity": "root"}, {"resources": {}},
    {"event_name": "Shadowed"}, {"recipientAccountId": ["x"]},
])
def test_anything_unusual_goes_through_the_model(edit: dict[str, Any]) -> None:
    doc = dict(_records()[0], **edit)
    try:
        expected = _model_fields(doc)
    except Exception:
        with pytest.raises(PermanentError):
            _read(doc)
        return
    assert _read(doc) is not doc
    assert _read_fields(doc) == expected


def _reference_ip(value: str | None) -> Any:
    if not value:
        return None
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


_OCTET = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "007", "", "x",
                                                                  "\u0661", " 1", "1 "]))


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.lists(_OCTET, min_size=3, max_size=5).map(".".join),
    st.ip_addresses().map(str),
    st.text(max_size=20),
))
def test_parse_ip_matches_ipaddress(value: str) -> None:
    assert parse_ip(value) == _reference_ip(value)


@pytest.mark.parametrize("value", ["10.0.0.1", " 10.0.0.1 ", "0.0.0.0", "255.255.255.255",
                                   "01.0.0.1", "256.0.0.1", "::ffff:10.1.2.3", "1.2.3",
                                   "AWS Internal", ""])
def test_parse_ip_examples(value: str) -> None:
    assert parse_ip(value) == _reference_ip(value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.ip_addresses().map(str), st.text(max_size=30),
                 st.sampled_from(["ec2.amazonaws.com", " AWS Internal ", "s3.amazonaws.com.cn",
                                  "cloudtrail.amazonaws.com ", "aws internal2",
                                  "1.amazonaws.com"])))
def test_service_names_are_told_from_addresses_as_the_pattern_does(value: str) -> None:
    expected = bool(value) and (value.strip().lower() == "aws internal"
                                or bool(_SERVICE_HOST.match(value.strip())))
    assert is_service_name(value) is expected


def _ua_rule() -> UnusualUserAgent:
    ctx = make_ctx()
    rule, = RULES.build(ctx.config.detections.model_copy(
        update={"rules": ["unusual_user_agent"]}), ctx)
    assert isinstance(rule, UnusualUserAgent)
    return rule


@pytest.mark.parametrize("console", [False, True])
@pytest.mark.parametrize("agent", [None, "", "curl/8.4.0", "Boto3/1.34.0 Botocore/1.34.0",
                                   "Mozilla/5.0 (X11; Linux x86_64)", " Mozilla/5.0",
                                   "console.amazonaws.com", "python-requests/2.31"])
async def test_user_agent_verdicts_remembered_match_classify(agent: str | None,
                                                             console: bool) -> None:
    rule = _ua_rule()
    record = derive("panther-getcalleridentity-awscli.json",
                    {"sessionCredentialFromConsole": "true"} if console else None)
    if agent is None:
        record.pop("userAgent", None)
    else:
        record["userAgent"] = agent
    view = CloudTrailView(normalized(record))
    # A fresh rule judges without anything remembered; ``rule`` remembers on first use.
    expected = _ua_rule().classify(view.user_agent, from_console=view.from_console)
    for _ in range(2):  # the second time from the remembered verdict
        hit = await rule.evaluate(view)
        assert (hit.facts["verdict"] if hit is not None else None) == expected


def test_lazy_fields_are_computed_once_and_then_plain_attributes() -> None:
    calls: list[int] = []

    class Thing:
        @lazy
        def value(self) -> int:
            calls.append(1)
            return 42

    thing = Thing()
    assert thing.value == 42 and thing.value == 42
    assert calls == [1] and thing.__dict__["value"] == 42
    assert isinstance(Thing.__dict__["value"], lazy)


def test_view_reads_the_raw_record_when_attributes_are_missing() -> None:
    event = normalized(derive("panther-getcalleridentity-awscli.json"))
    bare = CloudTrailView(type(event)(**{**{f: getattr(event, f)
                                            for f in event.__dataclass_fields__},
                                         "attributes": {}}))
    full = CloudTrailView(event)
    for name in ("event_name", "event_source", "source_ip", "user_agent", "access_key_id",
                 "principal_arn", "user_type", "user_name", "session_issuer_arn",
                 "invoked_by", "error_code", "region", "subject", "succeeded"):
        assert getattr(bare, name) == getattr(full, name), name


VIEW_FIELDS = ("event_name", "event_source", "source_ip", "user_agent", "access_key_id",
               "principal_arn", "user_type", "user_name", "session_issuer_arn", "invoked_by",
               "error_code", "region", "account_id", "recipient_account_id", "subject",
               "succeeded", "service_originated", "request_parameters", "response_elements",
               "from_console")
# Values a forged or damaged record might hold where CloudTrail writes a string.
_ODD = st.one_of(st.none(), st.sampled_from(["", " ", "x", "10.0.0.1", " 10.0.0.2", "::1",
                                             "01.2.3.4", "AWS Internal",
                                             "AssumedRole", "IAMUser", "ec2.amazonaws.com"]),
                 st.integers(-2, 2), st.booleans(), st.just({}), st.just(["a"]),
                 st.just({"ConsoleLogin": "Failure"}))
_TOP = ("sourceIPAddress", "userAgent", "errorCode", "recipientAccountId", "eventType",
        "requestParameters", "responseElements")
_IDENT = ("accessKeyId", "arn", "type", "userName", "invokedBy", "accountId")


def _with_attributes(event: Any, attributes: dict[str, Any]) -> Any:
    return type(event)(**{**{f: getattr(event, f) for f in event.__dataclass_fields__},
                          "attributes": attributes})


@settings(max_examples=200, deadline=None)
@given(top=st.dictionaries(st.sampled_from(_TOP), _ODD),
       ident=st.dictionaries(st.sampled_from(_IDENT), _ODD),
       issuer_arn=_ODD)
def test_the_view_of_normalized_attributes_is_the_view_of_the_raw_record(
        top: dict[str, Any], ident: dict[str, Any], issuer_arn: Any) -> None:
    """The view trusts CloudTrailAttributes alone; completing plain attributes from the
    raw record (or starting from none) must come to the same fields."""
    record = derive("panther-getcalleridentity-awscli.json")
    record.update(top)
    identity = record.setdefault("userIdentity", {})
    identity.update(ident)
    identity["sessionContext"] = {"sessionIssuer": {"arn": issuer_arn}}
    try:
        event = normalized(record)
    except PermanentError:  # the model refuses it (a non-string account, say): no event
        assume(False)
    assert isinstance(event.attributes, CloudTrailAttributes)
    views = [CloudTrailView(event),
             CloudTrailView(_with_attributes(event, dict(event.attributes))),
             CloudTrailView(_with_attributes(event, {}))]
    for name in VIEW_FIELDS:
        assert len({repr(getattr(view, name)) for view in views}) == 1, name
    # The address, whether it was matched as a dotted quad or parsed in general.
    assert views[0].ip == parse_ip(views[0].source_ip)


async def test_replay_puts_the_collector_settings_back(tmp_path: Path) -> None:
    before = gc.get_threshold()
    (tmp_path / "empty.json").write_text("{}")
    await run_replay(RiposteConfig(), ReplayOptions(inputs=[str(tmp_path)],
                                                    state_path=":memory:"))
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
