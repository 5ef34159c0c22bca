"""Trust checks: allowlists fail closed, sample findings, and the GuardDuty re-fetch.

moto 5.2's server has no GuardDuty ``GetFindings`` (it answers 404), so the re-fetch
is tested against ``FakeGuardDuty`` below: a local aiohttp stand-in serving the real
REST API's request and response shape (``POST /detector/{detectorId}/findings/get``,
``{"findingIds": [...]}`` -> ``{"findings": [...]}``, errors as ``x-amzn-ErrorType``),
reached through the real aiobotocore client via ``AWS_ENDPOINT_URL_GUARDDUTY``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from pipeline import metrics
from pipeline.aws import AwsClients
from pipeline.config import RiposteConfig, TrustConfig
from pipeline.errors import RetriableError
from pipeline.models import Event, RawRecord
from pipeline.stages.detect import build as build_detect
from pipeline.stages.normalize import NormalizeStage
from pipeline.trust import GuardDutyRefetcher, TrustChecker, TrustStage, build
from tests.loopback import start_app
from tests.unit.cloudtrail_cases import derive, make_ctx, normalized

TRUST_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "trust"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((TRUST_FIXTURES / name).read_bytes())
    return data


def real_finding() -> dict[str, Any]:
    """The published panther finding with its ARN pointed at its own id (see PROVENANCE)."""
    finding = load("panther-privesc-iamuser-adminpermissions.json")
    prefix = finding["arn"].rsplit("/", 1)[0]
    finding["arn"] = f"{prefix}/{finding['id']}"
    return finding


def event_of(payload: dict[str, Any]) -> Event:
    (event,) = NormalizeStage().normalize(RawRecord(payload=payload, message_id="m"))
    return event


def detector_of(finding: dict[str, Any]) -> str:
    return str(finding["arn"].split(":detector/")[1].split("/")[0])


# --- allowlists --------------------------------------------------------------------------------
def cloudtrail_event(**changes: Any) -> Event:
    return replace(normalized(derive("panther-createuser-console.json")), **changes)


ALLOWLIST_CASES = [
    # (name, trust config, event changes, expected reason or None)
    ("no_lists_trusts_everything", {}, {}, None),
    ("all_lists_match", {"accounts": ["123456789012"], "regions": ["us-west-2"],
                         "sources": ["aws.iam"], "detail_types": ["AWS API Call via CloudTrail"]},
     {}, None),
    ("account_not_listed", {"accounts": ["111111111111"]}, {}, "account_not_allowed"),
    ("account_missing_fails_closed", {"accounts": ["123456789012"]}, {"account": None},
     "account_not_allowed"),
    ("region_not_listed", {"regions": ["eu-west-1"]}, {}, "region_not_allowed"),
    ("region_missing_fails_closed", {"regions": ["us-west-2"]}, {"region": None},
     "region_not_allowed"),
    ("source_not_listed", {"sources": ["aws.guardduty"]}, {}, "source_not_allowed"),
    ("forged_source", {"sources": ["aws.iam"]}, {"source": "attacker.custom"},
     "source_not_allowed"),
    ("detail_type_not_listed", {"detail_types": ["GuardDuty Finding"]}, {},
     "detail_type_not_allowed"),
    ("detail_type_missing_fails_closed", {"detail_types": ["AWS API Call via CloudTrail"]},
     {"detail_type": None}, "detail_type_not_allowed"),
    ("account_checked_first", {"accounts": ["111111111111"], "regions": ["eu-west-1"]}, {},
     "account_not_allowed"),
]


@pytest.mark.parametrize(("name", "config", "changes", "reason"), ALLOWLIST_CASES,
                         ids=[c[0] for c in ALLOWLIST_CASES])
async def test_allowlists(name: str, config: dict[str, Any], changes: dict[str, Any],
                          reason: str | None) -> None:
    stage = TrustStage(TrustChecker(TrustConfig(**config)))
    event = cloudtrail_event(**changes)
    before = metrics.value(metrics.UNTRUSTED, reason=reason or "none")
    (out,) = await stage.process(event)
    if reason is None:
        assert out is event
        return
    assert out.observe_only and out.observe_reason == reason
    assert out.id == event.id and out.raw is event.raw
    assert metrics.value(metrics.UNTRUSTED, reason=reason) == before + 1


async def test_sample_findings_are_observe_only() -> None:
    stage = TrustStage(TrustChecker(TrustConfig()))
    flagged = event_of(load("custodian-ec2-duty-event.json"))
    # Normalize already marks it observe-only; the stage leaves its reason alone.
    assert flagged.sample
    (out,) = await stage.process(flagged)
    assert out is flagged
    # Belt and braces: the raw sample flag alone is enough, whatever normalize said.
    unflagged = replace(flagged, sample=False, observe_only=False, observe_reason=None)
    (out,) = await stage.process(unflagged)
    assert out.observe_only and out.observe_reason == "sample_finding"


async def test_other_items_and_detections_pass_through() -> None:
    stage = TrustStage(TrustChecker(TrustConfig(accounts=["111111111111"])))
    record = RawRecord(payload={}, message_id="m")
    assert await stage.process(record) == (record,)


async def test_untrusted_cloudtrail_call_gives_observe_only_detections() -> None:
    ctx = make_ctx()
    config = RiposteConfig(trust=TrustConfig(accounts=["111111111111"]))
    trust = build(config, ctx)
    detect = build_detect(ctx.config, ctx)
    (checked,) = await trust.process(normalized(derive("panther-attachuserpolicy-admin.json")))
    out = await detect.process(checked)
    assert len(out) > 1
    assert all(e.observe_only and e.observe_reason == "account_not_allowed" for e in out)


def test_refetch_requires_a_refetcher() -> None:
    with pytest.raises(ValueError, match="no GuardDutyRefetcher"):
        TrustChecker(TrustConfig(refetch_guardduty=True))
    assert TrustChecker(TrustConfig(), refetcher=None).refetcher is None


# --- GuardDuty re-fetch against a local stand-in ------------------------------------------------
@dataclass
class FakeGuardDuty:
    """GuardDuty's GetFindings, as the REST API answers it, for findings we load into it."""

    findings: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int | None = None  # force an error status (500, 403)
    url: str = ""

    def add(self, finding: dict[str, Any], *, sample: bool = False) -> None:
        served = copy.deepcopy(finding)
        service = served.setdefault("service", {})
        # The API carries the sample flag as JSON text, not as a boolean field.
        service["additionalInfo"] = ({"value": '{"sample":true}', "type": "default"}
                                     if sample else {"value": "{}", "type": "default"})
        self.findings.setdefault(detector_of(finding), {})[finding["id"]] = served

    async def get_findings(self, request: web.Request) -> web.Response:
        detector = request.match_info["detectorId"]
        body = await request.json()
        self.requests.append({"detector": detector, "ids": body.get("findingIds"),
                              "signed": "AWS4-HMAC-SHA256" in
                              request.headers.get("Authorization", "")})
        if self.status == 403:
            return self._error(403, "AccessDeniedException", "not authorized")
        if self.status is not None:
            return self._error(self.status, "InternalServerErrorException", "internal error")
        if detector not in self.findings:
            return self._error(400, "BadRequestException", "The request is rejected because "
                               "the input detectorId is not owned by the current account.")
        held = self.findings[detector]
        found = [held[i] for i in body.get("findingIds", []) if i in held]
        return web.json_response({"findings": found})

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"message": message, "__type": code}, status=status,
                                 headers={"x-amzn-ErrorType": f"{code}:"})


