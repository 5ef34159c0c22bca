"""The score stage: an explainable 0-100 risk score and the incident's ATT&CK techniques.

Why explainable: a responder (and the containment policy) must be able to see why
an incident outranks another, so every point comes with a reason line naming the
factor and the fact behind it. The score is a pure function of the incident's
findings, resources and correlation flag, so every worker, every redelivery and a
replay give the same number. See :mod:`pipeline.stages.score_config` for the parts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipeline import metrics
from pipeline.config import RiposteConfig
from pipeline.context import RuntimeContext
from pipeline.mitre import techniques_for, techniques_for_findings
from pipeline.models import (
    EventKind,
    FindingRef,
    Incident,
    ResourceRef,
    RiskScore,
    ScoreReason,
    SeverityLabel,
)
from pipeline.stages.score_config import ScoreConfig

_YES = frozenset({"YES", "TRUE", "1"})
_PUBLIC_DETAIL_KEYS = ("public_ip", "public_ips", "publicIp", "public_ip_address",
                       "publicIpAddress", "public_dns_name", "publicDnsName")
# Address lists that mix private and public addresses (Inspector's ipV4Addresses).
_ADDRESS_DETAIL_KEYS = ("ip_addresses", "ipv6_addresses")
_CLOSED = frozenset({"CLOSED", "SUPPRESSED", "ARCHIVED", "RESOLVED"})


def _flag(value: Any) -> bool | None:
    """YES/NO strings, booleans and PARTIAL (a partial fix counts as a fix) → bool."""
    if value is None:
        return None
    if isinstance(value, str):
        upper = value.strip().upper()
        if upper == "PARTIAL":
            return True
        return upper in _YES
    return bool(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None  # NaN is not a score


def _any_global(addresses: Any) -> bool:
    if not isinstance(addresses, list | tuple):
        return False
    for text in addresses:
        try:
            if ipaddress.ip_address(str(text)).is_global:
                return True
        except ValueError:
            continue
    return False


def _ports(attributes: Mapping[str, Any]) -> str:
    ports = attributes.get("open_port_range") or attributes.get("port")
    if isinstance(ports, list | tuple) and ports:
        low, high = (f"{p:g}" if isinstance(p, int | float) else str(p)
                     for p in (ports[0], ports[-1]))
        ports = low if low == high else f"{low}-{high}"
    protocol = attributes.get("protocol")
    return f" (port {ports}{'/' + str(protocol) if protocol else ''})" if ports else ""


def _open(finding: FindingRef) -> bool:
    return (finding.status or "").upper() not in _CLOSED


def _family(finding_type: str) -> str:
    """``Backdoor`` of ``Backdoor:EC2/...``; also of an ASFF type ending in a GuardDuty
    type (``Unusual Behaviors/User/UnauthorizedAccess:IAMUser-ConsoleLogin``)."""
    if ":" not in finding_type:
        return ""
    return finding_type.split(":", 1)[0].rsplit("/", 1)[-1]


class ScoreStage:
    name = "score"

    def __init__(self, config: ScoreConfig) -> None:
        self.config = config
        self._incidents = {
            (label, correlated): metrics.INCIDENTS.labels(label=str(label),
                                                          correlated=str(correlated).lower())
            for label in SeverityLabel for correlated in (True, False)
        }

    def accepts(self, item: Any) -> bool:
        """Incidents; everything else passes."""
        return isinstance(item, Incident)

    async def process(self, item: Any) -> Sequence[Any]:
        if not self.accepts(item):
            return [item]
        scored = self.score_incident(item)
        assert scored.score is not None
        self._incidents[(scored.score.label, scored.correlated)].inc()
        return [scored]

    # --- public, pure ------------------------------------------------------------------------
    def score_incident(self, incident: Incident) -> Incident:
        score = self.score(incident)
        return dataclasses.replace(incident, score=score, mitre=self.mitre(incident))

    def mitre(self, incident: Incident) -> tuple[str, ...]:
        per_finding: list[Mapping[str, Any]] = []
        for f in incident.findings:
            declared = [str(t) for t in f.attributes.get("mitre") or ()]
            techniques = techniques_for(f.kind, f.type, f.attributes, rule_id=f.type,
                                        declared=declared)
            per_finding.append({**f.attributes, "mitre": techniques})
        return tuple(sorted(set(incident.mitre) | set(techniques_for_findings(per_finding))))

    def label(self, value: int) -> SeverityLabel:
        c = self.config
        if value >= c.critical_threshold:
            return SeverityLabel.CRITICAL
        if value >= c.high_threshold:
            return SeverityLabel.HIGH
        if value >= c.medium_threshold:
            return SeverityLabel.MEDIUM
        if value >= c.low_threshold:
            return SeverityLabel.LOW
        return SeverityLabel.INFORMATIONAL

    def score(self, incident: Incident) -> RiskScore:
        findings = sorted((f for f in incident.findings if _open(f)),
                          key=lambda f: (str(f.kind), f.event_id))
        reasons: list[ScoreReason] = []
        threat = self._best(self._threat(f) for f in findings
                            if f.kind is not EventKind.INSPECTOR)
        vuln = self._best(self._vulnerability(f) for f in findings
                          if f.kind is EventKind.INSPECTOR)
        reasons.extend(threat)
        reasons.extend(vuln)
        reasons.extend(self._exposure(findings, incident.resources))
        reasons.extend(self._criticality(incident.resources))
        if threat and vuln and incident.correlated:
            reasons.append(ScoreReason("correlation", self.config.correlation_bonus,
                                       "threat finding and open vulnerability on one resource"))
            exploitable = any(_flag(f.attributes.get("exploit_available"))
                              for f in findings if f.kind is EventKind.INSPECTOR)
            if exploitable:
                reasons.append(ScoreReason("correlation_exploitable",
                                           self.config.exploitable_correlation_bonus,
                                           "the attacked resource has a CVE with a known exploit"))
        total = math.floor(sum(r.points for r in reasons) + 0.5)  # half up, not half-even
        value = max(0, min(100, total))
        return RiskScore(value=value, label=self.label(value), reasons=tuple(reasons))

    # --- parts -------------------------------------------------------------------------------
    @staticmethod
    def _best(candidates: Iterable[list[ScoreReason]]) -> list[ScoreReason]:
        """The candidate worth most points (first on ties: input is in a fixed order)."""
        best: list[ScoreReason] = []
        best_points = float("-inf")
        for reasons in candidates:
            points = sum(r.points for r in reasons)
            if reasons and points > best_points:
                best, best_points = reasons, points
        return best

    def _threat(self, f: FindingRef) -> list[ScoreReason]:
        c = self.config
        if f.kind is EventKind.DETECTION:
            points = c.detection_points.get(str(f.severity.label), 0.0)
            return [ScoreReason("detection_severity", points,
                                f"{f.type}: {f.severity.label} detection")]
        source = "guardduty" if f.kind is EventKind.GUARDDUTY else str(f.kind)
        reasons = [ScoreReason(f"{source}_severity",
                               round(f.severity.score * c.threat_severity_weight, 2),
                               f"{f.type}: severity {f.severity.native!s} "
                               f"({f.severity.score}/100)")]
        family = _family(f.type)
        if family in c.family_points:
            reasons.append(ScoreReason("finding_family", c.family_points[family],
                                       f"{family} finding family"))
        return reasons

    def _vulnerability(self, f: FindingRef) -> list[ScoreReason]:
        c = self.config
        attrs = f.attributes
        label = attrs.get("vulnerability_id") or attrs.get("cve") or f.title or f.type
        reasons: list[ScoreReason] = []
        cvss = _number(attrs.get("cvss"))
        if cvss is not None:
            cvss = max(0.0, min(10.0, cvss))
            reasons.append(ScoreReason("cvss", round(cvss * c.cvss_weight, 2),
                                       f"{label}: CVSS {cvss:g}"))
        elif f.type != "NETWORK_REACHABILITY":
            # No CVSS given: fall back on the finding's own severity on the same 0-10 scale.
            reasons.append(ScoreReason("vulnerability_severity",
                                       round(f.severity.score / 10 * c.cvss_weight, 2),
                                       f"{label}: {f.severity.label} vulnerability"))
        epss = _number(attrs.get("epss"))
        if epss is not None:
            epss = max(0.0, min(1.0, epss))
            reasons.append(ScoreReason("epss", round(epss * c.epss_weight, 2),
                                       f"{label}: EPSS {epss:g}"))
        if _flag(attrs.get("exploit_available")):
            reasons.append(ScoreReason("exploit_available", c.exploit_available_points,
                                       f"{label}: a public exploit exists"))
        fix = _flag(attrs.get("fix_available"))
        if fix is False:
            reasons.append(ScoreReason("fix_available", c.no_fix_points,
                                       f"{label}: no fix available yet"))
        elif fix is True:
            reasons.append(ScoreReason("fix_available", 0.0, f"{label}: a fix is available"))
        return reasons

    def _exposure(self, findings: Sequence[FindingRef],
                  resources: Sequence[ResourceRef]) -> list[ScoreReason]:
        for f in findings:
            if f.type == "NETWORK_REACHABILITY" or _flag(f.attributes.get("network_reachable")):
                detail = "reachable from the network" + _ports(f.attributes)
                return [ScoreReason("network_exposure", self.config.network_exposure_points,
                                    detail)]
        for ref in resources:
            public = [k for k in _PUBLIC_DETAIL_KEYS if ref.details.get(k)]
            public += [k for k in _ADDRESS_DETAIL_KEYS if _any_global(ref.details.get(k))]
            if public:
                return [ScoreReason("network_exposure", self.config.network_exposure_points,
                                    f"{ref.key} has a public address ({public[0]})")]
        return []

    def _criticality(self, resources: Sequence[ResourceRef]) -> list[ScoreReason]:
        keys = {k.lower() for k in self.config.criticality_tag_keys}
        weights = {k.lower(): v for k, v in self.config.criticality_points.items()}
        best: ScoreReason | None = None
        for ref in resources:
            for tag, value in sorted(ref.tags.items()):
                if tag.lower() not in keys:
                    continue
                points = weights.get(str(value).strip().lower())
                if points is not None and (best is None or points > best.points):
                    best = ScoreReason("asset_criticality", points,
                                       f"{ref.key} tagged {tag}={value}")
        return [best] if best is not None else []


def build(config: RiposteConfig, ctx: RuntimeContext) -> ScoreStage:
    return ScoreStage(config.score)
