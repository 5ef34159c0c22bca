"""The normalize stage: one decoded JSON object (``RawRecord``) in, normalized Events out.

What arrives is the innermost object a source decoded (the SQS/SNS/S3/Kinesis
wrappers are already gone). It may be:

* an EventBridge event: GuardDuty, Inspector2, CloudTrail ("... via CloudTrail"),
  or Security Hub ("Findings - Imported" / "Custom Action", one Event per
  finding in ``detail.findings``);
* a bare finding or record: GuardDuty (GetFindings shape), Inspector2, ASFF, or
  one CloudTrail record from a log file's ``Records`` (same Event as through
  EventBridge);
* a recorded API response ``{"status_code": ..., "data": {"findings": [...]}}``
  (cloud-custodian "placebo" files), read as a list of bare findings;
* anything else that is a JSON object: an observe-only ``unknown`` Event.

Outcomes: a malformed event of a known kind, or an EventBridge event whose
``source`` does not match its detail-type, raises ``PermanentError`` (the runner
dead-letters it with the reason); an empty findings list is dropped and counted
as ``discarded{reason="empty_findings"}``; every emitted Event is counted in
``riposte_events{kind}``.

``raw`` is the object as received, except where one object fans out into
several Events (Security Hub findings, recorded responses): there each Event's
``raw`` is its own finding, and ``origin["finding_index"]`` says which.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from pipeline import metrics
from pipeline.config import RiposteConfig
from pipeline.context import RuntimeContext
from pipeline.errors import PermanentError
from pipeline.models import Event, EventKind, RawRecord
from pipeline.normalizers import asff, cloudtrail, guardduty, inspector
from pipeline.normalizers.common import COMPONENT, Envelope, invalid, is_mapping
from pipeline.normalizers.eventbridge import (
    CLOUDTRAIL,
    GUARDDUTY,
    INSPECTOR,
    SECURITYHUB,
    open_envelope,
    unknown_event,
)

log = logging.getLogger(__name__)

Normalizer = Callable[[Mapping[str, Any], Envelope, Mapping[str, Any]], Event]

NORMALIZERS: dict[str, Normalizer] = {
    GUARDDUTY: guardduty.normalize,
    INSPECTOR: inspector.normalize,
    CLOUDTRAIL: cloudtrail.normalize,
    SECURITYHUB: asff.normalize,
}
PLACEBO = "placebo"
GUARDDUTY_BOTO = "guardduty-boto"  # GetFindings as boto3 returns it: PascalCase keys
# Reasons this stage gives PermanentErrors (documented for dead-letter readers and tests).
REASONS = frozenset({"invalid_event", "missing_detail", "invalid_detail", "source_mismatch",
                     "not_an_object", "normalize_failed"})


def raw_family(payload: Mapping[str, Any]) -> str | None:
    """Recognise a bare finding or record by the keys only its producer writes."""
    if "SchemaVersion" in payload:
        if "ProductArn" in payload or "Types" in payload or "GeneratorId" in payload:
            return SECURITYHUB
        if "Service" in payload and "Type" in payload:
            return GUARDDUTY_BOTO
        if "Id" in payload:
            return SECURITYHUB
    if "findingArn" in payload:
        return INSPECTOR
    if "eventVersion" in payload and ("eventName" in payload or "eventSource" in payload):
        return CLOUDTRAIL
    if "schemaVersion" in payload and "type" in payload and (
            "service" in payload or "resource" in payload):
        return GUARDDUTY
    if "status_code" in payload:
        data = payload.get("data")
        if isinstance(data, Mapping) and ("findings" in data or "Findings" in data):
            return PLACEBO
    return None


def normalize(record: RawRecord) -> list[Event]:
    """Normalize one record (pure function; the stage adds metrics around it)."""
    payload = record.payload
    if not is_mapping(payload):
        raise invalid(f"expected a JSON object, got {type(payload).__name__}",
                      reason="not_an_object")
    if "detail-type" in payload:
        env, family, detail = open_envelope(payload, record)
        if family is None:
            return [unknown_event(payload, env)]
        if family == SECURITYHUB:
            action = detail.get("actionName")
            if isinstance(action, str):  # "Custom Action": which button a person pressed
                env.extra_origin = {"custom_action": action}
            return _fan_out(detail.get("findings"), "detail.findings", env, asff.normalize)
        return [NORMALIZERS[family](detail, env, payload)]
    env = Envelope(record=record, shape="raw")
    family = raw_family(payload)
    if family is None:
        return [unknown_event(payload, env)]
    if family == PLACEBO:
        data: Mapping[str, Any] = payload["data"]
        findings = data.get("findings", data.get("Findings"))
        return _fan_out(findings, "data.findings", replace(env, shape="placebo"), None)
    return [_normalize_raw(family, payload, env)]


def _normalize_raw(family: str, doc: Mapping[str, Any], env: Envelope) -> Event:
    if family == GUARDDUTY_BOTO:
        return guardduty.normalize(guardduty.camel_keys(doc), env, doc)
    return NORMALIZERS[family](doc, env, doc)


def _fan_out(findings: Any, where: str, env: Envelope, fixed: Normalizer | None) -> list[Event]:
    """One Event per finding; ``fixed`` None means recognise each finding's kind."""
    if not isinstance(findings, list):
        raise invalid(f"{where} must be a list of findings, got {type(findings).__name__}")
    events: list[Event] = []
    for i, finding in enumerate(findings):
        if not isinstance(finding, Mapping):
            raise invalid(f"{where}[{i}] is a {type(finding).__name__}, not an object")
        sub = replace(env, extra_origin={**env.extra_origin, "finding_index": i})
        if fixed is not None:
            events.append(fixed(finding, sub, finding))
            continue
        family = raw_family(finding)
        if family is None or family == PLACEBO:
            events.append(unknown_event(finding, sub))
        else:
            events.append(_normalize_raw(family, finding, sub))
    return events


