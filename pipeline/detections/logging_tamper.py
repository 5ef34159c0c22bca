"""Security logging disabled or destroyed (MITRE T1562.008, impair defenses: cloud logs).

Attackers switch off what would record them: CloudTrail trails, GuardDuty
detectors, Security Hub, AWS Config recorders. Each entry below is an API call
that always turns a control off, or a predicate on its parameters for calls that
only sometimes do (UpdateTrail, UpdateDetector).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pipeline.detections._cloudtrail import CloudTrailView
from pipeline.detections.registry import CloudTrailRule, Hit, register
from pipeline.models import ResourceRef, SeverityLabel


def _is_false(value: Any) -> bool:
    return value is False or (isinstance(value, str) and value.strip().lower() == "false")


def _update_trail_disables(params: Mapping[str, Any]) -> str | None:
    for key in ("isLogging", "IsLogging"):
        if _is_false(params.get(key)):
            return "UpdateTrail turned logging off"
    for key in ("enableLogFileValidation", "EnableLogFileValidation"):
        if _is_false(params.get(key)):
            return "UpdateTrail turned log file validation off"
    return None


def _update_detector_disables(params: Mapping[str, Any]) -> str | None:
    if _is_false(params.get("enable")):
        return "UpdateDetector disabled the GuardDuty detector"
    return None


def _always(why: str) -> Callable[[Mapping[str, Any]], str | None]:
    return lambda _params: why


TAMPERING: Mapping[tuple[str, str], Callable[[Mapping[str, Any]], str | None]] = {
    ("cloudtrail.amazonaws.com", "StopLogging"): _always("CloudTrail logging stopped"),
    ("cloudtrail.amazonaws.com", "DeleteTrail"): _always("CloudTrail trail deleted"),
    ("cloudtrail.amazonaws.com", "UpdateTrail"): _update_trail_disables,
    ("guardduty.amazonaws.com", "DeleteDetector"): _always("GuardDuty detector deleted"),
    ("guardduty.amazonaws.com", "UpdateDetector"): _update_detector_disables,
    ("securityhub.amazonaws.com", "DisableSecurityHub"): _always("Security Hub disabled"),
    ("config.amazonaws.com", "StopConfigurationRecorder"):
        _always("AWS Config recorder stopped"),
    ("config.amazonaws.com", "DeleteConfigurationRecorder"):
        _always("AWS Config recorder deleted"),
    ("config.amazonaws.com", "DeleteDeliveryChannel"):
        _always("AWS Config delivery channel deleted"),
}
_BY_NAME: dict[str, list[str]] = {}
for _source, _name in TAMPERING:
    _BY_NAME.setdefault(_name, []).append(_source)
EVENTS = frozenset(_BY_NAME)


def _target(view: CloudTrailView) -> ResourceRef | None:
    params = view.request_parameters
    for key in ("name", "trailName", "detectorId", "configurationRecorderName",
                "deliveryChannelName"):
        value = params.get(key)
        if isinstance(value, str) and value:
            arn = value if value.startswith("arn:") else None
            return ResourceRef("other", value, arn=arn, account=view.own_account,
                               region=view.region, details={"service": view.event_source})
    return None


@register(
    "logging_disabled",
    title="Security logging disabled or destroyed",
    severity=SeverityLabel.HIGH,
    mitre=("T1562.008",),
    description="CloudTrail, GuardDuty, Security Hub or AWS Config was stopped, deleted or "
                "reconfigured to stop recording.",
    event_names=EVENTS,
)
class LoggingDisabled(CloudTrailRule):
    async def evaluate(self, view: CloudTrailView) -> Hit | None:
        name = view.event_name
        if name not in EVENTS or not view.succeeded:
            return None
        source = view.event_source
        sources = _BY_NAME[name]
        if source is None and len(sources) == 1:
            source = sources[0]  # record without eventSource: the name is unambiguous
        check = TAMPERING.get((source or "", name))
        if check is None:
            return None
        why = check(view.request_parameters)
        if why is None:
            return None
        target = _target(view)
        return Hit(
            facts={
                "event_name": name,
                "event_source": source,
                "target": target.id if target else None,
                "principal_arn": view.principal_arn,
                "source_ip": view.source_ip,
                "why": why,
            },
            targets=(target,) if target else (),
        )
