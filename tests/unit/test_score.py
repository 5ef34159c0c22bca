"""The score stage: table-driven factors, configuration, and real samples end to end."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from pipeline import metrics
from pipeline.config import parse_config
from pipeline.mitre import techniques_for, techniques_for_event
from pipeline.models import (
    Detection,
    Event,
    EventKind,
    FindingRef,
    Incident,
    ResourceRef,
    Severity,
    SeverityLabel,
)
from pipeline.stages.score import ScoreStage, build
from pipeline.stages.score_config import ScoreConfig
from pipeline.state.memory import MemoryStore
from tests.unit.test_correlate import (
    ACCOUNT,
    GD_TIME,
    REGION,
    T0,
    FakeClock,
    _load,
    _normalize,
    guardduty_on_pair,
    insp_event,
    inspector_pair_findings,
    instance,
    latest,
    run,
    stage,
)

T = datetime(2026, 1, 1, tzinfo=UTC)
HOST = ResourceRef("ec2.instance", "i-0123456789abcdef0", None, "111122223333", "us-east-1")


def gd(ftype: str = "Backdoor:EC2/C&CActivity.B!DNS", score: int = 80, fid: str = "g1",
       status: str = "ACTIVE") -> FindingRef:
    return FindingRef(fid, EventKind.GUARDDUTY, ftype, Severity.of_score(score, score / 10), T,
                      1, status, "gd", {"mitre": []})


def vuln(fid: str = "v1", *, cvss: float | None = 9.8, epss: float | None = 0.9,
         exploit: Any = True, fix: Any = "NO", reachable: bool = False,
         ftype: str = "PACKAGE_VULNERABILITY", status: str = "ACTIVE") -> FindingRef:
    attrs: dict[str, Any] = {"exploit_available": exploit, "fix_available": fix,
                             "network_reachable": reachable, "vulnerability_id": f"CVE-{fid}"}
    if cvss is not None:
        attrs["cvss"] = cvss
    if epss is not None:
        attrs["epss"] = epss
    return FindingRef(f"arn:finding/{fid}", EventKind.INSPECTOR, ftype,
                      Severity.of_score(90, "CRITICAL"), T, None, status, "cve", attrs)


def detection(label: SeverityLabel) -> FindingRef:
    return FindingRef("d1", EventKind.DETECTION, "cloudtrail.root_usage",
                      Severity(native=str(label), score=50, label=label), T, None, None, "det",
                      {"mitre": ["T1078.004"]})


def incident(*findings: FindingRef, correlated: bool = False,
             resources: tuple[ResourceRef, ...] = (HOST,)) -> Incident:
    return Incident(id="inc-x", key=HOST.key, title="t", account=HOST.account,
                    region=HOST.region, resources=resources, findings=findings,
                    first_seen=T, last_seen=T + timedelta(seconds=1), correlated=correlated)


SCORER = ScoreStage(ScoreConfig())


@pytest.mark.parametrize(("case", "findings", "correlated", "value", "label", "factors"), [
    ("backdoor alone", [gd()], False, 60, "high", ["guardduty_severity", "finding_family"]),
    ("recon alone", [gd("Recon:EC2/Portscan", 20)], False, 12, "low",
     ["guardduty_severity", "finding_family"]),
    ("unknown family", [gd("Weird:EC2/Thing", 50)], False, 25, "low", ["guardduty_severity"]),
    ("exploitable CVE alone", [vuln()], False, 56, "medium",
     ["cvss", "epss", "exploit_available", "fix_available"]),
    ("CVE without CVSS uses its severity", [vuln(cvss=None, epss=None, exploit=False,
                                                  fix="YES")],
     False, 23, "low", ["vulnerability_severity", "fix_available"]),
    ("pair, not correlated", [gd(), vuln()], False, 100, "critical",
     ["guardduty_severity", "finding_family", "cvss", "epss", "exploit_available",
      "fix_available"]),
    ("pair, correlated", [gd("Recon:EC2/Portscan", 20), vuln(exploit=False, epss=0.0,
                                                           fix="YES")],
     True, 52, "medium",
     ["guardduty_severity", "finding_family", "cvss", "epss", "fix_available", "correlation"]),
    ("pair, correlated, exploitable", [gd("Recon:EC2/Portscan", 20), vuln(epss=0.0, fix="YES")],
     True, 77, "high",
     ["guardduty_severity", "finding_family", "cvss", "epss", "exploit_available",
      "fix_available", "correlation", "correlation_exploitable"]),
    ("reachability finding", [vuln("r", cvss=None, epss=None, exploit=None, fix=None,
                                   ftype="NETWORK_REACHABILITY", reachable=True)],
     False, 10, "low", ["network_exposure"]),
    ("closed findings do not count", [gd(status="ARCHIVED"), vuln(status="CLOSED")], False, 0,
     "informational", []),
    ("critical detection", [detection(SeverityLabel.CRITICAL)], False, 88, "critical",
     ["detection_severity"]),
    ("high detection", [detection(SeverityLabel.HIGH)], False, 65, "high",
     ["detection_severity"]),
    ("strongest threat only", [gd("Recon:EC2/Portscan", 20, "a"), gd(fid="b")], False, 60,
     "high", ["guardduty_severity", "finding_family"]),
])
def test_score_table(case: str, findings: list[FindingRef], correlated: bool, value: int,
                     label: str, factors: list[str]) -> None:
    score = SCORER.score(incident(*findings, correlated=correlated))
    assert [r.factor for r in score.reasons] == factors, case
    assert score.value == value, case
    assert score.label == SeverityLabel(label), case
    assert all(r.detail for r in score.reasons)


def test_correlation_outranks_either_alone() -> None:
    threat, cve = gd("Backdoor:EC2/C&CActivity.B!DNS", 50), vuln(epss=0.1, fix="YES")
    alone = max(SCORER.score(incident(threat)).value, SCORER.score(incident(cve)).value)
    both = SCORER.score(incident(threat, cve, correlated=True))
    assert both.value > alone


def test_score_does_not_depend_on_finding_order() -> None:
    findings = [gd(fid="a"), gd("Trojan:EC2/DropPoint", 80, "b"), vuln("x"), vuln("y", cvss=10)]
    first = SCORER.score(incident(*findings, correlated=True))
    rng = random.Random(7)
    for _ in range(10):
        rng.shuffle(findings)
        assert SCORER.score(incident(*findings, correlated=True)) == first


@pytest.mark.parametrize(("tags", "points"), [
    ({"criticality": "high"}, 10), ({"Criticality": "CRITICAL"}, 15),
    ({"criticality": "unknown"}, None), ({"tier": "high"}, None),
])
def test_asset_criticality_from_tags(tags: dict[str, str], points: float | None) -> None:
    host = ResourceRef(HOST.type, HOST.id, None, HOST.account, HOST.region, tags)
    score = SCORER.score(incident(gd(), resources=(host,)))
    found = [r.points for r in score.reasons if r.factor == "asset_criticality"]
    assert found == ([] if points is None else [points])


def test_criticality_tag_key_and_weights_are_configurable() -> None:
    scorer = ScoreStage(ScoreConfig(criticality_tag_keys=["tier"],
                                    criticality_points={"gold": 30}))
    host = ResourceRef(HOST.type, HOST.id, None, HOST.account, HOST.region, {"Tier": "Gold"})
    score = scorer.score(incident(gd(), resources=(host,)))
    assert score.reasons[-1].factor == "asset_criticality" and score.value == 90


def test_public_address_counts_as_exposure() -> None:
    host = ResourceRef(HOST.type, HOST.id, None, HOST.account, HOST.region,
                       details={"public_ip": "203.0.113.9"})
    score = SCORER.score(incident(gd(), resources=(host,)))
    assert "network_exposure" in [r.factor for r in score.reasons]


def test_thresholds_are_configurable_and_validated() -> None:
    scorer = ScoreStage(ScoreConfig(critical_threshold=50, high_threshold=40))
    assert scorer.score(incident(gd())).label is SeverityLabel.CRITICAL
    with pytest.raises(ValidationError):
        ScoreConfig(high_threshold=90)
    with pytest.raises(ValidationError):
        ScoreConfig(unknown=1)  # type: ignore[call-arg]


def test_mitre_union_adds_t1190_for_exploitable_and_reachable() -> None:
    reach = vuln("r", cvss=None, epss=None, exploit=None, fix=None,
                 ftype="NETWORK_REACHABILITY", reachable=True)
    scored = SCORER.score_incident(incident(gd(), vuln(), reach, correlated=True))
    assert scored.mitre == ("T1071", "T1071.004", "T1190")
    plain = SCORER.score_incident(incident(gd(), vuln()))
    assert "T1190" not in plain.mitre


async def test_process_passes_other_items_and_counts_incidents() -> None:
    assert await SCORER.process("x") == ["x"]
    before = metrics.value(metrics.INCIDENTS, label="high", correlated="false")
    (out,) = await SCORER.process(incident(gd()))
    assert isinstance(out, Incident) and out.score is not None and out.score.value == 60
    assert metrics.value(metrics.INCIDENTS, label="high", correlated="false") == before + 1


def test_build_uses_the_score_section() -> None:
    config = parse_config({"score": {"correlation_bonus": 5}}, env={})
    assert build(config, None).config.correlation_bonus == 5  # type: ignore[arg-type]


async def test_real_samples_correlated_outranks_each_alone() -> None:
    """Derived pair (see test_correlate): attacked + vulnerable instance vs each alone."""
    scorer = ScoreStage(ScoreConfig())
    gd_event = guardduty_on_pair(GD_TIME)
    vulns = inspector_pair_findings()
    (pair,) = latest(await run(stage(MemoryStore(FakeClock())), [gd_event, *vulns])).values()
    gd_alone = guardduty_on_pair(GD_TIME, instance="i-0fffffffffffffff1")
    (threat_only,) = latest(await run(stage(MemoryStore(FakeClock())), [gd_alone])).values()
    scored_pair = scorer.score_incident(pair)
    scored_threat = scorer.score_incident(threat_only)
    vuln_only = scorer.score_incident(Incident(
        id="v", key=pair.key, title="v", account=pair.account, region=pair.region,
        resources=pair.resources,
        findings=tuple(f for f in pair.findings if f.kind is EventKind.INSPECTOR),
        first_seen=pair.first_seen, last_seen=pair.last_seen))
    assert scored_pair.score is not None and scored_threat.score is not None
    assert vuln_only.score is not None
    assert scored_pair.score.value > max(scored_threat.score.value, vuln_only.score.value)
    factors = [r.factor for r in scored_pair.score.reasons]
    assert "correlation" in factors and "asset_criticality" in factors and "cvss" in factors
    assert scored_pair.score.label in (SeverityLabel.HIGH, SeverityLabel.CRITICAL)
    assert "T1071.004" in scored_pair.mitre


# --- MITRE ATT&CK mapping ----------------------------------------------------------------------
@pytest.mark.parametrize(("finding_type", "expected"), [
    ("Backdoor:EC2/C&CActivity.B!DNS", ("T1071", "T1071.004")),
    ("CryptoCurrency:EC2/BitcoinTool.B!DNS", ("T1071.004", "T1496")),
    ("Exfiltration:S3/MaliciousIPCaller", ("T1530",)),
    ("Exfiltration:IAMUser/AnomalousBehavior", ("T1537",)),
    ("Discovery:S3/MaliciousIPCaller.Custom", ("T1619",)),
    ("Stealth:IAMUser/CloudTrailLoggingDisabled", ("T1562.008",)),
    ("UnauthorizedAccess:EC2/SSHBruteForce", ("T1110",)),
    ("UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS",
     ("T1078.004", "T1552.005")),
    ("Recon:EC2/Portscan", ("T1046",)),
    ("Trojan:EC2/DGADomainRequest.B", ("T1071", "T1568.002")),
    ("Policy:IAMUser/RootCredentialUsage", ("T1078.004",)),
    ("Made:Up/Type", ()),
])
def test_guardduty_type_mapping(finding_type: str, expected: tuple[str, ...]) -> None:
    assert techniques_for(EventKind.GUARDDUTY, finding_type) == expected


@pytest.mark.parametrize(("rel", "expected"), [
    ("guardduty/custodian-ec2-duty-event.json", ("T1071", "T1071.004")),
    ("guardduty/custodian-iam-duty-event.json", ("T1078.004", "T1090.003")),
    ("guardduty/awssamples-gdar-s3-pentest-parrotlinux.json", ("T1078.004",)),
    ("guardduty/panther-privesc-iamuser-adminpermissions.json", ("T1078.004", "T1098")),
    ("securityhub/custodian-securityhub-custom-action-iamkey.json", ("T1078.004",)),
    ("inspector2/awsdocs-inspector2-ec2-package-vulnerability.json", ()),
])
def test_techniques_for_real_samples(rel: str, expected: tuple[str, ...]) -> None:
    (event,) = _normalize(_load(rel))
    assert techniques_for_event(event) == expected


def test_techniques_for_inspector_and_detections() -> None:
    exposed = insp_event("x", [instance("i-0123456789abcdef1")], exploit=True)
    assert techniques_for_event(exposed) == ()
    exposed = replace(exposed, attributes={**exposed.attributes, "network_reachable": True})
    assert techniques_for_event(exposed) == ("T1190",)

    def det(rule: str, declared: tuple[str, ...], event_name: str) -> Event:
        return Event(id="d", kind=EventKind.DETECTION, type=rule, title="t", source="riposte",
                     account=ACCOUNT, region=REGION, time=T0,
                     attributes={"event_name": event_name},
                     detection=Detection(rule, "t", "d", SeverityLabel.HIGH, declared))

    assert techniques_for_event(det("x.rule", ("T1098",), "CreateUser")) == ("T1098", "T1136.003")
    assert techniques_for_event(det("ct.logging_disabled", (), "StopLogging")) == ("T1562.008",)
    assert techniques_for_event(det("ct.list_buckets", (), "ListBuckets")) == ("T1619",)


async def test_derived_pair_scores_the_exploitable_correlation() -> None:
    from tests.unit.test_correlate import derived

    scorer = ScoreStage(ScoreConfig())
    st_ = stage(MemoryStore(FakeClock()), window_seconds=7 * 86400)
    (pair,) = latest(await run(st_, [derived("insp"), derived("gd")])).values()
    scored = scorer.score_incident(pair)
    assert scored.score is not None
    factors = {r.factor: r.points for r in scored.score.reasons}
    assert factors["correlation"] == 15 and factors["correlation_exploitable"] == 10
    assert factors["exploit_available"] == 15 and factors["cvss"] == pytest.approx(18.25)
    assert scored.score.label is SeverityLabel.CRITICAL


@pytest.mark.parametrize(("details", "exposed"), [
    ({"public_ips": ["34.245.90.167"]}, True),
    ({"ip_addresses": ["10.0.2.148", "34.245.90.167"]}, True),
    ({"ip_addresses": ["10.0.2.148", "192.0.2.10"]}, False),  # private + documentation range
    ({"ip_addresses": ["not-an-ip"]}, False),
    ({}, False),
])
def test_exposure_from_resource_addresses(details: dict[str, Any], exposed: bool) -> None:
    host = ResourceRef(HOST.type, HOST.id, None, HOST.account, HOST.region, details=details)
    factors = [r.factor for r in SCORER.score(incident(gd(), resources=(host,))).reasons]
    assert ("network_exposure" in factors) is exposed


def test_securityhub_finding_with_a_guardduty_type_gets_family_points() -> None:
    sh = FindingRef("sh1", EventKind.SECURITYHUB,
                    "Unusual Behaviors/User/UnauthorizedAccess:IAMUser-ConsoleLogin",
                    Severity.of_score(50), T)
    reasons = SCORER.score(incident(sh)).reasons
    assert [(r.factor, r.points) for r in reasons] == [("securityhub_severity", 25.0),
                                                       ("finding_family", 18)]


async def test_real_reachability_sample_scores_exposure() -> None:
    (event,) = _normalize(_load("inspector2/workshop-network-reachability-ssh-eventbridge.json"))
    st_ = stage(MemoryStore(FakeClock()), inspector_standalone_min_severity="medium")
    (inc,) = latest(await run(st_, [event])).values()
    reasons = {r.factor: r for r in SCORER.score(inc).reasons}
    assert reasons["network_exposure"].points == 10
    assert "22" in reasons["network_exposure"].detail
