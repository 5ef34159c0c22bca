"""Items for sink tests: events, detections, incidents and actions as the stages emit them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from pipeline.models import (
    ActionMode,
    ActionRecord,
    ActionStatus,
    Detection,
    Event,
    EventKind,
    FindingRef,
    Incident,
    Item,
    ResourceRef,
    RiskScore,
    ScoreReason,
    Severity,
    SeverityLabel,
)
from sinks.base import SendResult

T0 = datetime(2026, 11, 20, 8, 30, 0, tzinfo=UTC)
INSTANCE = ResourceRef(type="ec2.instance", id="i-0abc123def4567890",
                       arn="arn:aws:ec2:us-east-1:123456789012:instance/i-0abc123def4567890",
                       account="123456789012", region="us-east-1")


def event(n: int = 0, *, score: int = 50, type_: str = "UnauthorizedAccess:EC2/SSHBruteForce",
          **kw: Any) -> Event:
    return Event(id=f"gd-{n}", kind=EventKind.GUARDDUTY, type=type_,
                 title=f"SSH brute force against {INSTANCE.id} #{n}", source="aws.guardduty",
                 account="123456789012", region="us-east-1", time=T0,
                 severity=Severity.of_score(score, native=5.0), resources=(INSTANCE,), **kw)


def detection(n: int = 0, *, score: int = 75) -> Event:
    det = Detection(rule_id="ct.root_login", title="Root console login",
                    description="The root user signed in to the console",
                    severity=SeverityLabel.from_score(score), mitre=("T1078.004",))
    return Event(id=f"det-{n}", kind=EventKind.DETECTION, type="ct.root_login",
                 title="Root console login", source="riposte", account="123456789012",
                 region="us-east-1", time=T0, severity=Severity.of_score(score),
                 detection=det, item_kind="detection")


def action(n: int = 0, *, status: ActionStatus = ActionStatus.APPLIED) -> ActionRecord:
    return ActionRecord(id=f"act-{n}", incident_id=f"inc-{n}", kind="ec2.isolate",
                        resource=INSTANCE, mode=ActionMode.ENFORCE, status=status,
                        reason="critical incident on an internet-facing instance",
                        applied_at=T0)


def incident(n: int = 0, *, score: int = 92, revision: int = 1,
             actions: tuple[ActionRecord, ...] = (), title: str | None = None,
             finding_types: tuple[str, ...] = ("UnauthorizedAccess:EC2/SSHBruteForce",
                                               "PACKAGE_VULNERABILITY")) -> Incident:
    findings = tuple(FindingRef(event_id=f"f-{n}-{i}", kind=EventKind.GUARDDUTY, type=t,
                                severity=Severity.of_score(score), time=T0)
                     for i, t in enumerate(finding_types))
    risk = RiskScore(value=score, label=SeverityLabel.from_score(score), reasons=(
        ScoreReason("guardduty_severity", 40, "GuardDuty severity 8.0"),
        ScoreReason("exploitable_cve", 30, "CVE-2024-6387 with a known exploit"),
        ScoreReason("internet_exposed", 22, "security group open to 0.0.0.0/0 on 22")))
    return Incident(id=f"inc-{n}", key=INSTANCE.key,
                    title=title or f"Brute force on a vulnerable instance #{n}",
                    account="123456789012", region="us-east-1", resources=(INSTANCE,),
                    findings=findings, first_seen=T0, last_seen=T0, correlated=True,
                    score=risk, mitre=("T1110", "T1190"), actions=actions, revision=revision)


class ScriptedSink:
    """An in-process sink whose answers a test scripts: per call, a function of the batch."""

    def __init__(self, name: str = "scripted") -> None:
        self.name = name
        self.batches: list[list[Item]] = []
        self.answers: list[Callable[[Sequence[Item]], SendResult]] = []
        self.delay = 0.0
        self.healthy = True
        self.closed = False
        self.active = 0
        self.max_active = 0

    @property
    def received(self) -> list[Any]:
        return [i for b in self.batches for i in b]

    async def send(self, batch: Sequence[Item]) -> SendResult:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            self.batches.append(list(batch))
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.answers:
                return self.answers.pop(0)(batch)
            return SendResult.all_delivered(batch)
        finally:
            self.active -= 1

    async def healthcheck(self) -> None:
        if not self.healthy:
            raise ConnectionError(f"{self.name} is unreachable")

    async def aclose(self) -> None:
        self.closed = True
