"""Plans waiting for a person: stored with an expiry, approved or rejected exactly once.

A plan lands here when its policy's mode is ``approve`` or when the blast-radius
limit is exhausted. The entry expires after ``approval_ttl_seconds``; an expired
plan can no longer be approved (the world it described has moved on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.actions.base import Plan
from pipeline.actions.codec import plan_from, plan_to
from pipeline.clock import Clock
from pipeline.state.base import StateStore

APPROVAL_PREFIX = "approval:"
PENDING = "pending"
APPROVED = "approved"
REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class PendingPlan:
    plan_id: str
    plan: Plan
    ledger_key: str
    reason: str
    state: str
    created: float
    expires_at: float
    version: int

    def summary(self) -> dict[str, Any]:
        return {"plan_id": self.plan_id, "kind": self.plan.kind,
                "incident_id": self.plan.incident_id, "resource": self.plan.resource.key,
                "account": self.plan.account, "region": self.plan.region,
                "reason": self.reason, "state": self.state, "expires_at": self.expires_at,
                "calls": [f"{c.service}:{c.operation}" for c in self.plan.calls]}


class Approvals:
    def __init__(self, store: StateStore, clock: Clock, *, ttl: float) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl

    @staticmethod
    def key(plan_id: str) -> str:
        return f"{APPROVAL_PREFIX}{plan_id}"

    async def submit(self, plan: Plan, ledger_key: str, reason: str) -> PendingPlan:
        now = self.clock.now()
        value = {"plan": plan_to(plan), "ledger_key": ledger_key, "reason": reason,
                 "state": PENDING, "created": now, "expires_at": now + self.ttl}
        stored = await self.store.put(self.key(plan.id), value, ttl=self.ttl)
        return self._parse(plan.id, stored.value, stored.version)

    def _parse(self, plan_id: str, value: dict[str, Any], version: int) -> PendingPlan:
        return PendingPlan(plan_id=plan_id, plan=plan_from(value["plan"]),
                           ledger_key=str(value["ledger_key"]), reason=str(value["reason"]),
                           state=str(value["state"]), created=float(value["created"]),
                           expires_at=float(value["expires_at"]), version=version)

    async def get(self, plan_id: str) -> PendingPlan | None:
        stored = await self.store.get(self.key(plan_id))
        if stored is None or float(stored.value["expires_at"]) <= self.clock.now():
            return None
        return self._parse(plan_id, stored.value, stored.version)

    async def pending(self) -> list[PendingPlan]:
        now = self.clock.now()
        return [self._parse(s.key[len(APPROVAL_PREFIX):], s.value, s.version)
                for s in await self.store.scan(APPROVAL_PREFIX)
                if s.value.get("state") == PENDING and float(s.value["expires_at"]) > now]

    async def decide(self, pending: PendingPlan, state: str, *, plan: Plan | None = None
                     ) -> bool:
        """Move a pending plan to ``state`` once; False if someone decided it first."""
        value = {"plan": plan_to(plan or pending.plan), "ledger_key": pending.ledger_key,
                 "reason": pending.reason, "state": state, "created": pending.created,
                 "expires_at": pending.expires_at}
        remaining = max(1.0, pending.expires_at - self.clock.now())
        written = await self.store.compare_and_set(self.key(pending.plan_id), pending.version,
                                                   value, ttl=remaining)
        return written is not None