@pytest.fixture
async def guardduty(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeGuardDuty]:
    fake = FakeGuardDuty()
    app = web.Application()
    app.router.add_post("/detector/{detectorId}/findings/get", fake.get_findings)
    runner, fake.url = await start_app(app)
    for name, value in {"AWS_ENDPOINT_URL_GUARDDUTY": fake.url,
                        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_CONFIG_FILE": os.devnull,
                        "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    try:
        yield fake
    finally:
        await runner.cleanup()


@pytest.fixture
async def refetching(guardduty: FakeGuardDuty) -> AsyncIterator[TrustStage]:
    aws = AwsClients("us-east-1")
    try:
        yield TrustStage(TrustChecker(TrustConfig(refetch_guardduty=True),
                                      refetcher=GuardDutyRefetcher(aws)))
    finally:
        await aws.aclose()


async def test_existing_finding_is_trusted(guardduty: FakeGuardDuty,
                                           refetching: TrustStage) -> None:
    finding = real_finding()
    guardduty.add(finding)
    event = event_of(finding)
    (out,) = await refetching.process(event)
    assert out is event
    assert guardduty.requests == [{"detector": detector_of(finding), "ids": [finding["id"]],
                                   "signed": True}]
    # A duplicate delivery of the same revision is answered from the cache.
    await refetching.process(event)
    assert len(guardduty.requests) == 1


def _forged(**changes: Any) -> dict[str, Any]:
    finding = real_finding()
    finding.update(changes)
    return finding


REFETCH_CASES = [
    # (name, what GuardDuty holds, message, expected reason)
    ("forged_unknown_finding_id", [], _forged(), "refetch_not_found"),
    ("forged_detector_not_ours", "other-detector", _forged(), "refetch_not_found"),
    ("type_changed", [real_finding()], _forged(type="Backdoor:EC2/C&CActivity.B!DNS"),
     "refetch_mismatch"),
    ("severity_inflated", [real_finding()], _forged(severity=8.9), "refetch_mismatch"),
    ("account_changed", [real_finding()], _forged(accountId="999999999999"),
     "refetch_mismatch"),
    ("revision_from_the_future", [real_finding()],
     _forged(updatedAt="2031-01-01T00:00:00.000Z"), "refetch_mismatch"),
    ("sample_per_guardduty", "sample", _forged(), "sample_finding"),
    ("id_disagrees_with_arn", [real_finding()],
     _forged(id="0" * 32), "refetch_mismatch"),
    ("no_arn", [real_finding()], _forged(arn="not-an-arn"), "refetch_no_arn"),
]


@pytest.mark.parametrize(("name", "held", "message", "reason"), REFETCH_CASES,
                         ids=[c[0] for c in REFETCH_CASES])
async def test_refetch_refuses_forged_findings(
        guardduty: FakeGuardDuty, refetching: TrustStage, name: str, held: Any,
        message: dict[str, Any], reason: str) -> None:
    if held == "sample":
        guardduty.add(real_finding(), sample=True)
    elif held == "other-detector":
        guardduty.findings["some-other-detector"] = {}
    else:
        for finding in held:
            guardduty.add(finding)
    before = metrics.value(metrics.UNTRUSTED, reason=reason)
    event = event_of(message)
    (out,) = await refetching.process(event)
    assert out.observe_only and out.observe_reason == reason
    assert metrics.value(metrics.UNTRUSTED, reason=reason) == before + 1


async def test_refetch_errors_are_retriable(guardduty: FakeGuardDuty,
                                            refetching: TrustStage) -> None:
    guardduty.add(real_finding())
    event = event_of(real_finding())
    guardduty.status = 403
    with pytest.raises(RetriableError) as denied:
        await refetching.process(event)
    assert denied.value.reason == "refetch_access_denied"
    guardduty.status = 500
    with pytest.raises(RetriableError) as down:
        await refetching.process(event)
    assert down.value.reason == "refetch_transient" and down.value.component == "trust"
    # Once GuardDuty answers again the finding is trusted.
    guardduty.status = None
    (out,) = await refetching.process(event)
    assert out is event


async def test_refetch_is_skipped_when_not_needed(guardduty: FakeGuardDuty) -> None:
    aws = AwsClients("us-east-1")
    try:
        stage = TrustStage(TrustChecker(TrustConfig(refetch_guardduty=True,
                                                    accounts=["111111111111"]),
                                        refetcher=GuardDutyRefetcher(aws)))
        # Failed allowlist: no API call. CloudTrail event: never re-fetched.
        (out,) = await stage.process(event_of(real_finding()))
        assert out.observe_reason == "account_not_allowed"
        ct = TrustStage(TrustChecker(TrustConfig(refetch_guardduty=True),
                                     refetcher=GuardDutyRefetcher(aws)))
        event = cloudtrail_event()
        assert await ct.process(event) == (event,)
        assert guardduty.requests == []
    finally:
        await aws.aclose()


def test_build_wires_the_refetcher() -> None:
    ctx = make_ctx()
    assert build(RiposteConfig(), ctx).checker.refetcher is None
    on = build(RiposteConfig(trust=TrustConfig(refetch_guardduty=True)), ctx)
    assert isinstance(on.checker.refetcher, GuardDutyRefetcher)
