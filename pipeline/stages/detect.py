"""The detect stage: run the registered CloudTrail rules over each CloudTrail event.

Every CloudTrail event passes through unchanged, followed by one ``detection``
event per rule that fired. Other items pass through untouched. A detection's id
is ``det-`` + sha256(rule id | trigger event id), so a redelivered CloudTrail
record yields the same detection id and downstream ledgers see a duplicate, not a
new finding.

A rule that raises is logged and counted (``errors{stage="detect",
error_type=<rule id>}``) and skipped for that event: one broken rule must not
stop the others or block the queue. Rules are indexed by the API names they
declare, so a call is only shown to the rules that can fire on it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

from pipeline import metrics
from pipeline.config import RiposteConfig
from pipeline.context import RuntimeContext
from pipeline.detections._cloudtrail import CloudTrailView
from pipeline.detections.registry import RULES, SEVERITY_SCORE, CloudTrailRule, Hit
from pipeline.models import Detection, Event, EventKind, ResourceRef, Severity

log = logging.getLogger(__name__)

SOURCE = "riposte.detect"
DETAIL_TYPE = "Riposte CloudTrail Detection"


def detection_id(rule_id: str, trigger_id: str) -> str:
    digest = hashlib.sha256(f"{rule_id}|{trigger_id}".encode()).hexdigest()
    return f"det-{digest[:24]}"


def _resources(view: CloudTrailView, hit: Hit) -> tuple[ResourceRef, ...]:
    """The trigger's resources (normalize orders them caller first: access key, principal,
    then what the call touched), then the rule's targets. An event without resources (an
    older normalizer) gets the caller from the view."""
    actors: tuple[ResourceRef | None, ...] = view.event.resources or (
        view.access_key_resource(), view.principal_resource())
    seen: set[str] = set()
    out: list[ResourceRef] = []
    for ref in (*actors, *hit.targets):
        if ref is not None and ref.key not in seen:
            seen.add(ref.key)
            out.append(ref)
    return tuple(out)


def _mitre(rule: CloudTrailRule, hit: Hit) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*rule.meta.mitre, *hit.mitre)))


def make_detection(rule: CloudTrailRule, hit: Hit, view: CloudTrailView) -> Event:
    trigger = view.event
    meta = rule.meta
    label = hit.severity or meta.severity
    mitre = _mitre(rule, hit)
    title = hit.title or meta.title
    detection = Detection(
        rule_id=meta.id,
        title=title,
        description=meta.description,
        severity=label,
        mitre=mitre,
        trigger_event_id=trigger.id,
        facts=dict(hit.facts),
    )
    attributes: dict[str, Any] = dict(trigger.attributes)
    attributes["rule_id"] = meta.id
    return Event(
        id=detection_id(meta.id, trigger.id),
        kind=EventKind.DETECTION,
        type=meta.id,
        title=title,
        source=SOURCE,
        account=trigger.account or view.own_account,
        region=trigger.region or view.region,
        time=trigger.time,
        severity=Severity.of_score(SEVERITY_SCORE[label], native=label.value),
        resources=_resources(view, hit),
        created_at=trigger.time,
        detail_type=DETAIL_TYPE,
        sample=trigger.sample,
        observe_only=trigger.observe_only,
        observe_reason=trigger.observe_reason,
        attributes=attributes,
        mitre=mitre,
        detection=detection,
        origin=trigger.origin,
        received_at=trigger.received_at,
        raw=trigger.raw,
        item_kind="detection",
    )


class DetectStage:
    name = "detect"

    def __init__(self, rules: Sequence[CloudTrailRule]) -> None:
        self.rules = tuple(rules)
        self._any: tuple[CloudTrailRule, ...] = tuple(r for r in self.rules
                                                      if r.event_names is None)
        named: dict[str, set[int]] = {}
        for rule in self.rules:
            for name in rule.event_names or ():
                named.setdefault(name, set()).add(id(rule))
        # Per API name: the rules that look at every call plus those naming it, in the
        # configured order, so detections come out in a stable order.
        self._by_name: dict[str, tuple[CloudTrailRule, ...]] = {
            name: tuple(r for r in self.rules if r.event_names is None or id(r) in ids)
            for name, ids in named.items()
        }
        self._fired = {r.meta.id: metrics.DETECTIONS.labels(rule=r.meta.id) for r in self.rules}
        self._failed = {r.meta.id: metrics.error(self.name, r.meta.id) for r in self.rules}

    def rules_for(self, event_name: str | None) -> tuple[CloudTrailRule, ...]:
        return self._by_name.get(event_name or "", self._any)

    async def detect(self, event: Event) -> list[Event]:
        """Only the detections for one CloudTrail event (no passthrough)."""
        view = CloudTrailView(event)
        out: list[Event] = []
        for rule in self.rules_for(view.event_name):
            rule_id = rule.meta.id
            try:
                hit = await rule.evaluate(view)
                if hit is None:
                    continue
                detection = make_detection(rule, hit, view)
            except Exception:
                self._failed[rule_id].inc()
                log.exception("detection rule failed", extra={
                    "rule": rule_id, "event_id": event.id, "event_name": view.event_name})
                continue
            self._fired[rule_id].inc()
            log.info("detection", extra={"rule": rule_id, "event_id": event.id,
                                         "detection_id": detection.id,
                                         "severity": detection.severity.label.value})
            out.append(detection)
        return out

    def accepts(self, item: Any) -> bool:
        """A CloudTrail call (not a detection made from one): everything else passes."""
        return (isinstance(item, Event) and item.kind is EventKind.CLOUDTRAIL
                and item.item_kind == "event")

    async def process(self, item: Any) -> Sequence[Any]:
        if not self.accepts(item):
            return (item,)
        return (item, *await self.detect(item))


def build(config: RiposteConfig, ctx: RuntimeContext) -> DetectStage:
    """The detect stage with the rules ``config.detections`` enables (ConfigError if unknown)."""
    return DetectStage(RULES.build(config.detections, ctx))
