"""notify: change nothing; the action record itself goes to the sinks routed for alerts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pipeline.actions.base import Applied, BaseAction, ClientSource, Plan, PlanRequest, Step
from pipeline.actions.config import RESOURCE_TYPES
from pipeline.actions.registry import register


@register
class Notify(BaseAction):
    kind: ClassVar[str] = "notify"
    resource_types: ClassVar[frozenset[str]] = RESOURCE_TYPES
    permissions: ClassVar[frozenset[str]] = frozenset()
    disruptive: ClassVar[bool] = False

    async def plan(self, request: PlanRequest, aws: ClientSource) -> Plan:
        return Plan(id=request.action_id, kind=self.kind, incident_id=request.incident_id,
                    resource=request.resource, account=request.account, region=request.region,
                    steps=(), before={}, settings={}, created_at=request.now,
                    note="alert routed to the sinks")

    async def verify(self, applied: Applied, aws: ClientSource) -> bool:
        return True

    async def rollback_steps(self, applied: Applied, aws: ClientSource) -> Sequence[Step]:
        return []
