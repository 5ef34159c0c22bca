"""Riposte items as AWS Security Finding Format (ASFF) findings, and ASFF validation.

Security Hub upserts findings by ``(ProductArn, Id)``, so the ``Id`` is derived
from the item alone (``riposte/{incident.id}``): every revision of an incident,
from any worker, replaces the same finding instead of adding a new one. An update
is only taken when its ``UpdatedAt`` is newer, so ``UpdatedAt`` is
``max(last_seen, first_seen)`` plus one millisecond per revision: strictly
increasing over revisions even when a revision adds no new finding (a containment
action, a phase change), identical for a redelivered revision, and computed
without any state.

The real service rejects findings that break the ASFF rules; moto accepts almost
anything. :func:`validate` checks the rules the sink depends on (required fields,
sizes, formats) so an invalid finding is rejected here with a reason instead of
being "delivered" to a stand-in and failing in production.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.models import (
    ActionRecord,
    ActionStatus,
    Event,
    EventKind,
    Incident,
    IncidentPhase,
    Item,
    ResourceRef,
    SeverityLabel,
)

SCHEMA_VERSION = "2018-10-08"
PROVIDER_NAME = "Riposte"

# Limits from the ASFF reference and the BatchImportFindings guide.
MAX_TITLE = 256
MAX_DESCRIPTION = 1024
MAX_ID = 512
MAX_RECOMMENDATION = 512
MAX_RESOURCES = 32
MAX_TYPES = 50
MAX_PRODUCT_FIELDS = 50
MAX_PRODUCT_FIELD_KEY = 128
MAX_PRODUCT_FIELD_VALUE = 2048
MAX_TAGS = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
MAX_FINDING_BYTES = 240 * 1024
MAX_BATCH_FINDINGS = 100
MAX_BATCH_BYTES = 6 * 1024 * 1024

NAMESPACES = frozenset({
    "Software and Configuration Checks", "TTPs", "Effects", "Unusual Behaviors",
    "Sensitive Data Identifications",
})
LABELS = ("INFORMATIONAL", "LOW", "MEDIUM", "HIGH", "CRITICAL")
# Normalized value Security Hub assumes for a label given alone (lower bound of its range).
_LABEL_NORMALIZED = {"INFORMATIONAL": 0, "LOW": 1, "MEDIUM": 40, "HIGH": 70, "CRITICAL": 90}
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_ACCOUNT = re.compile(r"^\d{12}$")
_PRODUCT_ARN = re.compile(r"^arn:aws[a-z-]*:securityhub:[a-z0-9-]+:\d{0,12}:product/.+/.+$")
PARTITIONS = frozenset({"aws", "aws-cn", "aws-us-gov"})

# Riposte resource type -> (ASFF type, ARN template); None = the id is used as is.
_RESOURCE_TYPES: dict[str, tuple[str, str | None]] = {
    "ec2.instance": ("AwsEc2Instance", "arn:{p}:ec2:{r}:{a}:instance/{id}"),
    "s3.bucket": ("AwsS3Bucket", "arn:{p}:s3:::{id}"),
    "iam.access_key": ("AwsIamAccessKey", None),
    "iam.user": ("AwsIamUser", "arn:{p}:iam::{a}:user/{id}"),
    "iam.role": ("AwsIamRole", "arn:{p}:iam::{a}:role/{id}"),
    "ecr.image": ("AwsEcrContainerImage", None),
    "lambda.function": ("AwsLambdaFunction", "arn:{p}:lambda:{r}:{a}:function:{id}"),
    "eks.cluster": ("AwsEksCluster", "arn:{p}:eks:{r}:{a}:cluster/{id}"),
    "ecs.task": ("AwsEcsTask", None),
}

# MITRE ATT&CK (Enterprise, cloud matrix) technique -> ASFF "namespace/category".
_TECHNIQUE_TYPES: dict[str, str] = {
    "T1078": "TTPs/Initial Access", "T1190": "TTPs/Initial Access",
    "T1133": "TTPs/Initial Access", "T1199": "TTPs/Initial Access",
    "T1566": "TTPs/Initial Access",
    "T1059": "TTPs/Execution", "T1204": "TTPs/Execution", "T1648": "TTPs/Execution",
    "T1651": "TTPs/Execution", "T1609": "TTPs/Execution", "T1610": "TTPs/Execution",
    "T1098": "TTPs/Persistence", "T1136": "TTPs/Persistence", "T1525": "TTPs/Persistence",
    "T1546": "TTPs/Persistence", "T1053": "TTPs/Persistence",
    "T1548": "TTPs/Privilege Escalation", "T1484": "TTPs/Privilege Escalation",
    "T1611": "TTPs/Privilege Escalation", "T1068": "TTPs/Privilege Escalation",
    "T1562": "TTPs/Defense Evasion", "T1535": "TTPs/Defense Evasion",
    "T1578": "TTPs/Defense Evasion", "T1070": "TTPs/Defense Evasion",
    "T1550": "TTPs/Defense Evasion", "T1108": "TTPs/Defense Evasion",
    "T1110": "TTPs/Credential Access", "T1552": "TTPs/Credential Access",
    "T1528": "TTPs/Credential Access", "T1555": "TTPs/Credential Access",
    "T1606": "TTPs/Credential Access", "T1621": "TTPs/Credential Access",
    "T1580": "TTPs/Discovery", "T1526": "TTPs/Discovery", "T1538": "TTPs/Discovery",
    "T1087": "TTPs/Discovery", "T1069": "TTPs/Discovery", "T1046": "TTPs/Discovery",
    "T1619": "TTPs/Discovery", "T1595": "TTPs/Discovery", "T1082": "TTPs/Discovery",
    "T1021": "TTPs/Lateral Movement", "T1570": "TTPs/Lateral Movement",
    "T1530": "TTPs/Collection", "T1213": "TTPs/Collection", "T1119": "TTPs/Collection",
    "T1071": "TTPs/Command and Control", "T1568": "TTPs/Command and Control",
    "T1090": "TTPs/Command and Control", "T1105": "TTPs/Command and Control",
    "T1572": "TTPs/Command and Control", "T1573": "TTPs/Command and Control",
    "T1048": "Effects/Data Exfiltration", "T1537": "Effects/Data Exfiltration",
    "T1567": "Effects/Data Exfiltration", "T1041": "Effects/Data Exfiltration",
    "T1485": "Effects/Data Destruction", "T1486": "Effects/Data Destruction",
    "T1490": "Effects/Data Destruction", "T1565": "Effects/Data Destruction",
    "T1496": "Effects/Resource Consumption", "T1499": "Effects/Denial of Service",
    "T1498": "Effects/Denial of Service", "T1531": "Effects/Denial of Service",
}

# GuardDuty "ThreatPurpose:ResourceType/ThreatFamily" -> ASFF "namespace/category".
_PURPOSE_TYPES: dict[str, str] = {
    "Backdoor": "TTPs/Command and Control", "Trojan": "TTPs/Command and Control",
    "CryptoCurrency": "Effects/Resource Consumption",
    "UnauthorizedAccess": "TTPs/Initial Access", "InitialAccess": "TTPs/Initial Access",
    "Recon": "TTPs/Discovery", "Discovery": "TTPs/Discovery", "PenTest": "TTPs/Discovery",
    "Stealth": "TTPs/Defense Evasion", "DefenseEvasion": "TTPs/Defense Evasion",
    "Persistence": "TTPs/Persistence", "PrivilegeEscalation": "TTPs/Privilege Escalation",
    "CredentialAccess": "TTPs/Credential Access", "Execution": "TTPs/Execution",
    "Exfiltration": "Effects/Data Exfiltration", "Impact": "Effects/Resource Consumption",
    "Policy": "Software and Configuration Checks/AWS Security Best Practices",
}

# Resource type -> the "Unusual Behaviors" category that fits it, when nothing better is known.
_BEHAVIOR_CATEGORY = {
    "ec2": "VM", "iam": "User", "lambda": "Serverless", "ecr": "Container",
    "eks": "Container", "ecs": "Container", "s3": "Data", "aws": "User",
}


class AsffError(ValueError):
    """An item that cannot become a finding; ``reason`` is a short metric label."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AsffContext:
    """Where findings are imported: the calling account, the hub's region, the product."""

    account_id: str
    region: str
    product_arn: str = ""
    recommendation_url: str | None = None

    @property
    def partition(self) -> str:
        return partition_for(self.region)

    @property
    def product(self) -> str:
        return self.product_arn or default_product_arn(self.account_id, self.region)


