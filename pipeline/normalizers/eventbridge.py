"""The EventBridge envelope: which detail-types Riposte understands and who may send them.

A detail-type names the producer, and the envelope's ``source`` must agree with
it: a "GuardDuty Finding" whose source is ``aws.s3`` was not written by
GuardDuty (EventBridge refuses ``aws.*`` sources from PutEvents, so a mismatch
means a message forged straight into the queue) and is dead-lettered as
``source_mismatch``. Well-formed events of other detail-types are kept as
observe-only ``unknown`` events rather than dropped, so nothing is lost silently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.models import Event, EventKind, RawRecord
from pipeline.normalizers.common import (
    Envelope,
    dedupe,
    first_time,
    invalid,
    obj,
    opt_str,
    resource_from_arn,
    str_list,
    validate,
)

GUARDDUTY = "guardduty"
INSPECTOR = "inspector2"
CLOUDTRAIL = "cloudtrail"
SECURITYHUB = "securityhub"


def _exact(expected: str) -> Callable[[str], bool]:
    return lambda source: source == expected


def _aws_service(source: str) -> bool:
    return source.startswith("aws.") and len(source) > 4


# detail-type -> (normalizer family, source check, the source(s) it expects, for messages)
DETAIL_TYPES: dict[str, tuple[str, Callable[[str], bool], str]] = {
    "GuardDuty Finding": (GUARDDUTY, _exact("aws.guardduty"), "aws.guardduty"),
    "Inspector2 Finding": (INSPECTOR, _exact("aws.inspector2"), "aws.inspector2"),
    "AWS API Call via CloudTrail": (CLOUDTRAIL, _aws_service, "aws.<service>"),
    "AWS Console Sign In via CloudTrail": (CLOUDTRAIL, _aws_service, "aws.<service>"),
    "AWS Service Event via CloudTrail": (CLOUDTRAIL, _aws_service, "aws.<service>"),
    "AWS Console Action via CloudTrail": (CLOUDTRAIL, _aws_service, "aws.<service>"),
    "Security Hub Findings - Imported": (SECURITYHUB, _exact("aws.securityhub"),
                                         "aws.securityhub"),
    "Security Hub Findings - Custom Action": (SECURITYHUB, _exact("aws.securityhub"),
                                              "aws.securityhub"),
}


class EventBridgeEvent(BaseModel):
    """The envelope fields; ``detail`` is checked by hand to give precise reasons."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    detail_type: str = Field(min_length=1, alias="detail-type")
    source: str = Field(min_length=1)
    id: str | None = None
    account: str | None = None
    region: str | None = None
    time: Any = None
    resources: Any = None


def is_eventbridge(payload: Mapping[str, Any]) -> bool:
    return "detail-type" in payload


def open_envelope(payload: Mapping[str, Any], record: RawRecord
                  ) -> tuple[Envelope, str | None, Mapping[str, Any]]:
    """Validate the envelope; returns it, the family (None = unknown) and the detail object."""
    event = validate(EventBridgeEvent, payload, "EventBridge event")
    route = DETAIL_TYPES.get(event.detail_type)
    detail = payload.get("detail")
    if detail is None:
        raise invalid(f"EventBridge event {event.detail_type!r} has no detail",
                      reason="missing_detail")
    if not isinstance(detail, Mapping):
        raise invalid(f"EventBridge event {event.detail_type!r}: detail is a "
                      f"{type(detail).__name__}, not an object", reason="invalid_detail")
    if route is not None and not route[1](event.source):
        raise invalid(f"detail-type {event.detail_type!r} from source {event.source!r} "
                      f"(expected {route[2]}): refusing a forged event", reason="source_mismatch")
    env = Envelope(
        record=record,
        shape="eventbridge",
        id=event.id,
        source=event.source,
        detail_type=event.detail_type,
        account=event.account,
        region=event.region,
        time=first_time(event.time),
        resources=tuple(str_list(event.resources)),
    )
    return env, route[0] if route is not None else None, detail


def unknown_event(payload: Mapping[str, Any], env: Envelope) -> Event:
    """A well-formed event Riposte does not understand: kept, observe-only, never acted on."""
    rec = env.record
    if env.shape == "eventbridge":
        type_ = env.detail_type or "unknown"
        source = env.source or "unknown"
        account, region = env.account, env.region
    else:
        type_ = (opt_str(payload.get("detail-type")) or opt_str(payload.get("eventName"))
                 or opt_str(payload.get("type")) or "unknown")
        source = opt_str(payload.get("source")) or "unknown"
        account = (opt_str(payload.get("account")) or opt_str(payload.get("accountId"))
                   or opt_str(payload.get("recipientAccountId")))
        region = opt_str(payload.get("region")) or opt_str(payload.get("awsRegion"))
    resources = dedupe([resource_from_arn(arn, account=account, region=region)
                        for arn in env.resources])
    return Event(
        id=env.id or f"{rec.message_id}:{rec.index}",
        kind=EventKind.UNKNOWN,
        type=type_,
        title=type_,
        source=source,
        account=account,
        region=region,
        time=env.fallback_time(),
        resources=resources,
        detail_type=env.detail_type,
        observe_only=True,
        observe_reason="unknown_event",
        attributes={"keys": sorted(str(k) for k in obj(payload))[:50]},
        origin=env.origin(),
        received_at=rec.received_at,
        raw=payload,
    )
