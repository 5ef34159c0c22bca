"""The data that flows through Riposte, from raw message to incident.

Internal models are records (:mod:`pipeline.records`: slotted dataclasses that the
type checker holds frozen) rather than pydantic models: they are built by our own
code (never from untrusted input, which the lenient pydantic input models in
:mod:`pipeline.stages.normalize` validate first), they are cheap to create on the hot
path, and orjson serializes them natively for the sinks.

Updates never mutate: stages return ``dataclasses.replace(item, ...)`` copies so an
item that has been handed to a sink can never change under it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import field
from datetime import datetime
from typing import Any, Literal

from pipeline.records import record

JSON = dict[str, Any]


class EventKind(enum.StrEnum):
    """Where a normalized event came from."""

    GUARDDUTY = "guardduty"
    INSPECTOR = "inspector2"
    CLOUDTRAIL = "cloudtrail"
    SECURITYHUB = "securityhub"
    DETECTION = "detection"  # produced by a Riposte rule over another event
    UNKNOWN = "unknown"  # well-formed but not understood: observe-only


class SeverityLabel(enum.StrEnum):
    INFORMATIONAL = "informational"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @classmethod
    def from_score(cls, score: float) -> SeverityLabel:
        """The common 0-100 scale cut the way Security Hub's normalized severity is."""
        if score >= 90:
            return cls.CRITICAL
        if score >= 70:
            return cls.HIGH
        if score >= 40:
            return cls.MEDIUM
        if score >= 1:
            return cls.LOW
        return cls.INFORMATIONAL

    @property
    def rank(self) -> int:
        return _LABEL_RANK[self]


_LABEL_RANK = {label: i for i, label in enumerate(SeverityLabel)}


@record
class Severity:
    """A severity in the source's own terms and on Riposte's common 0-100 scale."""

    native: str | float | None
    score: int
    label: SeverityLabel

    @classmethod
    def of_score(cls, score: float, native: str | float | None = None) -> Severity:
        clamped = max(0, min(100, round(score)))
        return cls(native=native, score=clamped, label=SeverityLabel.from_score(clamped))


NO_SEVERITY = Severity(native=None, score=0, label=SeverityLabel.INFORMATIONAL)


