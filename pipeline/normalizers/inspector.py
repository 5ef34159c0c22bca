"""Amazon Inspector (v2) findings to Events: vulnerabilities, reachability, code findings.

The fields correlation and scoring need (resource ids, CVE, CVSS, EPSS, exploit
and fix availability, network reachability, status) are lifted into
``attributes``; the rest stays in ``raw``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.models import NO_SEVERITY, Event, EventKind, ResourceRef, Severity
from pipeline.normalizers.common import (
    Envelope,
    account_from_arn,
    dedupe,
    first_time,
    iso,
    label_of,
    lambda_base_arn,
    lst,
    obj,
    opt_num,
    opt_str,
    region_from_arn,
    severity_from_label,
    str_list,
    tags_from_list,
    validate,
)

SOURCE = "aws.inspector2"
DETAIL_TYPE = "Inspector2 Finding"


class InspectorFinding(BaseModel):
    """The fields of an Inspector2 finding Riposte reads; everything else is kept as extra."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    finding_arn: str = Field(min_length=1, alias="findingArn")
    type: str = Field(min_length=1)
    aws_account_id: str | None = Field(None, alias="awsAccountId")
    title: str | None = None
    description: str | None = None
    severity: str | None = None
    status: str | None = None
    inspector_score: float | None = Field(None, alias="inspectorScore", ge=0, le=10,
                                          allow_inf_nan=False)
    first_observed_at: Any = Field(None, alias="firstObservedAt")
    last_observed_at: Any = Field(None, alias="lastObservedAt")
    updated_at: Any = Field(None, alias="updatedAt")
    resources: list[dict[str, Any]] | None = None
    # Scoring details: read leniently (a wrong shape loses a fact, not the finding).
    package_vulnerability_details: Any = Field(
        None, alias="packageVulnerabilityDetails")
    network_reachability_details: Any = Field(
        None, alias="networkReachabilityDetails")
    exploit_available: Any = Field(None, alias="exploitAvailable")
    fix_available: Any = Field(None, alias="fixAvailable")
    epss: Any = None


def severity_of(label: str | None, score: float | None) -> Severity:
    """Inspector's label is authoritative; its 0-10 score (x10) places it on the scale.

    ``UNTRIAGED`` (no score yet) counts as informational until Inspector triages it.
    Cached for the few real labels; an odd long label is computed, never cached.
    """
    if label is not None and len(label) > 16:
        return _severity(label, score)
    return _severity_cached(label, score)


def _severity(label: str | None, score: float | None) -> Severity:
    common = label_of(label)
    scaled = score * 10 if score is not None else None
    if common is None:
        if scaled is None:
            return NO_SEVERITY if label is None else Severity(label, 0, NO_SEVERITY.label)
        return Severity.of_score(scaled, native=label)
    return severity_from_label(common, scaled, label)


_severity_cached = lru_cache(maxsize=1024)(_severity)


def normalize(doc: Mapping[str, Any], env: Envelope, raw: Mapping[str, Any]) -> Event:
    """One Inspector2 finding as an Event; ``findingArn`` is its id across updates."""
    finding = validate(InspectorFinding, doc, "Inspector2 finding")
    account = (finding.aws_account_id or env.account
               or account_from_arn(finding.finding_arn))
    listed = finding.resources or []
    first_res = listed[0] if listed else {}
    region = (opt_str(first_res.get("region")) or env.region
              or region_from_arn(finding.finding_arn))
    resources = dedupe([r for r in (_resource(obj(res), account, region)
                                    for res in listed) if r is not None])
    created = first_time(finding.first_observed_at)
    time = (first_time(finding.updated_at) or env.time
            or first_time(finding.last_observed_at) or created or env.fallback_time())
    return Event(
        id=finding.finding_arn,
        kind=EventKind.INSPECTOR,
        type=finding.type,
        title=finding.title or finding.type,
        source=SOURCE,
        account=account,
        region=region,
        time=time,
        severity=severity_of(finding.severity, finding.inspector_score),
        resources=resources,
        created_at=created,
        detail_type=env.detail_type or DETAIL_TYPE,
        status=finding.status,
        attributes=_attributes(finding),
        origin=env.origin(),
        received_at=env.record.received_at,
        raw=raw,
    )


