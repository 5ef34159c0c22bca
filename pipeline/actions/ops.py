"""Operator commands behind `riposte actions list|pause|resume`, `approve`, `reject`, `rollback`.

Each takes the same ``RuntimeContext`` the service runs with (same state store,
same credentials), so a person's decision goes through the same ledger, safety
checks and verification as an automatic one.
"""

from __future__ import annotations

from typing import Any

from pipeline.actions.engine import ContainmentEngine, OperationRefused
from pipeline.actions.ledger import is_paused
from pipeline.context import RuntimeContext
from pipeline.models import ActionRecord

__all__ = ["OperationRefused", "approve", "escalate_overdue", "list_actions", "pause", "paused",
           "pending_plans", "reject", "resume", "rollback"]


def _engine(ctx: RuntimeContext) -> ContainmentEngine:
    from pipeline.stages.contain import engine_for

    return engine_for(ctx)


async def list_actions(ctx: RuntimeContext, *, status: str | None = None,
                       limit: int | None = None) -> list[dict[str, Any]]:
    """Ledger entries as plain dicts (``id``, ``status``, ``kind``, ``resource``...)."""
    return await _engine(ctx).list_actions(status=status, limit=limit)


async def pending_plans(ctx: RuntimeContext) -> list[dict[str, Any]]:
    """Plans waiting for `riposte approve`/`reject` that have not expired."""
    return [p.summary() for p in await _engine(ctx).pending()]


async def approve(ctx: RuntimeContext, plan_id: str, *, approver: str = "operator"
                  ) -> ActionRecord:
    return await _engine(ctx).approve(plan_id, approver=approver)


async def reject(ctx: RuntimeContext, plan_id: str, *, reason: str = "rejected by an operator"
                 ) -> ActionRecord:
    return await _engine(ctx).reject(plan_id, reason=reason)


async def rollback(ctx: RuntimeContext, *, action_id: str | None = None,
                   incident_id: str | None = None) -> list[ActionRecord]:
    """Restore the before-state of one action, or of every applied action of an incident."""
    if (action_id is None) == (incident_id is None):
        raise OperationRefused("give exactly one of action_id or incident_id")
    engine = _engine(ctx)
    if action_id is not None:
        return [await engine.rollback(action_id)]
    assert incident_id is not None
    return await engine.rollback_incident(incident_id)


async def escalate_overdue(ctx: RuntimeContext) -> list[ActionRecord]:
    """``escalate`` action items for decisions past ``containment.sla_seconds`` (once each);
    send them through the fan-out so the alert sinks see them."""
    return await _engine(ctx).escalate_overdue()


async def pause(ctx: RuntimeContext, *, by: str = "operator") -> dict[str, Any]:
    """Stop all enforcement fleet-wide (the state-store flag every worker checks)."""
    return await _engine(ctx).set_paused(True, by=by)


async def resume(ctx: RuntimeContext, *, by: str = "operator") -> dict[str, Any]:
    return await _engine(ctx).set_paused(False, by=by)


async def paused(ctx: RuntimeContext) -> bool:
    return await is_paused(ctx.store)