def partition_for(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def default_product_arn(account_id: str, region: str) -> str:
    """The product every account has for its own custom integration."""
    return (f"arn:{partition_for(region)}:securityhub:{region}:{account_id}:"
            f"product/{account_id}/default")


# --- small helpers ----------------------------------------------------------------------------
def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, ending in an ellipsis when cut (never mid code point)."""
    text = text.strip()
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)].rstrip() + "…"


def iso(when: datetime) -> str:
    """ASFF timestamp: UTC, milliseconds, ``Z`` (naive datetimes are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    elif when.utcoffset():
        when = when.astimezone(UTC)
    # isoformat rather than strftime: twice as fast, and years before 1000 keep four
    # digits (glibc's %Y does not pad them). "YYYY-MM-DDTHH:MM:SS.mmm" is 23 characters.
    return when.isoformat(timespec="milliseconds")[:23] + "Z"


def _label(label: SeverityLabel) -> str:
    return label.value.upper()


def severity_fields(label: SeverityLabel, score: int | None) -> dict[str, Any]:
    """``Label`` and ``Normalized`` that agree (the label is derived from the score if any)."""
    if score is not None:
        normalized = max(0, min(100, int(score)))
        name = _label(SeverityLabel.from_score(normalized))
        return {"Label": name, "Normalized": normalized, "Original": str(normalized)}
    name = _label(label)
    return {"Label": name, "Normalized": _LABEL_NORMALIZED[name], "Original": label.value}


def _classifier(text: str) -> str:
    # A classifier may not contain "/" (it would read as another level): GuardDuty's own
    # ASFF export turns "Backdoor:EC2/C&CActivity.B" into "Backdoor:EC2-C&CActivity.B".
    return clip(text.replace("/", "-"), 64)


def _resource_family(resources: Sequence[ResourceRef]) -> str:
    if not resources:
        return "Application"
    return _BEHAVIOR_CATEGORY.get(resources[0].type.split(".", 1)[0], "Application")


def finding_types(*, mitre: Iterable[str], native_types: Iterable[tuple[EventKind, str]],
                  resources: Sequence[ResourceRef], fallback: str) -> list[str]:
    """ASFF ``Types`` from MITRE techniques, then source finding families; never empty."""
    types: list[str] = []

    def add(value: str) -> None:
        if value not in types and len(types) < MAX_TYPES:
            types.append(value)

    for technique in mitre:
        base = technique.split(".", 1)[0].upper()
        category = _TECHNIQUE_TYPES.get(base)
        if category:
            add(f"{category}/{_classifier(technique.upper())}")
    for kind, native in native_types:
        if kind is EventKind.INSPECTOR:
            add("Software and Configuration Checks/Vulnerabilities/CVE")
            continue
        purpose = native.split(":", 1)[0] if ":" in native else ""
        category = _PURPOSE_TYPES.get(purpose)
        if category:
            add(f"{category}/{_classifier(native)}")
        elif kind is EventKind.SECURITYHUB and native.split("/", 1)[0] in NAMESPACES:
            add(native)
    if not types:
        add(f"Unusual Behaviors/{_resource_family(resources)}/{_classifier(fallback)}")
    return types


def resource_entry(ref: ResourceRef, ctx: AsffContext, *, account: str | None,
                   region: str | None) -> dict[str, Any]:
    """One ASFF resource; the Id is the resource ARN where ASFF expects one."""
    asff_type, template = _RESOURCE_TYPES.get(ref.type, ("Other", None))
    res_region = ref.region or region or ctx.region
    res_account = ref.account or account or ctx.account_id
    if ref.arn:
        res_id = ref.arn
    elif template is not None and ref.id:
        res_id = template.format(p=ctx.partition, r=res_region, a=res_account, id=ref.id)
    else:
        res_id = ref.id
    entry: dict[str, Any] = {
        "Type": asff_type,
        "Id": res_id,
        "Partition": partition_for(res_region),
        "Region": res_region,
    }
    tags = {
        clip(k, MAX_TAG_KEY): clip(str(v), MAX_TAG_VALUE)
        for k, v in list(ref.tags.items())[:MAX_TAGS]
        if k and not k.lower().startswith("aws:") and str(v).strip()
    }
    if tags:
        entry["Tags"] = tags
    if asff_type == "Other":
        entry["Details"] = {"Other": {"riposte/type": clip(ref.type or "other", 1024)}}
    return entry


def _resources(refs: Sequence[ResourceRef], ctx: AsffContext, account: str | None,
               region: str | None) -> list[dict[str, Any]]:
    if not refs:
        acct = account or ctx.account_id
        return [{"Type": "Other", "Id": f"AWS::::Account:{acct}",
                 "Partition": partition_for(region or ctx.region),
                 "Region": region or ctx.region}]
    return [resource_entry(r, ctx, account=account, region=region)
            for r in refs[:MAX_RESOURCES]]


def _product_fields(fields: Mapping[str, str]) -> dict[str, str]:
    out = {"ProviderName": PROVIDER_NAME}
    for key, value in fields.items():
        if value and len(out) < MAX_PRODUCT_FIELDS:
            out[clip(key, MAX_PRODUCT_FIELD_KEY)] = clip(value, MAX_PRODUCT_FIELD_VALUE)
    return out


def _action_line(action: ActionRecord) -> str:
    target = action.resource.id or action.resource.key
    return f"{action.kind} on {target} ({action.status.value}, {action.mode.value})"


def remediation_text(actions: Sequence[ActionRecord], resource: str) -> str:
    """What was done or planned, what waits for a person, and how to undo it."""
    if not actions:
        return clip(f"No containment action taken by Riposte. Review the findings on "
                    f"{resource} and contain it if they are confirmed.", MAX_RECOMMENDATION)
    done = [a for a in actions if a.status in (ActionStatus.APPLIED, ActionStatus.VERIFIED)]
    waiting = [a for a in actions if a.status is ActionStatus.AWAITING_APPROVAL]
    planned = [a for a in actions if a.status in (ActionStatus.PLANNED, ActionStatus.RECORDED)]
    other = [a for a in actions if a not in done and a not in waiting and a not in planned]
    parts: list[str] = []
    if done:
        parts.append("Done: " + "; ".join(_action_line(a) for a in done) + ".")
    if waiting:
        parts.append("Awaiting approval (riposte approve PLAN_ID): "
                     + "; ".join(f"{_action_line(a)} plan {a.id}" for a in waiting) + ".")
    if planned:
        parts.append("Planned, not applied: " + "; ".join(_action_line(a) for a in planned)
                     + ".")
    if other:
        parts.append("Other: " + "; ".join(
            _action_line(a) + (f" - {a.reason}" if a.reason else "") for a in other) + ".")
    if done:
        hints = [a.rollback_hint or f"riposte rollback {a.id}" for a in done]
        parts.append("Roll back: " + "; ".join(hints) + ".")
    return clip(" ".join(parts), MAX_RECOMMENDATION)


def _remediation(text: str, ctx: AsffContext) -> dict[str, Any]:
    recommendation: dict[str, Any] = {"Text": text}
    if ctx.recommendation_url:
        recommendation["Url"] = ctx.recommendation_url
    return {"Recommendation": recommendation}


def _base(*, finding_id: str, generator: str, ctx: AsffContext, title: str,
          description: str, created: datetime, updated: datetime, first: datetime,
          last: datetime, severity: dict[str, Any], types: list[str],
          resources: list[dict[str, Any]], remediation: str,
          product_fields: Mapping[str, str], archived: bool,
          related: Sequence[str] = ()) -> dict[str, Any]:
    created_s, updated_s = iso(min(created, updated)), iso(updated)
    provider: dict[str, Any] = {
        "Severity": {"Label": severity["Label"], "Original": severity["Original"]},
        "Types": types,
    }
    if related:
        provider["RelatedFindings"] = [{"ProductArn": ctx.product, "Id": r} for r in related]
    return {
        "SchemaVersion": SCHEMA_VERSION,
        "Id": finding_id,
        "ProductArn": ctx.product,
        "GeneratorId": generator,
        "AwsAccountId": ctx.account_id,
        "Types": types,
        "CreatedAt": created_s,
        "UpdatedAt": updated_s,
        "FirstObservedAt": iso(first),
        "LastObservedAt": iso(max(first, last)),
        "Severity": severity,
        "Title": clip(title, MAX_TITLE) or "Riposte finding",
        "Description": clip(description, MAX_DESCRIPTION) or "Riposte finding",
        "Resources": resources,
        "Remediation": _remediation(remediation, ctx),
        "ProductFields": _product_fields(product_fields),
        "FindingProviderFields": provider,
        "Workflow": {"Status": "NEW"},
        "RecordState": "ARCHIVED" if archived else "ACTIVE",
    }


# --- the three item kinds ---------------------------------------------------------------------
def finding_id(item: Item) -> str:
    """The finding Id: one per incident, detection or action, whatever its revision."""
    if isinstance(item, Incident):
        return f"riposte/{item.id}"
    if isinstance(item, ActionRecord):
        return f"riposte/action/{item.id}"
    return f"riposte/detection/{item.id}"


def incident_updated_at(incident: Incident) -> datetime:
    """Strictly newer for every revision, identical for the same revision (see module doc)."""
    return max(incident.last_seen, incident.first_seen) + timedelta(
        milliseconds=max(1, incident.revision))


def incident_finding(incident: Incident, ctx: AsffContext) -> dict[str, Any]:
    score = incident.score
    severity = severity_fields(incident.severity_label, score.value if score else None)
    primary = incident.resources[0].key if incident.resources else incident.key
    types = finding_types(
        mitre=incident.mitre, native_types=[(f.kind, f.type) for f in incident.findings],
        resources=incident.resources, fallback="Riposte Incident")
    finding_list = ", ".join(sorted({f.type for f in incident.findings})) or "none"
    reasons = [f"{r.factor} {r.points:+g}: {r.detail}" for r in (score.reasons if score else ())]
    description = (
        f"{'Correlated incident' if incident.correlated else 'Incident'} on {primary} "
        f"from {len(incident.findings)} finding(s): {finding_list}."
        + (f" Risk score {score.value} ({score.label.value}): {'; '.join(reasons)}."
           if score else "")
        + (f" Containment: {len(incident.actions)} action(s), phase {incident.phase.value}."
           if incident.actions else "")
        + (f" Observe only: {incident.observe_reason or 'untrusted or sample'}."
           if incident.observe_only else "")
    )
    title = ("[sample] " if incident.sample else "") + (incident.title or f"Incident on {primary}")
    fields = {
        "riposte/incident_id": incident.id,
        "riposte/revision": str(incident.revision),
        "riposte/key": incident.key,
        "riposte/account": incident.account or "",
        "riposte/phase": incident.phase.value,
        "riposte/correlated": str(incident.correlated).lower(),
        "riposte/mitre": ",".join(incident.mitre),
        "riposte/score": str(score.value) if score else "",
        "riposte/score_reasons": " | ".join(reasons),
        "riposte/finding_types": finding_list if incident.findings else "",
        "riposte/finding_ids": ",".join(f.event_id for f in incident.findings),
        "riposte/actions": "; ".join(_action_line(a) for a in incident.actions),
        "riposte/sample": "true" if incident.sample else "",
        "riposte/observe_only": "true" if incident.observe_only else "",
    }
    return _base(
        finding_id=finding_id(incident), generator="riposte/correlate", ctx=ctx,
        title=title, description=description, created=incident.first_seen,
        updated=incident_updated_at(incident), first=incident.first_seen,
        last=incident.last_seen, severity=severity, types=types,
        resources=_resources(incident.resources, ctx, incident.account, incident.region),
        remediation=remediation_text(incident.actions, primary), product_fields=fields,
        archived=incident.phase is IncidentPhase.RECOVERED)


def detection_finding(event: Event, ctx: AsffContext) -> dict[str, Any]:
    detection = event.detection
    if detection is None:
        raise AsffError(f"event {event.id} is not a detection", reason="not_a_finding")
    mitre = detection.mitre or event.mitre
    severity = severity_fields(
        detection.severity,
        event.severity.score if event.severity.label is detection.severity else None)
    types = finding_types(mitre=mitre, native_types=[], resources=event.resources,
                          fallback=detection.rule_id)
    primary = event.primary_resource.key if event.primary_resource else (event.account or "")
    fields = {
        "riposte/rule_id": detection.rule_id,
        "riposte/mitre": ",".join(mitre),
        "riposte/trigger_event_id": detection.trigger_event_id,
        "riposte/event_type": event.type,
        "riposte/account": event.account or "",
        "riposte/sample": "true" if event.sample else "",
    }
    created = event.created_at or event.time
    return _base(
        finding_id=finding_id(event), generator=f"riposte/detection/{detection.rule_id}",
        ctx=ctx, title=detection.title or event.title,
        description=detection.description or detection.title or event.title,
        created=created, updated=event.time, first=created, last=event.time,
        severity=severity, types=types,
        resources=_resources(event.resources, ctx, event.account, event.region),
        remediation=remediation_text((), primary or "the resource"), product_fields=fields,
        archived=False)


def action_finding(action: ActionRecord, ctx: AsffContext) -> dict[str, Any]:
    when = action.applied_at or action.planned_at
    if when is None:
        raise AsffError(f"action {action.id} has no time", reason="no_timestamp")
    title = f"Riposte containment: {action.kind} on {action.resource.id} ({action.status.value})"
    description = (f"Containment action {action.kind} for incident {action.incident_id} in "
                   f"{action.mode.value} mode: {action.status.value}."
                   + (f" {action.reason}" if action.reason else "")
                   + (f" {len(action.calls)} API call(s): "
                      + ", ".join(f"{c.service}:{c.operation}" for c in action.calls)
                      if action.calls else ""))
    fields = {
        "riposte/action_id": action.id,
        "riposte/incident_id": action.incident_id,
        "riposte/action_kind": action.kind,
        "riposte/mode": action.mode.value,
        "riposte/status": action.status.value,
    }
    return _base(
        finding_id=finding_id(action), generator=f"riposte/contain/{action.kind}", ctx=ctx,
        title=title, description=description, created=action.planned_at or when,
        updated=when, first=action.planned_at or when, last=when,
        severity=severity_fields(SeverityLabel.INFORMATIONAL, None),
        types=[f"Software and Configuration Checks/Riposte Containment/"
               f"{_classifier(action.kind)}"],
        resources=_resources((action.resource,), ctx, action.resource.account,
                             action.resource.region),
        remediation=remediation_text((action,), action.resource.key), product_fields=fields,
        archived=action.status is ActionStatus.ROLLED_BACK,
        related=(f"riposte/{action.incident_id}",))


def to_finding(item: Item, ctx: AsffContext) -> dict[str, Any]:
    """The ASFF finding for an item; :class:`AsffError` for items that are not findings."""
    if isinstance(item, Incident):
        return incident_finding(item, ctx)
    if isinstance(item, ActionRecord):
        return action_finding(item, ctx)
    if item.item_kind == "detection" and item.detection is not None:
        return detection_finding(item, ctx)
    raise AsffError(
        f"{item.item_kind} {item.id} is a raw event, not a finding; route only detections, "
        "incidents and actions to Security Hub", reason="not_a_finding")


# --- validation -------------------------------------------------------------------------------
def _nonempty_str(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _check_time(finding: Mapping[str, Any], key: str, problems: list[str]) -> datetime | None:
    value = finding.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not _ISO.match(value):
        problems.append(f"{key} is not an ISO 8601 timestamp: {value!r}")
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def validate(finding: Mapping[str, Any]) -> list[str]:
    """The ASFF rules this sink relies on; an empty list means the finding is valid."""
    problems: list[str] = []
    for key in ("SchemaVersion", "Id", "ProductArn", "GeneratorId", "AwsAccountId",
                "CreatedAt", "UpdatedAt", "Title", "Description"):
        if not _nonempty_str(finding.get(key)):
            problems.append(f"{key} is required")
    if finding.get("SchemaVersion") not in (None, SCHEMA_VERSION):
        problems.append(f"SchemaVersion must be {SCHEMA_VERSION}")
    for key, limit in (("Id", MAX_ID), ("GeneratorId", MAX_ID), ("Title", MAX_TITLE),
                       ("Description", MAX_DESCRIPTION)):
        value = finding.get(key)
        if isinstance(value, str) and len(value) > limit:
            problems.append(f"{key} is longer than {limit} characters")
    account = finding.get("AwsAccountId")
    if isinstance(account, str) and account and not _ACCOUNT.match(account):
        problems.append(f"AwsAccountId must be 12 digits: {account!r}")
    product = finding.get("ProductArn")
    if isinstance(product, str) and product and not _PRODUCT_ARN.match(product):
        problems.append(f"ProductArn is not a Security Hub product ARN: {product!r}")

    created = _check_time(finding, "CreatedAt", problems)
    updated = _check_time(finding, "UpdatedAt", problems)
    first = _check_time(finding, "FirstObservedAt", problems)
    last = _check_time(finding, "LastObservedAt", problems)
    if created and updated and updated < created:
        problems.append("UpdatedAt is earlier than CreatedAt")
    if first and last and last < first:
        problems.append("LastObservedAt is earlier than FirstObservedAt")

    _validate_types(finding.get("Types"), "Types", problems, required=True)
    _validate_severity(finding.get("Severity"), problems)
    _validate_resources(finding.get("Resources"), problems)
    _validate_product_fields(finding.get("ProductFields"), problems)

    remediation = finding.get("Remediation")
    if remediation is not None:
        text = (remediation.get("Recommendation") or {}).get("Text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_RECOMMENDATION:
            problems.append(f"Remediation.Recommendation.Text must be 1-{MAX_RECOMMENDATION} "
                            "characters")
    provider = finding.get("FindingProviderFields")
    if provider is not None:
        _validate_types(provider.get("Types"), "FindingProviderFields.Types", problems,
                        required=False)
        label = (provider.get("Severity") or {}).get("Label")
        if label is not None and label not in LABELS:
            problems.append(f"FindingProviderFields.Severity.Label invalid: {label!r}")
    if finding.get("RecordState") not in (None, "ACTIVE", "ARCHIVED"):
        problems.append("RecordState must be ACTIVE or ARCHIVED")
    workflow = finding.get("Workflow")
    if workflow is not None and workflow.get("Status") not in (
            "NEW", "NOTIFIED", "RESOLVED", "SUPPRESSED"):
        problems.append("Workflow.Status invalid")
    return problems


def _validate_types(types: object, where: str, problems: list[str], *, required: bool) -> None:
    if types is None and not required:
        return
    if not isinstance(types, list) or not types:
        problems.append(f"{where} must be a non-empty list")
        return
    if len(types) > MAX_TYPES:
        problems.append(f"{where} has more than {MAX_TYPES} entries")
    for value in types:
        parts = value.split("/") if isinstance(value, str) else []
        if not 1 <= len(parts) <= 3 or any(not p.strip() for p in parts):
            problems.append(f"{where} entry is not namespace/category/classifier: {value!r}")
        elif parts[0] not in NAMESPACES:
            problems.append(f"{where} namespace {parts[0]!r} is not an ASFF namespace")


def _validate_severity(severity: object, problems: list[str]) -> None:
    if not isinstance(severity, Mapping):
        problems.append("Severity is required")
        return
    label = severity.get("Label")
    normalized = severity.get("Normalized")
    if label is None and normalized is None:
        problems.append("Severity needs Label or Normalized")
    if label is not None and label not in LABELS:
        problems.append(f"Severity.Label invalid: {label!r}")
    if normalized is not None and (
            not isinstance(normalized, int) or isinstance(normalized, bool)
            or not 0 <= normalized <= 100):
        problems.append(f"Severity.Normalized must be an integer 0-100: {normalized!r}")
    if label in LABELS and isinstance(normalized, int) and 0 <= normalized <= 100:
        expected = _label(SeverityLabel.from_score(normalized))
        if expected != label:
            problems.append(f"Severity.Label {label} disagrees with Normalized {normalized}")


def _validate_resources(resources: object, problems: list[str]) -> None:
    if not isinstance(resources, list) or not resources:
        problems.append("Resources must be a non-empty list")
        return
    if len(resources) > MAX_RESOURCES:
        problems.append(f"Resources has more than {MAX_RESOURCES} entries")
    for i, res in enumerate(resources):
        if not isinstance(res, Mapping):
            problems.append(f"Resources[{i}] is not an object")
            continue
        for key in ("Type", "Id"):
            if not _nonempty_str(res.get(key)):
                problems.append(f"Resources[{i}].{key} is required")
        if isinstance(res.get("Id"), str) and len(res["Id"]) > MAX_ID:
            problems.append(f"Resources[{i}].Id is longer than {MAX_ID} characters")
        if res.get("Partition") not in (None, *PARTITIONS):
            problems.append(f"Resources[{i}].Partition invalid: {res.get('Partition')!r}")
        tags = res.get("Tags") or {}
        if len(tags) > MAX_TAGS or any(
                len(k) > MAX_TAG_KEY or len(str(v)) > MAX_TAG_VALUE for k, v in tags.items()):
            problems.append(f"Resources[{i}].Tags exceed ASFF limits")


def _validate_product_fields(fields: object, problems: list[str]) -> None:
    if fields is None:
        return
    if not isinstance(fields, Mapping):
        problems.append("ProductFields must be a map")
        return
    if len(fields) > MAX_PRODUCT_FIELDS:
        problems.append(f"ProductFields has more than {MAX_PRODUCT_FIELDS} entries")
    for key, value in fields.items():
        if not isinstance(value, str) or not key or len(key) > MAX_PRODUCT_FIELD_KEY \
                or len(value) > MAX_PRODUCT_FIELD_VALUE:
            problems.append(f"ProductFields[{key!r}] exceeds ASFF limits or is not a string")
