"""MITRE ATT&CK technique ids for findings, detections and CloudTrail calls.

A responder reading an incident wants the adversary behaviour in a shared
vocabulary, and sinks (Security Hub, SIEM dashboards) group by it. The mapping is
data: ordered glob patterns over the finding type, every match contributing its
techniques (so ``Backdoor:EC2/C&CActivity.B!DNS`` gets both the generic C2 id and
the DNS sub-technique). Unknown types map to nothing rather than to a guess.

GuardDuty types read ``ThreatPurpose:ResourceType/ThreatFamilyName.Variant!Artifact``.
Security Hub ASFF types read ``Namespace/Category/Classifier``; when the classifier
is a GuardDuty type (``.../UnauthorizedAccess:IAMUser-ConsoleLogin``) it is mapped
as one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

from pipeline.models import Event, EventKind

Rule = tuple[str, tuple[str, ...]]

# --- GuardDuty finding types --------------------------------------------------------------------
GUARDDUTY_RULES: tuple[Rule, ...] = (
    # Command and control
    ("Backdoor:*/C&CActivity*", ("T1071",)),
    ("*!DNS", ("T1071.004",)),
    ("Backdoor:*/DenialOfService*", ("T1498",)),
    ("Backdoor:EC2/Spambot", ("T1071.003",)),
    ("Trojan:*", ("T1071",)),
    ("Trojan:*/DGADomainRequest*", ("T1568.002",)),
    ("Trojan:*/DNSDataExfiltration", ("T1048.003",)),
    ("Trojan:*/DropPoint*", ("T1041",)),
    ("UnauthorizedAccess:*/TorClient", ("T1090.003",)),
    ("UnauthorizedAccess:*/TorRelay", ("T1090.003",)),
    ("*TorIPCaller*", ("T1090.003",)),
    # Resource hijacking
    ("CryptoCurrency:*", ("T1496",)),
    ("Impact:*/BitcoinDomainRequest*", ("T1496",)),
    ("Impact:*/CryptoMinerExecuted", ("T1496",)),
    # Credential abuse and brute force
    ("UnauthorizedAccess:*/SSHBruteForce", ("T1110",)),
    ("UnauthorizedAccess:*/RDPBruteForce", ("T1110",)),
    ("Impact:*/WinRMBruteForce", ("T1110",)),
    ("UnauthorizedAccess:IAMUser/*", ("T1078.004",)),
    ("UnauthorizedAccess:S3/*", ("T1078.004",)),
    ("UnauthorizedAccess:*/InstanceCredentialExfiltration*", ("T1552.005",)),
    ("UnauthorizedAccess:EC2/MetadataDNSRebind", ("T1552.005",)),
    ("CredentialAccess:IAMUser/*", ("T1555.006",)),
    ("CredentialAccess:Kubernetes/*", ("T1552.007",)),
    ("Policy:IAMUser/RootCredentialUsage", ("T1078.004",)),
    ("PenTest:IAMUser/*", ("T1078.004",)),
    ("PenTest:S3/*", ("T1078.004",)),
    # Persistence and privilege escalation
    ("Persistence:IAMUser/*", ("T1098",)),
    ("PrivilegeEscalation:IAMUser/*", ("T1098", "T1078.004")),
    ("PrivilegeEscalation:Runtime/*", ("T1068",)),
    ("PrivilegeEscalation:*/ContainerMountsHostDirectory", ("T1611",)),
    ("Persistence:Kubernetes/ContainerWithSensitiveMount", ("T1611",)),
    ("Execution:Runtime/*", ("T1059",)),
    ("Execution:Kubernetes/ExecInKubeSystemPod", ("T1609",)),
    ("Execution:EC2/MaliciousFile", ("T1204",)),
    # Data access, exfiltration and impact
    ("Exfiltration:S3/*", ("T1530",)),
    ("Exfiltration:IAMUser/*", ("T1537",)),
    ("Impact:S3/*Delete*", ("T1485",)),
    ("Impact:S3/*Permission*", ("T1222",)),
    ("Impact:S3/*Write*", ("T1565.001",)),
    ("Impact:IAMUser/*", ("T1496",)),
    # Discovery and recon
    ("Discovery:S3/*", ("T1619",)),
    ("Discovery:IAMUser/*", ("T1580", "T1087.004")),
    ("Discovery:Kubernetes/*", ("T1613",)),
    ("Recon:EC2/Port*", ("T1046",)),
    ("Recon:IAMUser/*", ("T1580",)),
    # Defense evasion
    ("Stealth:IAMUser/CloudTrailLoggingDisabled", ("T1562.008",)),
    ("Stealth:IAMUser/LoggingConfigurationModified", ("T1562.008",)),
    ("Stealth:S3/ServerAccessLoggingDisabled", ("T1562.008",)),
    ("Stealth:IAMUser/PasswordPolicyChange", ("T1556",)),
    ("DefenseEvasion:IAMUser/*", ("T1562.008",)),
    ("DefenseEvasion:Runtime/*", ("T1562",)),
    ("Policy:S3/*BlockPublicAccessDisabled", ("T1562",)),
)

# --- Security Hub ASFF type fragments ---------------------------------------------------------
SECURITYHUB_RULES: tuple[Rule, ...] = (
    ("*Effects/Data Exfiltration*", ("T1537",)),
    ("*Effects/Resource Consumption*", ("T1496",)),
    ("*TTPs/Discovery*", ("T1580",)),
    ("*TTPs/Credential Access*", ("T1552",)),
    ("*TTPs/Initial Access*", ("T1078.004",)),
    ("*TTPs/Defense Evasion*", ("T1562",)),
    ("*TTPs/Command and Control*", ("T1071",)),
    ("*TTPs/Privilege Escalation*", ("T1098",)),
    ("*Sensitive Data Identifications*", ("T1530",)),
)

# --- CloudTrail API calls (detections over CloudTrail carry ``event_name``) ----------------------
CLOUDTRAIL_CALLS: Mapping[str, tuple[str, ...]] = {
    "StopLogging": ("T1562.008",),
    "DeleteTrail": ("T1562.008",),
    "UpdateTrail": ("T1562.008",),
    "PutEventSelectors": ("T1562.008",),
    "DeleteFlowLogs": ("T1562.008",),
    "DeleteDetector": ("T1562.001",),
    "DisableSecurityHub": ("T1562.001",),
    "ListBuckets": ("T1619",),
    "GetBucketAcl": ("T1619",),
    "ListUsers": ("T1087.004",),
    "ListRoles": ("T1087.004",),
    "DescribeInstances": ("T1580",),
    "DescribeDBInstances": ("T1580",),
    "GetCallerIdentity": ("T1087.004",),
    "CreateUser": ("T1136.003",),
    "CreateLoginProfile": ("T1098",),
    "CreateAccessKey": ("T1098.001",),
    "AttachUserPolicy": ("T1098",),
    "AttachRolePolicy": ("T1098",),
    "PutUserPolicy": ("T1098",),
    "PutRolePolicy": ("T1098",),
    "PutGroupPolicy": ("T1098",),
    "CreatePolicy": ("T1098",),
    "CreatePolicyVersion": ("T1098",),
    "CreateRole": ("T1098",),
    "UpdateAssumeRolePolicy": ("T1098",),
    "AdminAddUserToGroup": ("T1098",),
    "ConsoleLogin": ("T1078.004",),
    "GetObject": ("T1530",),
    "PutBucketReplication": ("T1537",),
    "ModifySnapshotAttribute": ("T1537",),
    "ModifyImageAttribute": ("T1537",),
    "RunInstances": ("T1578.002",),
}

# Rule ids we cannot look up (a detection without its own ``mitre``): keyword fallbacks.
DETECTION_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging", ("T1562.008",)),
    ("trail", ("T1562.008",)),
    ("root", ("T1078.004",)),
    ("wildcard", ("T1098",)),
    ("policy", ("T1098",)),
    ("trust", ("T1098",)),
    ("cognito", ("T1098",)),
    ("user_agent", ("T1078.004",)),
    ("useragent", ("T1078.004",)),
    ("sensitive", ("T1078.004",)),
    ("first_seen", ("T1078.004",)),
)

EXPLOIT_PUBLIC_FACING = "T1190"


def _matches(rules: Iterable[Rule], value: str) -> set[str]:
    found: set[str] = set()
    for pattern, techniques in rules:
        if fnmatchcase(value, pattern):
            found.update(techniques)
    return found


# Finding types come from a small vocabulary and repeat with every finding, incident
# revision and sink item, while matching one runs every glob of a table: cached, bounded
# (a type is input, and a flood of made-up ones must not grow memory).
@lru_cache(maxsize=4096)
def _guardduty(finding_type: str) -> frozenset[str]:
    return frozenset(_matches(GUARDDUTY_RULES, finding_type))


@lru_cache(maxsize=4096)
def _securityhub(asff_type: str) -> frozenset[str]:
    found = _matches(SECURITYHUB_RULES, asff_type)
    classifier = asff_type.rsplit("/", 1)[-1]
    if ":" in classifier:  # a GuardDuty type written with '-' for '/'
        found |= _guardduty(classifier.replace("-", "/", 1))
    return frozenset(found)


def guardduty_techniques(finding_type: str) -> set[str]:
    return set(_guardduty(finding_type))


def securityhub_techniques(asff_type: str) -> set[str]:
    return set(_securityhub(asff_type))


def detection_techniques(rule_id: str) -> set[str]:
    lowered = rule_id.lower()
    found: set[str] = set()
    for word, techniques in DETECTION_KEYWORDS:
        if word in lowered:
            found.update(techniques)
    return found


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().upper() in {"YES", "TRUE", "1", "PARTIAL"}
    return bool(value)


def exploitable_and_reachable(attributes: Mapping[str, Any]) -> bool:
    """An exploitable CVE on a network-reachable resource: T1190's precondition."""
    return (_truthy(attributes.get("exploit_available"))
            and _truthy(attributes.get("network_reachable")))


