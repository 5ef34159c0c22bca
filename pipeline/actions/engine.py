"""The containment decision: policy -> safety checks -> ledger -> mode -> plan/apply/verify.

Order matters and is the safety argument:

1. match policies (pure; nothing matched = nothing to do);
2. incident gates: sample, observe-only, kill switch or pause flag, allowlists;
3. per resource: account/region consistency, exempt tag, credentials for that
   account (none = observe-only);
4. the ledger: a decision already taken is never taken again; an enforce
   decision is *claimed* with a conditional write, and its plan is stored,
   before any call is made;
5. the plan is made from a fresh describe (live exempt tag checked again);
6. approve mode, or an empty blast-radius bucket, sends the plan to a person;
7. apply, then verify by describing the resource again; the ledger records the
   outcome with the before-state that rollback restores.

Replay (``simulate``) downgrades every mode that would act to dry-run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from pipeline import metrics
from pipeline.actions import registry
from pipeline.actions.approvals import APPROVED, PENDING, REJECTED, Approvals, PendingPlan
from pipeline.actions.base import (
    ActionFailed,
    Applied,
    BaseAction,
    InEffect,
    Plan,
    PlanRequest,
    Refused,
    action_id,
)
from pipeline.actions.blast_radius import BlastRadius
from pipeline.actions.codec import (
    applied_from,
    applied_to,
    plan_from,
    plan_to,
    record_from,
    record_to,
)
from pipeline.actions.config import ACTION_KINDS, ContainmentConfig
from pipeline.actions.credentials import AccountSession, CredentialBroker
from pipeline.actions.ledger import (
    AWAITING_APPROVAL,
    CLAIMED,
    FAILED,
    PAUSED_KEY,
    PLANNED,
    ROLLED_BACK,
    ROLLING_BACK,
    SKIPPED,
    SUPERSEDABLE,
    VERIFIED,
    Entry,
    Ledger,
    Reservations,
    is_paused,
)
from pipeline.actions.ledger import REJECTED as LEDGER_REJECTED
from pipeline.actions.policy import Candidate, match_policies
from pipeline.aws import AwsClients
from pipeline.clock import Clock, utc_from_epoch
from pipeline.errors import PermanentError, RetriableError
from pipeline.models import (
    ActionMode,
    ActionRecord,
    ActionStatus,
    ApiCall,
    Incident,
    IncidentPhase,
    ResourceRef,
)
from pipeline.state.base import StateStore

log = logging.getLogger(__name__)

_MODE = {"observe": ActionMode.OBSERVE, "dry-run": ActionMode.DRY_RUN,
         "approve": ActionMode.APPROVE, "enforce": ActionMode.ENFORCE}
_FINAL_FOR_STATUS = {
    ActionStatus.SKIPPED: SKIPPED, ActionStatus.FAILED: FAILED, ActionStatus.VERIFIED: VERIFIED,
    ActionStatus.AWAITING_APPROVAL: AWAITING_APPROVAL, ActionStatus.PLANNED: PLANNED,
}


class OperationRefused(PermanentError):
    """An operator command that cannot be carried out (unknown plan, paused, changed...)."""

    default_reason = "refused"


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ContainmentEngine:
    """Shared by the contain stage and the operator commands (approve, rollback...)."""

    def __init__(self, config: ContainmentConfig, store: StateStore, aws: AwsClients,
                 clock: Clock, *, simulate: bool = False,
                 broker: CredentialBroker | None = None, worker_id: str | None = None,
                 claim_wait: float = 2.0) -> None:
        self.config = config
        self.store = store
        self.aws = aws
        self.clock = clock
        self.simulate = simulate
        self.broker = broker or CredentialBroker(config, aws)
        self.worker_id = worker_id or f"{_worker_id()}:{id(self):x}"
        self.claim_wait = claim_wait
        self.ledger = Ledger(store, clock, ttl=config.ledger_ttl_seconds,
                             claim_timeout=config.claim_timeout_seconds)
        self.approvals = Approvals(store, clock, ttl=config.approval_ttl_seconds)
        self.reservations = Reservations(
            store, ttl=config.approval_ttl_seconds + config.claim_timeout_seconds)
        self.blast_radius = BlastRadius(config.rate_limit, store, clock)
        self._counters: dict[tuple[str, str, str], Any] = {}
        for kind in registry.kinds():
            registry.get(kind)  # fail at start-up, not on the first incident

    # --- bookkeeping --------------------------------------------------------------------------
    def _count(self, kind: str, mode: str, status: str) -> None:
        key = (kind, mode, status)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = metrics.ACTIONS.labels(action=kind, mode=mode,
                                                                 status=status)
        child.inc()

    def _now(self) -> datetime:
        return utc_from_epoch(self.clock.now())

    def _record(  # noqa: PLR0917 - one record's fields, in the record's own order
                self, aid: str, incident_id: str, kind: str, resource: ResourceRef,
                mode: ActionMode, status: ActionStatus, reason: str = "",
                calls: Sequence[ApiCall] = (), before: Mapping[str, Any] | None = None,
                planned_at: datetime | None = None, applied_at: datetime | None = None
                ) -> ActionRecord:
        hint = ""
        if status in (ActionStatus.VERIFIED, ActionStatus.APPLIED, ActionStatus.FAILED) and calls:
            hint = f"riposte rollback {aid}"
        elif status == ActionStatus.AWAITING_APPROVAL:
            hint = f"riposte approve {aid}"
        record = ActionRecord(id=aid, incident_id=incident_id, kind=kind, resource=resource,
                              mode=mode, status=status, reason=reason, calls=tuple(calls),
                              before=dict(before or {}), planned_at=planned_at,
                              applied_at=applied_at, rollback_hint=hint)
        self._count(kind, mode.value, status.value)
        return record

    async def _gate(self, incident: Incident) -> str | None:
        """Reasons that stop every action for this incident (fail closed)."""
        cfg = self.config
        trigger = incident.trigger
        if incident.sample or (trigger is not None and trigger.sample):
            return "sample finding: never acted on"
        if incident.observe_only or (trigger is not None and trigger.observe_only):
            why = incident.observe_reason or (trigger.observe_reason if trigger else None)
            return f"observe-only: {why or 'failed a trust check'}"
        if cfg.kill_switch:
            return "kill switch is on (config)"
        if await is_paused(self.store):
            return "containment is paused (riposte actions resume to re-enable)"
        if cfg.accounts and incident.account not in cfg.accounts:
            return f"account {incident.account} is not in the containment allowlist"
        source = trigger.source if trigger is not None else None
        if cfg.sources and source not in cfg.sources:
            return f"event source {source} is not in the containment allowlist"
        detail_type = trigger.detail_type if trigger is not None else None
        if cfg.detail_types and detail_type not in cfg.detail_types:
            return f"detail-type {detail_type} is not in the containment allowlist"
        return None

    # --- the stage's entry point --------------------------------------------------------------
    async def contain(self, incident: Incident) -> tuple[Incident, list[ActionRecord]]:
        """Decide for one incident; returns it updated and the records to emit (new ones)."""
        if self.config.rollback_when_resolved and _resolved(incident):
            return await self._recover_incident(incident)
        candidates = match_policies(self.config, incident)
        if not candidates:
            self._count("none", self.config.mode, ActionStatus.SKIPPED.value)
            return incident, []
        gate = await self._gate(incident)
        records: list[ActionRecord] = []
        emitted: list[ActionRecord] = []
        for cand in candidates:
            record, fresh = await self._decide(incident, cand, gate)
            records.append(record)
            if fresh:
                emitted.append(record)
        return self._updated(incident, records, emitted), emitted

    async def _recover_incident(self, incident: Incident
                                ) -> tuple[Incident, list[ActionRecord]]:
        """Every finding is closed: restore what was changed, once, and say so."""
        if self.simulate or self.config.kill_switch or await is_paused(self.store):
            return incident, []
        emitted: list[ActionRecord] = []
        entries = [e for e in await self.ledger.for_subject(incident.id)
                   if e.state in (VERIFIED, FAILED) and e.value.get("applied")]
        entries.sort(key=lambda e: str(e.value["applied"].get("applied_at", "")), reverse=True)
        for entry in entries:
            try:
                emitted.append(await self._rollback_entry(entry))
            except OperationRefused as exc:
                log.warning("automatic rollback skipped: %s", exc,
                            extra={"action_id": entry.action_id, "incident_id": incident.id})
        if not emitted:
            return incident, []
        if incident.contained_at:
            metrics.TIME_TO_RECOVER.observe(max(0.0, self.clock.now() - incident.contained_at))
        by_id = {a.id: a for a in incident.actions}
        by_id.update({r.id: r for r in emitted})
        return replace(incident, actions=tuple(by_id.values()),
                       phase=IncidentPhase.RECOVERED), emitted

    def _updated(self, incident: Incident, records: Sequence[ActionRecord],
                 emitted: Sequence[ActionRecord]) -> Incident:
        by_id = {a.id: a for a in incident.actions}
        for r in records:
            by_id[r.id] = r
        actions = tuple(by_id.values())
        if incident.phase != IncidentPhase.DETECTED:
            return replace(incident, actions=actions)
        enforced = [r for r in records if r.mode in (ActionMode.ENFORCE, ActionMode.APPROVE)
                    and registry.get(r.kind).disruptive]
        contained = bool(enforced) and all(r.status == ActionStatus.VERIFIED for r in enforced)
        if not contained:
            return replace(incident, actions=actions)
        now = self.clock.now()
        if any(r.status == ActionStatus.VERIFIED for r in emitted):
            self._observe_time_to_contain(incident, now)
        return replace(incident, actions=actions, phase=IncidentPhase.CONTAINED, contained_at=now)

    def _observe_time_to_contain(self, incident: Incident, now: float) -> None:
        trigger = incident.trigger
        created = (trigger.created_at or trigger.time) if trigger is not None else \
            incident.first_seen
        metrics.TIME_TO_CONTAIN.labels(basis="event").observe(max(0.0, now - created.timestamp()))
        arrival = (trigger.received_at if trigger is not None and trigger.received_at else
                   incident.detected_at)
        if arrival:
            metrics.TIME_TO_CONTAIN.labels(basis="arrival").observe(max(0.0, now - arrival))

    # --- one decision -------------------------------------------------------------------------
    async def _decide(self, incident: Incident, cand: Candidate, gate: str | None
                      ) -> tuple[ActionRecord, bool]:
        kind, resource = cand.spec.kind, cand.resource
        aid = action_id(incident.id, kind, resource.key)
        mode_name = cand.mode
        if self.simulate and mode_name in ("enforce", "approve"):
            mode_name = "dry-run"
        mode = _MODE[mode_name]

        def skip(reason: str) -> tuple[ActionRecord, bool]:
            log.info("containment skipped: %s", reason,
                     extra={"action": kind, "action_id": aid, "incident_id": incident.id,
                            "resource": resource.key})
            return self._record(aid, incident.id, kind, resource, mode, ActionStatus.SKIPPED,
                                reason), True

        if gate is not None:
            return skip(gate)
        account = resource.account or incident.account
        region = resource.region or incident.region
        if resource.account and incident.account and resource.account != incident.account:
            return skip(f"resource account {resource.account} differs from the incident's "
                        f"{incident.account}")
        if not account or not region:
            return skip("the incident names no account or region to act in")
        if self.config.regions and region not in self.config.regions:
            return skip(f"region {region} is not in the containment allowlist")
        if self.config.accounts and account not in self.config.accounts:
            return skip(f"account {account} is not in the containment allowlist")
        if self.config.exempt_tag_key in resource.tags:
            return skip(f"resource is tagged {self.config.exempt_tag_key} (exempt)")
        if mode == ActionMode.OBSERVE:
            return self._record(aid, incident.id, kind, resource, mode, ActionStatus.RECORDED,
                                f"policy {cand.policy}: observe only"), True
        session = await self.broker.session(account)
        if session is None:
            return skip(f"no containment role configured for account {account}: observe-only")
        key = self.ledger.key(incident.id, kind, resource.key)
        action = registry.get(kind)
        request = PlanRequest(
            action_id=aid, incident_id=incident.id, resource=resource, account=account,
            region=region, settings=cand.spec.typed_settings(),
            quarantine=self.config.quarantine, now=self._now(),
            attributes=dict(incident.trigger.attributes) if incident.trigger else {},
            reservations=self.reservations, commit=mode != ActionMode.DRY_RUN)
        for _ in range(3):
            existing = await self.ledger.read(key)
            reopen = existing is not None and existing.state == AWAITING_APPROVAL and \
                mode != ActionMode.DRY_RUN and await self.approvals.get(aid) is None
            if reopen:
                # Nobody decided before the plan expired: decide afresh (bucket included).
                log.info("approval expired; deciding again", extra={"action_id": aid})
            elif existing is not None and (mode == ActionMode.DRY_RUN
                                           or existing.state not in SUPERSEDABLE | {CLAIMED}):
                return self._duplicate(existing, kind, mode), False
            if existing is not None and existing.state == CLAIMED and \
                    not self.ledger.stale(existing):
                done = await self._wait_for(key)
                if done is None:
                    raise RetriableError(f"{kind} on {resource.key} is being applied by another "
                                         "worker", reason="action_in_progress",
                                         component="contain")
                return self._duplicate(done, kind, mode), False
            if mode == ActionMode.DRY_RUN:
                return await self._dry_run(key, existing, action, request=request,
                                          cand=cand, mode=mode, session=session)
            recovering = existing is not None and existing.state == CLAIMED
            claim = await self.ledger.write(key, existing.version if existing else 0, {
                "state": CLAIMED, "action_id": aid, "owner": self.worker_id,
                "claimed_at": self.clock.now(), "mode": mode.value, "policy": cand.policy,
                "plan": existing.value.get("plan") if recovering and existing else None,
                "attributes": _plain_attributes(request.attributes),
                "record": record_to(self._bare(aid, incident.id, kind, resource, mode)),
            })
            if claim is None:
                continue  # another worker wrote first: look again
            await self.ledger.index(aid, key)
            if recovering and claim.value.get("plan"):
                return await self._recover(claim, action, session, mode)
            return await self._plan_and_act(claim, action, request=request, mode=mode,
                                            session=session, cand=cand)
        raise RetriableError(f"ledger contention on {key}", reason="ledger_contention",
                             component="contain")

    def _bare(self, aid: str, incident_id: str, kind: str, resource: ResourceRef,
              mode: ActionMode) -> ActionRecord:
        return ActionRecord(id=aid, incident_id=incident_id, kind=kind, resource=resource,
                            mode=mode, status=ActionStatus.PLANNED)

    def _duplicate(self, entry: Entry, kind: str, mode: ActionMode) -> ActionRecord:
        self._count(kind, mode.value, "duplicate")
        return record_from(entry.value["record"])

    async def _wait_for(self, key: str) -> Entry | None:
        """Wait briefly for another worker's claim to finish; None if it does not."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.claim_wait
        while loop.time() < deadline:
            await asyncio.sleep(0.05)
            entry = await self.ledger.read(key)
            if entry is not None and entry.state != CLAIMED:
                return entry
        return None

    async def _dry_run(self, key: str, existing: Entry | None, action: BaseAction, *,
                       request: PlanRequest, cand: Candidate, mode: ActionMode,
                       session: AccountSession) -> tuple[ActionRecord, bool]:
        kind, resource, aid = cand.spec.kind, cand.resource, request.action_id
        plan: Plan | None = None
        try:
            made = await action.plan(request, session)
        except Refused as exc:
            record = self._record(aid, request.incident_id, kind, resource, mode,
                                  ActionStatus.SKIPPED, exc.reason)
            state = SKIPPED
        except ActionFailed as exc:
            record = self._record(aid, request.incident_id, kind, resource, mode,
                                  ActionStatus.FAILED, f"planning failed: {exc}")
            self._alert(record, exc)
            return record, True
        else:
            plan = made
            if self._exempt_live(plan):
                record = self._record(aid, request.incident_id, kind, resource, mode,
                                      ActionStatus.SKIPPED, self._exempt_reason())
                state = SKIPPED
            else:
                record = self._record(aid, request.incident_id, kind, resource, mode,
                                      ActionStatus.PLANNED, plan.note or f"policy {cand.policy}",
                                      calls=plan.calls, before=plan.before,
                                      planned_at=plan.created_at)
                state = PLANNED
        written = await self.ledger.write(key, existing.version if existing else 0, {
            "state": state, "action_id": aid, "mode": mode.value, "policy": cand.policy,
            "record": record_to(record), "plan": plan_to(plan) if plan else None})
        if written is None:
            again = await self.ledger.read(key)
            if again is not None:
                return self._duplicate(again, kind, mode), False
        return record, True

    def _exempt_live(self, plan: Plan) -> bool:
        return plan.resource_tags is not None and self.config.exempt_tag_key in plan.resource_tags

    def _exempt_reason(self) -> str:
        return f"resource is tagged {self.config.exempt_tag_key} (exempt; seen live)"

    async def _finish(self, claim: Entry, record: ActionRecord, *, plan: Plan | None = None,
                      applied: Applied | None = None, state: str | None = None) -> ActionRecord:
        value = {**claim.value, "state": state or _FINAL_FOR_STATUS[record.status],
                 "record": record_to(record)}
        if plan is not None:
            value["plan"] = plan_to(plan)
        if applied is not None:
            value["applied"] = applied_to(applied)
        if await self.ledger.write(claim.key, claim.version, value) is None:
            log.error("ledger entry changed under a claim; outcome kept in the record only",
                      extra={"action_id": record.id, "ledger_key": claim.key})
        return record

    async def _plan_and_act(self, claim: Entry, action: BaseAction, *, request: PlanRequest,
                            mode: ActionMode, session: AccountSession, cand: Candidate
                            ) -> tuple[ActionRecord, bool]:
        kind, resource, aid = action.kind, request.resource, request.action_id
        try:
            plan = await action.plan(request, session)
        except RetriableError:
            await self.ledger.release(claim)
            raise
        except InEffect as exc:
            record = self._record(aid, request.incident_id, kind, resource, mode,
                                  ActionStatus.VERIFIED, f"already in effect: {exc.reason}")
            return await self._finish(claim, record), True
        except Refused as exc:
            record = self._record(aid, request.incident_id, kind, resource, mode,
                                  ActionStatus.SKIPPED, exc.reason)
            return await self._finish(claim, record), True
        except ActionFailed as exc:
            record = self._record(aid, request.incident_id, kind, resource, mode,
                                  ActionStatus.FAILED, f"planning failed: {exc}")
            self._alert(record, exc)
            return await self._finish(claim, record), True
        if self._exempt_live(plan):
            record = self._record(aid, request.incident_id, kind, resource, mode,
                                  ActionStatus.SKIPPED, self._exempt_reason())
            return await self._finish(claim, record, plan=plan), True
        # The plan is stored before any call is made: a crash from here on is recovered
        # by re-describing the resource against this plan.
        stored = await self.ledger.write(claim.key, claim.version,
                                         {**claim.value, "plan": plan_to(plan)})
        if stored is None:
            raise RetriableError(f"lost the ledger claim on {claim.key}",
                                 reason="ledger_contention", component="contain")
        if mode == ActionMode.APPROVE:
            return await self._to_approval(stored, plan, mode,
                                           f"policy {cand.policy} requires approval"), True
        if action.disruptive and not await self.blast_radius.take(resource.type):
            return await self._to_approval(stored, plan, mode,
                                           self.blast_radius.reason(resource.type)), True
        return await self._execute(stored, action, plan, session, mode), True

    async def _to_approval(self, claim: Entry, plan: Plan, mode: ActionMode, reason: str
                           ) -> ActionRecord:
        await self.approvals.submit(plan, claim.key, reason)
        record = self._record(plan.id, plan.incident_id, plan.kind, plan.resource, mode,
                              ActionStatus.AWAITING_APPROVAL, reason, calls=plan.calls,
                              before=plan.before, planned_at=plan.created_at)
        log.warning("containment waiting for approval: %s", reason,
                    extra={"action": plan.kind, "action_id": plan.id,
                           "incident_id": plan.incident_id})
        return await self._finish(claim, record, plan=plan)

    async def _execute(self, claim: Entry, action: BaseAction, plan: Plan,
                       session: AccountSession, mode: ActionMode, *, note: str = ""
                       ) -> ActionRecord:
        if self.simulate:
            raise PermanentError("refusing to apply while simulating", reason="simulate",
                                 component="contain")
        if self.config.kill_switch or await is_paused(self.store):
            # Paused between the gate and here: the last moment to say no.
            record = self._record(plan.id, plan.incident_id, plan.kind, plan.resource, mode,
                                  ActionStatus.SKIPPED, "containment was paused before apply")
            return await self._finish(claim, record, plan=plan)
        try:
            applied = await action.apply(plan, session)
        except RetriableError:
            # Some steps may have run. Keep the claim and its plan (the true before-state)
            # but mark it stale, so the redelivery recovers from this plan at once instead
            # of re-planning from a half-changed resource.
            await self._interrupted(claim, plan)
            raise
        except ActionFailed as exc:
            record = self._record(plan.id, plan.incident_id, plan.kind, plan.resource, mode,
                                  ActionStatus.FAILED, f"apply failed: {exc}",
                                  calls=plan.calls, before=plan.before,
                                  planned_at=plan.created_at)
            self._alert(record, exc)
            return await self._finish(claim, record, plan=plan)
        reason = note or plan.note or "applied and verified"
        try:
            ok = await action.verify(applied, session)
        except RetriableError:
            await self._interrupted(claim, plan)
            raise
        except (ActionFailed, Refused) as exc:
            ok, reason = False, f"verify failed: {exc}"
        else:
            if not ok:
                reason = "verify failed: the resource is not in the state the plan leads to"
        status = ActionStatus.VERIFIED if ok else ActionStatus.FAILED
        record = self._record(plan.id, plan.incident_id, plan.kind, plan.resource, mode, status,
                              reason,
                              calls=applied.calls, before=plan.before,
                              planned_at=plan.created_at, applied_at=applied.applied_at)
        if not ok:
            log.error("containment not verified: %s", reason,
                      extra={"action": plan.kind, "action_id": plan.id})
        return await self._finish(claim, record, plan=plan, applied=applied)

    async def _interrupted(self, claim: Entry, plan: Plan) -> None:
        marked = await self.ledger.write(claim.key, claim.version, {
            **claim.value, "plan": plan_to(plan), "claimed_at": 0.0, "interrupted": True})
        if marked is None:
            log.error("could not mark an interrupted action; it recovers after the claim "
                      "timeout", extra={"action_id": plan.id, "ledger_key": claim.key})

    async def _recover(self, claim: Entry, action: BaseAction, session: AccountSession,
                       mode: ActionMode) -> tuple[ActionRecord, bool]:
        """A worker died after claiming: re-describe before doing anything again."""
        plan = plan_from(claim.value["plan"])
        guess = Applied(plan=plan, calls=plan.calls, outputs={}, applied_at=self._now())
        try:
            in_effect = await action.verify(guess, session)
        except (ActionFailed, Refused):
            in_effect = False
        log.warning("recovering an interrupted action (in effect: %s)", in_effect,
                    extra={"action": plan.kind, "action_id": plan.id})
        if in_effect:
            self._count(plan.kind, mode.value, "recovered")
            record = self._record(plan.id, plan.incident_id, plan.kind, plan.resource, mode,
                                  ActionStatus.VERIFIED,
                                  "recovered after an interrupted apply: already in effect, "
                                  "not applied again", calls=plan.calls, before=plan.before,
                                  planned_at=plan.created_at, applied_at=guess.applied_at)
            return await self._finish(claim, record, plan=plan, applied=guess), True
        return await self._execute(claim, action, plan, session, mode,
                                   note="re-applied after an interrupted apply"), True

    def _alert(self, record: ActionRecord, exc: ActionFailed) -> None:
        level = logging.ERROR
        log.log(level, "containment failed%s: %s",
                " (access denied: check the containment role's permissions)"
                if exc.access_denied else "", exc,
                extra={"action": record.kind, "action_id": record.id,
                       "incident_id": record.incident_id, "resource": record.resource.key,
                       "error_code": exc.code})
        metrics.error("contain", "access_denied" if exc.access_denied else exc.code).inc()

    # --- operator commands --------------------------------------------------------------------
    async def _require_running(self) -> None:
        if self.config.kill_switch:
            raise OperationRefused("the kill switch is on: nothing may be applied")
        if await is_paused(self.store):
            raise OperationRefused("containment is paused: run `riposte actions resume` first")

    async def approve(self, plan_id: str, *, approver: str = "operator") -> ActionRecord:
        await self._require_running()
        pending = await self.approvals.get(plan_id)
        if pending is None:
            raise OperationRefused(f"no plan {plan_id} (unknown or expired)")
        if pending.state != PENDING:
            raise OperationRefused(f"plan {plan_id} was already {pending.state}")
        entry = await self.ledger.read(pending.ledger_key)
        if entry is None or entry.state != AWAITING_APPROVAL:
            raise OperationRefused(f"plan {plan_id}: its ledger entry is "
                                   f"{entry.state if entry else 'gone'}, not awaiting approval")
        plan = pending.plan
        action = registry.get(plan.kind)
        session = await self.broker.session(plan.account)
        if session is None:
            raise OperationRefused(f"no containment role for account {plan.account}")
        settings = ACTION_KINDS[plan.kind].settings.model_validate(
            {k: v for k, v in plan.settings.items()
             if k in ACTION_KINDS[plan.kind].settings.model_fields})
        request = PlanRequest(
            action_id=plan.id, incident_id=plan.incident_id, resource=plan.resource,
            account=plan.account, region=plan.region, settings=settings,
            quarantine=self.config.quarantine, now=self._now(),
            attributes=dict(entry.value.get("attributes") or {}),
            reservations=self.reservations, commit=True)
        mode = ActionMode.APPROVE
        try:
            fresh = await action.plan(request, session)
        except InEffect as exc:
            await self.approvals.decide(pending, APPROVED)
            record = self._record(plan.id, plan.incident_id, plan.kind, plan.resource, mode,
                                  ActionStatus.VERIFIED, f"already in effect: {exc.reason}")
            await self._finish(entry, record)
            return record
        except Refused as exc:
            await self.approvals.decide(pending, REJECTED)
            record = self._record(plan.id, plan.incident_id, plan.kind, plan.resource, mode,
                                  ActionStatus.SKIPPED, f"at approval: {exc.reason}")
            await self._finish(entry, record)
            return record
        if self._exempt_live(fresh):
            await self.approvals.decide(pending, REJECTED)
            record = self._record(plan.id, plan.incident_id, plan.kind, plan.resource, mode,
                                  ActionStatus.SKIPPED, self._exempt_reason())
            await self._finish(entry, record)
            return record
        if _stable(fresh.before, action) != _stable(plan.before, action):
            await self.approvals.submit(fresh, pending.ledger_key, pending.reason)
            raise OperationRefused(f"plan {plan_id}: the resource changed since it was planned; "
                                   "the plan was refreshed, review it and approve again")
        if not await self.approvals.decide(pending, APPROVED, plan=fresh):
            raise OperationRefused(f"plan {plan_id} was decided by someone else meanwhile")
        claim = await self.ledger.write(entry.key, entry.version, {
            **entry.value, "state": CLAIMED, "owner": self.worker_id,
            "claimed_at": self.clock.now(), "plan": plan_to(fresh), "approved_by": approver})
        if claim is None:
            raise OperationRefused(f"plan {plan_id}: ledger entry changed meanwhile")
        log.warning("plan approved by %s", approver,
                    extra={"action": plan.kind, "action_id": plan.id})
        return await self._execute(claim, action, fresh, session, mode)

    async def reject(self, plan_id: str, *, reason: str = "rejected by an operator"
                     ) -> ActionRecord:
        pending = await self.approvals.get(plan_id)
        if pending is None:
            raise OperationRefused(f"no plan {plan_id} (unknown or expired)")
        if pending.state != PENDING or not await self.approvals.decide(pending, REJECTED):
            raise OperationRefused(f"plan {plan_id} was already {pending.state}")
        plan = pending.plan
        record = self._record(plan.id, plan.incident_id, plan.kind, plan.resource,
                              ActionMode.APPROVE, ActionStatus.REJECTED, reason,
                              calls=plan.calls, before=plan.before, planned_at=plan.created_at)
        entry = await self.ledger.read(pending.ledger_key)
        if entry is not None:
            await self._finish(entry, record, state=LEDGER_REJECTED)
        return record

    async def pending(self) -> list[PendingPlan]:
        return await self.approvals.pending()

    async def rollback(self, action_id_: str) -> ActionRecord:
        key = await self.ledger.key_for(action_id_)
        entry = await self.ledger.read(key) if key else None
        if entry is None:
            raise OperationRefused(f"no action {action_id_} in the ledger")
        return await self._rollback_entry(entry)

    async def rollback_incident(self, incident_id: str) -> list[ActionRecord]:
        entries = [e for e in await self.ledger.for_subject(incident_id)
                   if e.value.get("applied") or e.state == ROLLED_BACK]
        # Undo in reverse order of application.
        entries.sort(key=lambda e: str((e.value.get("applied") or {}).get("applied_at", "")),
                     reverse=True)
        return [await self._rollback_entry(e) for e in entries]

    async def _rollback_entry(self, entry: Entry) -> ActionRecord:
        if entry.state == ROLLED_BACK:
            return record_from(entry.value["record"])  # idempotent
        interrupted = entry.state == ROLLING_BACK and self.clock.now() - float(
            entry.value.get("claimed_at", 0.0)) >= self.config.claim_timeout_seconds
        if interrupted:
            # A rollback died half-way; its steps are computed from a fresh describe,
            # so running it again finishes the job without undoing anything twice.
            entry = Entry(entry.key, entry.version, {
                **entry.value, "state": entry.value.get("previous_state", VERIFIED)})
        elif entry.state not in (VERIFIED, FAILED) or not entry.value.get("applied"):
            raise OperationRefused(f"action {entry.action_id} is {entry.state}: nothing was "
                                   "applied, so there is nothing to roll back")
        applied = applied_from(entry.value["applied"])
        plan = applied.plan
        claim = await self.ledger.write(entry.key, entry.version, {
            **entry.value, "state": ROLLING_BACK, "previous_state": entry.state,
            "claimed_at": self.clock.now(), "owner": self.worker_id})
        if claim is None:
            raise OperationRefused(f"action {entry.action_id} changed meanwhile; try again")
        session = await self.broker.session(plan.account)
        if session is None:
            await self.ledger.write(claim.key, claim.version, entry.value)
            raise OperationRefused(f"no containment role for account {plan.account}")
        action = registry.get(plan.kind)
        try:
            calls = await action.rollback(applied, session)
        except BaseException:
            await self.ledger.write(claim.key, claim.version, entry.value)
            raise
        old = record_from(entry.value["record"])
        record = self._record(old.id, old.incident_id, old.kind, old.resource, old.mode,
                              ActionStatus.ROLLED_BACK, "before-state restored"
                              if calls else "nothing to restore (already in the before-state)",
                              calls=calls, before=plan.before, planned_at=old.planned_at,
                              applied_at=self._now())
        await self._finish(claim, record, state=ROLLED_BACK)
        log.warning("action rolled back", extra={"action": plan.kind, "action_id": old.id})
        return record

    async def list_actions(self, *, status: str | None = None, limit: int | None = None
                           ) -> list[dict[str, Any]]:
        """Ledger entries, newest decisions included; ``status`` filters on the ledger state."""
        out = []
        for entry in await self.ledger.entries():
            if status is not None and entry.state != status:
                continue
            record = entry.value.get("record") or {}
            resource = record.get("resource") or {}
            out.append({"id": entry.action_id, "status": entry.state,
                        "kind": record.get("kind"), "incident_id": record.get("incident_id"),
                        "resource": f"{resource.get('type')}:{resource.get('id')}",
                        "account": resource.get("account"), "mode": record.get("mode"),
                        "reason": record.get("reason", ""),
                        "rollback_hint": record.get("rollback_hint", ""),
                        "calls": [f"{c['service']}:{c['operation']}"
                                  for c in record.get("calls", [])]})
            if limit is not None and len(out) >= limit:
                break
        return out

    async def escalate_overdue(self) -> list[ActionRecord]:
        """``escalate`` records for decisions not carried out within the SLA, each once.

        Meant to run periodically (any worker; the state store makes it once fleet-wide).
        """
        sla = self.config.sla_seconds
        if sla is None:
            return []
        now = self.clock.now()
        out: list[ActionRecord] = []
        for entry in await self.ledger.entries():
            if entry.state not in (AWAITING_APPROVAL, FAILED, CLAIMED):
                continue
            old = record_from(entry.value["record"])
            since = old.planned_at.timestamp() if old.planned_at else \
                float(entry.value.get("updated", now))
            if now - since < sla:
                continue
            marker = await self.store.put_if_absent(f"escalated:{old.id}", {"at": now},
                                                    ttl=self.config.ledger_ttl_seconds)
            if marker is None:
                continue  # escalated before, by this or another worker
            out.append(self._record(
                f"{old.id}-sla", old.incident_id, "escalate", old.resource, old.mode,
                ActionStatus.RECORDED,
                f"not contained within the {sla:g}s SLA: {old.kind} is {entry.state}"
                + (f" ({old.reason})" if old.reason else ""), planned_at=old.planned_at))
            log.warning("containment SLA missed", extra={"action_id": old.id,
                                                         "incident_id": old.incident_id})
        return out

    async def set_paused(self, paused: bool, *, by: str = "operator") -> dict[str, Any]:
        flag = {"paused": paused, "at": self.clock.now(), "by": by}
        await self.store.put(PAUSED_KEY, flag)
        log.warning("containment %s by %s", "paused" if paused else "resumed", by)
        return flag


_CLOSED = frozenset({"ARCHIVED", "RESOLVED", "CLOSED", "SUPPRESSED"})


def _resolved(incident: Incident) -> bool:
    return bool(incident.findings) and all((f.status or "").upper() in _CLOSED
                                           for f in incident.findings)


def _stable(before: Mapping[str, Any], action: BaseAction) -> dict[str, Any]:
    return {k: v for k, v in before.items() if k not in action.volatile_before}


def _plain_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Only the scalar facts the actions read (a domain name), small enough for the ledger."""
    return {k: v for k, v in attributes.items()
            if isinstance(v, str | int | float | bool) and len(str(v)) <= 1024}