@record
class ResourceRef:
    """One AWS resource an event is about.

    ``type`` uses a small dotted vocabulary (``ec2.instance``, ``ecr.image``,
    ``lambda.function``, ``iam.user``, ``iam.role``, ``iam.access_key``,
    ``s3.bucket``, ``eks.cluster``, ``ecs.task``, ``aws.account``, ``other``) so
    correlation, scoring and containment match on one name per kind whatever the
    source called it (GuardDuty ``Instance``, Inspector ``AWS_EC2_INSTANCE``, ASFF
    ``AwsEc2Instance``...).
    """

    type: str
    id: str
    arn: str | None = None
    account: str | None = None
    region: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The identity used for per-key ordering, correlation and the action ledger."""
        return f"{self.type}:{self.id}"


@record
class Detection:
    """What a Riposte rule concluded about an event (kind ``detection``)."""

    rule_id: str
    title: str
    description: str
    severity: SeverityLabel
    mitre: tuple[str, ...] = ()
    trigger_event_id: str = ""
    facts: Mapping[str, Any] = field(default_factory=dict)


@record
class Event:
    """One normalized security event.

    ``time`` is the event time (a finding's ``updatedAt``, a CloudTrail
    ``eventTime``): every window, baseline and rate in Riposte runs on it so that a
    replay gives the answers live processing would have given.
    """

    id: str
    kind: EventKind
    type: str
    title: str
    source: str
    account: str | None
    region: str | None
    time: datetime
    severity: Severity = NO_SEVERITY
    resources: tuple[ResourceRef, ...] = ()
    created_at: datetime | None = None
    detail_type: str | None = None
    sample: bool = False
    # Not acted on: unknown events, failed trust checks, sample findings...
    observe_only: bool = False
    observe_reason: str | None = None
    # Finding lifecycle: GuardDuty ``count``/``archived``, Inspector ``status``.
    status: str | None = None
    count: int | None = None
    # Kind-specific facts the stages read (CloudTrail ``event_name``, ``source_ip``,
    # ``user_agent``, ``access_key_id``; Inspector ``cvss``, ``epss``,
    # ``exploit_available``, ``fix_available``; GuardDuty ``action_type``, ``domain``).
    attributes: Mapping[str, Any] = field(default_factory=dict)
    mitre: tuple[str, ...] = ()
    detection: Detection | None = None
    # Where it came from: message id, envelope kind, SNS topic, S3 object...
    origin: Mapping[str, Any] = field(default_factory=dict)
    received_at: float = 0.0
    raw: Mapping[str, Any] = field(default_factory=dict)

    item_kind: Literal["event", "detection"] = "event"

    @property
    def primary_resource(self) -> ResourceRef | None:
        return self.resources[0] if self.resources else None

    @property
    def lane_key(self) -> str:
        """Events about the same resource are processed in arrival order."""
        primary = self.primary_resource
        return primary.key if primary is not None else f"event:{self.id}"


class IncidentPhase(enum.StrEnum):
    DETECTED = "detected"
    CONTAINED = "contained"
    RECOVERED = "recovered"


@record
class FindingRef:
    """One finding behind an incident, small enough to carry in every update."""

    event_id: str
    kind: EventKind
    type: str
    severity: Severity
    time: datetime
    count: int | None = None
    status: str | None = None
    title: str = ""
    # Scalar facts the score stage weighs (Inspector ``cvss``/``epss``/..., the
    # finding's resource key and MITRE ids), so a score is a function of the findings.
    attributes: Mapping[str, Any] = field(default_factory=dict)


@record
class ScoreReason:
    """One line of an explainable score: what was seen and how much it weighed."""

    factor: str
    points: float
    detail: str


@record
class RiskScore:
    value: int
    label: SeverityLabel
    reasons: tuple[ScoreReason, ...] = ()


class ActionMode(enum.StrEnum):
    OBSERVE = "observe"
    DRY_RUN = "dry-run"
    ENFORCE = "enforce"
    APPROVE = "approve"


class ActionStatus(enum.StrEnum):
    RECORDED = "recorded"  # observe mode
    PLANNED = "planned"  # dry-run: the exact calls are stored, none made
    AWAITING_APPROVAL = "awaiting_approval"
    APPLIED = "applied"
    VERIFIED = "verified"
    SKIPPED = "skipped"  # refused by a safety check; reason says which
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"


@record
class ApiCall:
    """An AWS API call exactly as it would be (or was) issued."""

    service: str
    operation: str
    params: Mapping[str, Any]
    account: str | None = None
    region: str | None = None


@record
class ActionRecord:
    """One containment decision about one resource, as the ledger and sinks see it."""

    id: str
    incident_id: str
    kind: str
    resource: ResourceRef
    mode: ActionMode
    status: ActionStatus
    reason: str = ""
    calls: tuple[ApiCall, ...] = ()
    before: Mapping[str, Any] = field(default_factory=dict)
    planned_at: datetime | None = None
    applied_at: datetime | None = None
    rollback_hint: str = ""

    item_kind: Literal["action"] = "action"


@record
class Incident:
    """Findings about one resource (or one detection) that a responder handles as one.

    ``id`` is deterministic over the correlation key, so every worker and every
    redelivery names the same incident the same way.
    """

    id: str
    key: str
    title: str
    account: str | None
    region: str | None
    resources: tuple[ResourceRef, ...]
    findings: tuple[FindingRef, ...]
    first_seen: datetime
    last_seen: datetime
    correlated: bool = False
    score: RiskScore | None = None
    mitre: tuple[str, ...] = ()
    phase: IncidentPhase = IncidentPhase.DETECTED
    actions: tuple[ActionRecord, ...] = ()
    sample: bool = False
    observe_only: bool = False
    observe_reason: str | None = None
    revision: int = 1
    # The event that produced this revision (for routing and for the actions).
    trigger: Event | None = None
    detected_at: float | None = None  # wall clock when Riposte first saw it
    contained_at: float | None = None

    item_kind: Literal["incident"] = "incident"

    @property
    def severity_label(self) -> SeverityLabel:
        if self.score is not None:
            return self.score.label
        best = max((f.severity.score for f in self.findings), default=0)
        return SeverityLabel.from_score(best)


Item = Event | Incident | ActionRecord
"""Anything a stage may emit and a sink may receive."""


def item_kind(item: Item) -> str:
    """``event``, ``detection``, ``incident`` or ``action``: what sink routing keys on."""
    return item.item_kind


def item_severity(item: Item) -> SeverityLabel:
    if isinstance(item, Event):
        return item.severity.label
    if isinstance(item, Incident):
        return item.severity_label
    return SeverityLabel.INFORMATIONAL


def item_id(item: Item) -> str:
    """Stable identity of an item revision, used by the delivery ledger."""
    if isinstance(item, Incident):
        return f"incident:{item.id}:r{item.revision}"
    if isinstance(item, ActionRecord):
        return f"action:{item.id}:{item.status}"
    return f"{item.item_kind}:{item.id}"


@record
class RawRecord:
    """One decoded JSON object from a message, before normalization.

    A message can hold several: an S3 notification names a CloudTrail log file
    whose ``Records`` each become one ``RawRecord``; a CloudWatch Logs payload
    carries many ``logEvents``.
    """

    payload: Mapping[str, Any]
    message_id: str
    index: int = 0
    # "eventbridge", "sns", "s3-cloudtrail", "cwlogs", "raw", ...
    envelope: str = "raw"
    origin: Mapping[str, Any] = field(default_factory=dict)
    received_at: float = 0.0