def techniques_for(kind: EventKind | str, finding_type: str,
                   attributes: Mapping[str, Any] | None = None,
                   rule_id: str | None = None,
                   declared: Iterable[str] = ()) -> tuple[str, ...]:
    """Techniques for one finding given as plain data (used for stored findings too)."""
    attrs = attributes or {}
    found = set(declared)
    kind = EventKind(kind)
    if kind is EventKind.GUARDDUTY:
        found |= _guardduty(finding_type)
    elif kind is EventKind.SECURITYHUB:
        found |= _securityhub(finding_type)
        found |= _guardduty(finding_type)
    elif kind is EventKind.INSPECTOR and exploitable_and_reachable(attrs):
        found.add(EXPLOIT_PUBLIC_FACING)
    if kind in (EventKind.CLOUDTRAIL, EventKind.DETECTION):
        name = attrs.get("event_name")
        if isinstance(name, str):
            found.update(CLOUDTRAIL_CALLS.get(name, ()))
    if kind is EventKind.DETECTION and rule_id and not declared:
        found |= detection_techniques(rule_id)
    return tuple(sorted(found))


def techniques_for_event(event: Event) -> tuple[str, ...]:
    """Every ATT&CK technique id an event points at, sorted."""
    declared = set(event.mitre)
    rule_id = None
    if event.detection is not None:
        declared.update(event.detection.mitre)
        rule_id = event.detection.rule_id
    return techniques_for(event.kind, event.type, event.attributes, rule_id=rule_id,
                          declared=declared)


def techniques_for_findings(findings: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The union over an incident's findings (each a mapping with ``mitre`` and facts).

    Adds T1190 when one finding shows an exploitable CVE and any finding on the
    same incident shows the resource reachable from the network, which no single
    finding may say on its own.
    """
    found: set[str] = set()
    exploitable = reachable = False
    for attrs in findings:
        found.update(attrs.get("mitre") or ())
        exploitable = exploitable or _truthy(attrs.get("exploit_available"))
        reachable = reachable or _truthy(attrs.get("network_reachable"))
    if exploitable and reachable:
        found.add(EXPLOIT_PUBLIC_FACING)
    return tuple(sorted(found))