class NormalizeStage:
    """Stage ``normalize``: RawRecord -> Events; other items pass through unchanged."""

    name = "normalize"

    def __init__(self) -> None:
        self._counted = {kind: metrics.events(kind.value) for kind in EventKind}
        self._empty = metrics.discarded("empty_findings")

    async def process(self, item: Any) -> Sequence[Any]:
        if not isinstance(item, RawRecord):
            return (item,)
        return self.normalize(item)

    def normalize(self, record: RawRecord) -> list[Event]:
        """Synchronous core (benchmarks call it directly)."""
        events = self.convert(record)
        self.count(events)
        return events

    def convert(self, record: RawRecord) -> list[Event]:
        """:meth:`normalize` without counting the events made, for a caller that counts a
        whole batch at once with :meth:`count` (replay: one log file's records)."""
        try:
            events = normalize(record)
        except PermanentError as err:
            if err.reason == "source_mismatch":
                log.warning("forged event refused", extra={
                    "message_id": record.message_id, "error": err.message})
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError,
                RecursionError) as exc:
            # A bug here is deterministic for this input: retrying cannot help.
            log.error("normalize failed on an unexpected shape", exc_info=True,
                      extra={"message_id": record.message_id})
            raise PermanentError(f"{type(exc).__name__}: {exc}", reason="normalize_failed",
                                 component=COMPONENT) from exc
        if not events:
            self._empty.inc()
        return events

    def count(self, events: Sequence[Event]) -> None:
        """Count ``events`` in ``riposte_events{kind}``: one increment per kind present."""
        if len(events) == 1:
            self._counted[events[0].kind].inc()
            return
        for kind, n in Counter(event.kind for event in events).items():
            self._counted[kind].inc(n)


def build(config: RiposteConfig, ctx: RuntimeContext) -> NormalizeStage:
    """Factory used by the chain builder; normalize has no settings of its own."""
    del config, ctx
    return NormalizeStage()
