"""Plans, applied actions and action records to and from JSON objects for the state store.

A plan waiting for approval, and the before-state rollback needs, outlive the
process that made them; they are stored as plain JSON and read back into the
same frozen dataclasses, so an approved plan is executed exactly as it was shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from pipeline.actions.base import Applied, Plan, Step
from pipeline.models import ActionMode, ActionRecord, ActionStatus, ApiCall, ResourceRef


def _plain(value: Any) -> Any:
    """Deep-copy into JSON-safe data (AWS responses can hold datetimes)."""
    return orjson.loads(orjson.dumps(value, default=str))


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_dt(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def resource_to(r: ResourceRef) -> dict[str, Any]:
    return {"type": r.type, "id": r.id, "arn": r.arn, "account": r.account, "region": r.region,
            "tags": dict(r.tags), "details": _plain(dict(r.details))}


def resource_from(d: Mapping[str, Any]) -> ResourceRef:
    return ResourceRef(type=d["type"], id=d["id"], arn=d.get("arn"), account=d.get("account"),
                       region=d.get("region"), tags=dict(d.get("tags") or {}),
                       details=dict(d.get("details") or {}))


def call_to(c: ApiCall) -> dict[str, Any]:
    return {"service": c.service, "operation": c.operation, "params": _plain(dict(c.params)),
            "account": c.account, "region": c.region}


def call_from(d: Mapping[str, Any]) -> ApiCall:
    return ApiCall(service=d["service"], operation=d["operation"], params=dict(d["params"]),
                   account=d.get("account"), region=d.get("region"))


def plan_to(p: Plan) -> dict[str, Any]:
    return {
        "id": p.id, "kind": p.kind, "incident_id": p.incident_id,
        "resource": resource_to(p.resource), "account": p.account, "region": p.region,
        "steps": [{"call": call_to(s.call), "bind": dict(s.bind),
                   "tolerate": sorted(s.tolerate)} for s in p.steps],
        "before": _plain(dict(p.before)), "settings": _plain(dict(p.settings)),
        "created_at": _dt(p.created_at),
        "resource_tags": dict(p.resource_tags) if p.resource_tags is not None else None,
        "note": p.note,
    }


def plan_from(d: Mapping[str, Any]) -> Plan:
    created = _parse_dt(d.get("created_at"))
    assert created is not None
    return Plan(
        id=d["id"], kind=d["kind"], incident_id=d["incident_id"],
        resource=resource_from(d["resource"]), account=d["account"], region=d["region"],
        steps=tuple(Step(call_from(s["call"]), bind=dict(s.get("bind") or {}),
                         tolerate=frozenset(s.get("tolerate") or ())) for s in d["steps"]),
        before=dict(d.get("before") or {}), settings=dict(d.get("settings") or {}),
        created_at=created,
        resource_tags=dict(d["resource_tags"]) if d.get("resource_tags") is not None else None,
        note=d.get("note", ""),
    )


def applied_to(a: Applied) -> dict[str, Any]:
    return {"plan": plan_to(a.plan), "calls": [call_to(c) for c in a.calls],
            "outputs": dict(a.outputs), "applied_at": _dt(a.applied_at)}


def applied_from(d: Mapping[str, Any]) -> Applied:
    at = _parse_dt(d.get("applied_at"))
    assert at is not None
    return Applied(plan=plan_from(d["plan"]), calls=tuple(call_from(c) for c in d["calls"]),
                   outputs=dict(d.get("outputs") or {}), applied_at=at)


def record_to(r: ActionRecord) -> dict[str, Any]:
    return {
        "id": r.id, "incident_id": r.incident_id, "kind": r.kind,
        "resource": resource_to(r.resource), "mode": r.mode.value, "status": r.status.value,
        "reason": r.reason, "calls": [call_to(c) for c in r.calls],
        "before": _plain(dict(r.before)), "planned_at": _dt(r.planned_at),
        "applied_at": _dt(r.applied_at), "rollback_hint": r.rollback_hint,
    }


def record_from(d: Mapping[str, Any]) -> ActionRecord:
    return ActionRecord(
        id=d["id"], incident_id=d["incident_id"], kind=d["kind"],
        resource=resource_from(d["resource"]), mode=ActionMode(d["mode"]),
        status=ActionStatus(d["status"]), reason=d.get("reason", ""),
        calls=tuple(call_from(c) for c in d.get("calls", [])),
        before=dict(d.get("before") or {}), planned_at=_parse_dt(d.get("planned_at")),
        applied_at=_parse_dt(d.get("applied_at")), rollback_hint=d.get("rollback_hint", ""),
    )