def _attributes(finding: InspectorFinding) -> dict[str, Any]:
    vuln = obj(finding.package_vulnerability_details)
    scores = [s for s in (opt_num(obj(c).get("baseScore")) for c in lst(vuln.get("cvss")))
              if s is not None]
    score_details = obj((finding.model_extra or {}).get("inspectorScoreDetails"))
    adjusted = opt_num(obj(score_details.get("adjustedCvss")).get("score"))
    packages = [p for p in (opt_str(obj(pkg).get("name"))
                            for pkg in lst(vuln.get("vulnerablePackages"))) if p]
    fixed = [v for v in (opt_str(obj(pkg).get("fixedInVersion"))
                         for pkg in lst(vuln.get("vulnerablePackages"))) if v]
    reach = obj(finding.network_reachability_details)
    ports = obj(reach.get("openPortRange"))
    exploit = (opt_str(finding.exploit_available) or "").upper()
    attrs: dict[str, Any] = {
        "finding_arn": finding.finding_arn,
        "vulnerability_id": opt_str(vuln.get("vulnerabilityId")),
        "related_vulnerabilities": str_list(vuln.get("relatedVulnerabilities")) or None,
        "vendor_severity": opt_str(vuln.get("vendorSeverity")),
        "cvss": max(scores) if scores else adjusted,
        "epss": opt_num(obj(finding.epss).get("score")),
        "exploit_available": exploit == "YES" if exploit in ("YES", "NO") else None,
        "fix_available": (opt_str(finding.fix_available) or "").upper() or None,
        "fixed_in_versions": fixed or None,
        "packages": packages or None,
        "inspector_score": finding.inspector_score,
        "network_reachable": finding.type == "NETWORK_REACHABILITY",
        "open_port_range": ([opt_num(ports.get("begin")), opt_num(ports.get("end"))]
                            if ports else None),
        "protocol": opt_str(reach.get("protocol")),
        "first_observed_at": iso(first_time(finding.first_observed_at)),
        "last_observed_at": iso(first_time(finding.last_observed_at)),
        "description": finding.description,
    }
    return {k: v for k, v in attrs.items() if v is not None}


def _resource(res: Mapping[str, Any], account: str | None,
              region: str | None) -> ResourceRef | None:
    rid = opt_str(res.get("id"))
    rtype = res.get("type")
    if rid is None:
        return None
    reg = opt_str(res.get("region")) or region
    partition = opt_str(res.get("partition")) or "aws"
    tags = tags_from_list(res.get("tags"))
    details = obj(res.get("details"))
    if rtype == "AWS_EC2_INSTANCE":
        ec2 = obj(details.get("awsEc2Instance"))
        info = {
            "vpc_id": opt_str(ec2.get("vpcId")),
            "subnet_id": opt_str(ec2.get("subnetId")),
            "image_id": opt_str(ec2.get("imageId")),
            "instance_type": opt_str(ec2.get("type")),
            "platform": opt_str(ec2.get("platform")),
            "key_name": opt_str(ec2.get("keyName")),
            "ip_addresses": str_list(ec2.get("ipV4Addresses")),
            "ipv6_addresses": str_list(ec2.get("ipV6Addresses")),
            "instance_profile_arn": opt_str(ec2.get("iamInstanceProfileArn")),
        }
        return ResourceRef(
            "ec2.instance", rid,
            f"arn:{partition}:ec2:{reg}:{account}:instance/{rid}" if reg and account else None,
            account, reg, tags, {k: v for k, v in info.items() if v is not None})
    if rtype == "AWS_ECR_CONTAINER_IMAGE":
        ecr = obj(details.get("awsEcrContainerImage"))
        digest = opt_str(ecr.get("imageHash")) or (rid.rsplit("/", 1)[-1]
                                                     if "/sha256:" in rid else rid)
        info = {
            "repository": opt_str(ecr.get("repositoryName")),
            "registry": opt_str(ecr.get("registry")),
            "image_tags": str_list(ecr.get("imageTags")),
            "platform": opt_str(ecr.get("platform")),
            "architecture": opt_str(ecr.get("architecture")),
        }
        return ResourceRef("ecr.image", digest, rid if rid.startswith("arn:") else None,
                           account, reg, tags, {k: v for k, v in info.items() if v is not None})
    if rtype == "AWS_LAMBDA_FUNCTION":
        fn = obj(details.get("awsLambdaFunction"))
        base = lambda_base_arn(rid)
        info = {
            "function_name": opt_str(fn.get("functionName")),
            "runtime": opt_str(fn.get("runtime")),
            "role": opt_str(fn.get("executionRoleArn")),
            "version": opt_str(fn.get("version")),
        }
        return ResourceRef("lambda.function", base, base if base.startswith("arn:") else None,
                           account, reg, tags, {k: v for k, v in info.items() if v is not None})
    if rtype == "AWS_ACCOUNT":
        return ResourceRef("aws.account", rid, None, rid, reg, tags)
    return ResourceRef("other", rid, rid if rid.startswith("arn:") else None, account, reg, tags,
                       {"native_type": rtype} if isinstance(rtype, str) else {})
