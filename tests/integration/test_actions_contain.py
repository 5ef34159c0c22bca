"""The contain stage's safety properties end to end against the moto server.

Blast radius, exactly-once under concurrent redelivery to two workers sharing
one state file, crash recovery, approval, cross-account roles, fail-closed gates,
replay, and AWS errors (throttling and access denied come from a local fake of
the IAM query API: moto never throttles and does not enforce IAM).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import web

from pipeline import metrics
from pipeline.actions import ops, registry
from pipeline.actions.base import PlanRequest, action_id
from pipeline.actions.codec import plan_to, record_to
from pipeline.actions.config import NoSettings
from pipeline.actions.credentials import CredentialBroker
from pipeline.actions.engine import OperationRefused
from pipeline.actions.ledger import CLAIMED, Ledger
from pipeline.aws import AwsClients
from pipeline.errors import RetriableError
from pipeline.models import (
    ActionMode,
    ActionRecord,
    ActionStatus,
    Incident,
    IncidentPhase,
    ResourceRef,
)
from pipeline.stages.contain import build
from pipeline.state.dynamodb import DynamoDbStore
from pipeline.state.memory import MemoryStore
from pipeline.state.sqlite import SqliteStore
from tests.integration.actions_support import (
    HOME,
    REGION,
    FixedClock,
    containment,
    context,
    incident,
    uid,
)
from tests.loopback import start_app

pytestmark = pytest.mark.integration

ROOT = str(Path(__file__).resolve().parents[2])
OTHER = "222222222222"
UNCONFIGURED = "333333333333"


def new_key(iam: Any) -> tuple[str, str]:
    user = uid("u-")
    iam.create_user(UserName=user)
    return user, iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]


def key_ref(user: str, key: str, account: str = HOME, **kw: Any) -> ResourceRef:
    return ResourceRef(type="iam.access_key", id=key, account=account,
                       details={"user_name": user}, **kw)


def status_of(iam: Any, user: str, key: str) -> str:
    return str(next(k["Status"] for k in iam.list_access_keys(UserName=user)[
        "AccessKeyMetadata"] if k["AccessKeyId"] == key))


def records(out: Any) -> list[ActionRecord]:
    return [r for r in out if isinstance(r, ActionRecord)]


KEY_POLICY = ["iam.deactivate_access_key"]


async def test_fifty_incidents_in_a_minute_five_applied_fortyfive_await_approval(
        boto: Any, aws: Any) -> None:
    iam = boto("iam")
    keys = [new_key(iam) for _ in range(50)]
    clock = FixedClock()
    ctx = context(containment(KEY_POLICY, rate_limit={"actions_per_minute": 5}), MemoryStore(),
                  aws, clock)
    stage = build(ctx.config, ctx)

    outs = [records(await stage.process(incident(key_ref(u, k)))) for u, k in keys]

    statuses = [r[0].status for r in outs]
    assert statuses.count(ActionStatus.VERIFIED) == 5
    assert statuses.count(ActionStatus.AWAITING_APPROVAL) == 45
    assert all("blast-radius" in r[0].reason for r in outs
               if r[0].status == ActionStatus.AWAITING_APPROVAL)
    inactive = [k for u, k in keys if status_of(iam, u, k) == "Inactive"]
    assert len(inactive) == 5
    assert len(await ops.pending_plans(ctx)) == 45  # none lost
    listed = await ops.list_actions(ctx, status="awaiting_approval")
    assert len(listed) == 45 and all(a["kind"] == "iam.deactivate_access_key" for a in listed)
    assert len(await ops.list_actions(ctx, status="verified")) == 5

    waiting = next(r[0] for r in outs if r[0].status == ActionStatus.AWAITING_APPROVAL)
    approved = await ops.approve(ctx, waiting.id, approver="alice")
    assert approved.status == ActionStatus.VERIFIED and approved.mode == ActionMode.APPROVE
    user = waiting.resource.details["user_name"]
    assert status_of(iam, user, waiting.resource.id) == "Inactive"
    with pytest.raises(OperationRefused):
        await ops.approve(ctx, waiting.id)
    assert len(await ops.pending_plans(ctx)) == 44


async def test_per_resource_type_cap(boto: Any, aws: Any) -> None:
    iam = boto("iam")
    keys = [new_key(iam) for _ in range(4)]
    cfg = containment(KEY_POLICY, rate_limit={"actions_per_minute": 10,
                                              "per_resource_type": {"iam.access_key": 2}})
    ctx = context(cfg, MemoryStore(), aws, FixedClock())
    stage = build(ctx.config, ctx)
    statuses = [records(await stage.process(incident(key_ref(u, k))))[0].status
                for u, k in keys]
    assert statuses == [ActionStatus.VERIFIED] * 2 + [ActionStatus.AWAITING_APPROVAL] * 2


@pytest.mark.parametrize("store_kind", ["memory", "sqlite-file", "dynamodb"])
async def test_same_finding_five_times_to_two_workers_acts_once(
        boto: Any, aws: Any, tmp_path: Path, store_kind: str) -> None:
    iam = boto("iam")
    user, key = new_key(iam)
    clock = FixedClock()
    if store_kind == "memory":
        shared = MemoryStore(clock)
        stores: list[Any] = [shared, shared]
    elif store_kind == "sqlite-file":
        path = tmp_path / "state.db"
        stores = [await SqliteStore.open(path, clock=clock),
                  await SqliteStore.open(path, clock=clock)]
    else:
        table = uid("riposte-state-")
        stores = [await DynamoDbStore.open(table, aws, clock=clock, create_if_missing=True),
                  await DynamoDbStore.open(table, aws, clock=clock)]
    try:
        cfg = containment(KEY_POLICY)
        workers = [build(c.config, c) for c in (context(cfg, s, aws, clock) for s in stores)]
        inc = incident(key_ref(user, key), incident_id=uid("inc-"))
        verified = metrics.value(metrics.ACTIONS, action="iam.deactivate_access_key",
                                 mode="enforce", status="verified")

        async def deliver(i: int) -> Any:
            try:
                return await workers[i % 2].process(inc)
            except RetriableError as exc:
                return exc

        results = await asyncio.gather(*(deliver(i) for i in range(5)))
        # Redeliver whatever was told to retry (the queue would, after a backoff).
        for i, res in enumerate(results):
            if isinstance(res, RetriableError):
                results[i] = await workers[i % 2].process(inc)

        emitted = [r for res in results for r in records(res)]
        assert [r.status for r in emitted] == [ActionStatus.VERIFIED]
        assert metrics.value(metrics.ACTIONS, action="iam.deactivate_access_key",
                             mode="enforce", status="verified") - verified == 1
        for res in results:
            (updated,) = [x for x in res if isinstance(x, Incident)]
            assert updated.actions[0].status == ActionStatus.VERIFIED
        assert status_of(iam, user, key) == "Inactive"
    finally:
        for s in {id(s): s for s in stores}.values():
            await s.aclose()


async def test_crash_between_apply_and_ledger_write_is_recovered_without_reapplying(
        boto: Any, aws: Any) -> None:
    """A worker claimed, stored its plan, applied, then died before writing the outcome."""
    iam = boto("iam")
    user, key = new_key(iam)
    clock = FixedClock()
    store = MemoryStore(clock)
    cfg = containment(KEY_POLICY, claim_timeout_seconds=60)
    inc = incident(key_ref(user, key))
    resource = inc.resources[0]
    aid = action_id(inc.id, "iam.deactivate_access_key", resource.key)
    broker = CredentialBroker(cfg, aws)
    session = await broker.session(HOME)
    assert session is not None
    action = registry.get("iam.deactivate_access_key")
    plan = await action.plan(PlanRequest(
        action_id=aid, incident_id=inc.id, resource=resource, account=HOME, region=REGION,
        settings=NoSettings(), quarantine=cfg.quarantine, now=inc.first_seen), session)
    ledger = Ledger(store, clock, ttl=3600, claim_timeout=60)
    key_name = ledger.key(inc.id, "iam.deactivate_access_key", resource.key)
    bare = ActionRecord(id=aid, incident_id=inc.id, kind=plan.kind, resource=resource,
                        mode=ActionMode.ENFORCE, status=ActionStatus.PLANNED)
    await ledger.write(key_name, 0, {"state": CLAIMED, "action_id": aid, "owner": "dead",
                                     "claimed_at": clock.now(), "plan": plan_to(plan),
                                     "record": record_to(bare)})
    await action.apply(plan, session)  # ...and the worker is SIGKILLed here.

    ctx = context(cfg, store, aws, clock)
    stage = build(ctx.config, ctx)
    # While the claim is fresh, a redelivery does not touch it: it asks to be retried.
    stage.engine.claim_wait = 0.1
    with pytest.raises(RetriableError):
        await stage.process(inc)
    clock.advance(61)
    recovered = metrics.value(metrics.ACTIONS, action="iam.deactivate_access_key",
                              mode="enforce", status="recovered")
    (rec,) = records(await stage.process(inc))
    assert rec.status == ActionStatus.VERIFIED and "recovered" in rec.reason
    assert metrics.value(metrics.ACTIONS, action="iam.deactivate_access_key", mode="enforce",
                         status="recovered") - recovered == 1
    entry = await ledger.read(key_name)
    assert entry is not None and entry.state == "verified" and entry.value["applied"]
    assert status_of(iam, user, key) == "Inactive"
    # The ledger is consistent: rollback works from it, and a redelivery is a duplicate.
    assert records(await stage.process(inc)) == []
    await ops.rollback(ctx, action_id=aid)
    assert status_of(iam, user, key) == "Active"


async def test_crash_before_apply_is_recovered_by_applying(boto: Any, aws: Any) -> None:
    iam = boto("iam")
    user, key = new_key(iam)
    clock = FixedClock()
    store = MemoryStore(clock)
    cfg = containment(KEY_POLICY, claim_timeout_seconds=60)
    inc = incident(key_ref(user, key))
    resource = inc.resources[0]
    aid = action_id(inc.id, "iam.deactivate_access_key", resource.key)
    session = await CredentialBroker(cfg, aws).session(HOME)
    assert session is not None
    plan = await registry.get("iam.deactivate_access_key").plan(PlanRequest(
        action_id=aid, incident_id=inc.id, resource=resource, account=HOME, region=REGION,
        settings=NoSettings(), quarantine=cfg.quarantine, now=inc.first_seen), session)
    ledger = Ledger(store, clock, ttl=3600, claim_timeout=60)
    bare = ActionRecord(id=aid, incident_id=inc.id, kind=plan.kind, resource=resource,
                        mode=ActionMode.ENFORCE, status=ActionStatus.PLANNED)
    await ledger.write(ledger.key(inc.id, plan.kind, resource.key), 0, {
        "state": CLAIMED, "action_id": aid, "owner": "dead", "claimed_at": clock.now(),
        "plan": plan_to(plan), "record": record_to(bare)})
    clock.advance(61)
    ctx = context(cfg, store, aws, clock)
    (rec,) = records(await build(ctx.config, ctx).process(inc))
    assert rec.status == ActionStatus.VERIFIED and "re-applied" in rec.reason
    assert status_of(iam, user, key) == "Inactive"


async def test_cross_account_through_assumed_role_and_unconfigured_account_untouched(
        boto: Any, aws: Any, moto_server: str) -> None:
    role_arn = f"arn:aws:iam::{OTHER}:role/riposte-contain"
    creds = boto("sts").assume_role(RoleArn=role_arn, RoleSessionName="setup",
                                    ExternalId="setup-ext")["Credentials"]
    other_iam = boto3.client(
        "iam", region_name=REGION, endpoint_url=moto_server,
        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"])
    user, key = new_key(other_iam)
    home_iam = boto("iam")
    home_user, home_key = new_key(home_iam)
    cfg = containment(KEY_POLICY, accounts=[HOME, OTHER, UNCONFIGURED],
                      roles={OTHER: {"role_arn": role_arn, "external_id": "ext-123"}})
    ctx = context(cfg, MemoryStore(), aws, FixedClock())
    stage = build(ctx.config, ctx)

    (rec,) = records(await stage.process(incident(key_ref(user, key, OTHER), account=OTHER)))
    assert rec.status == ActionStatus.VERIFIED, rec.reason
    assert all(c.account == OTHER for c in rec.calls)
    assert status_of(other_iam, user, key) == "Inactive"

    # The same user name and key id claimed in an account without a role: never touched,
    # not even with the home account's credentials.
    (skipped,) = records(await stage.process(
        incident(key_ref(home_user, home_key, UNCONFIGURED), account=UNCONFIGURED)))
    assert skipped.status == ActionStatus.SKIPPED
    assert "no containment role" in skipped.reason
    assert status_of(home_iam, home_user, home_key) == "Active"


def _gate_cases() -> list[tuple[str, dict[str, Any], dict[str, Any], str]]:
    return [
        ("sample", {}, {"sample": True}, "sample"),
        ("observe-only", {}, {"observe_only": True}, "observe-only"),
        ("kill switch", {"kill_switch": True}, {}, "kill switch"),
        ("account", {}, {"account": "999999999999"}, "allowlist"),
        ("region", {}, {"region": "eu-west-3"}, "allowlist"),
        ("source", {"sources": ["aws.guardduty"]}, {"source": "forged.source"}, "allowlist"),
        ("detail-type", {"detail_types": ["GuardDuty Finding"]}, {"detail_type": "Other"},
         "allowlist"),
        ("exempt", {}, {"exempt": True}, "exempt"),
    ]


@pytest.mark.parametrize(("name", "cfg_extra", "inc_kw", "reason"), _gate_cases(),
                         ids=[c[0] for c in _gate_cases()])
async def test_fail_closed_gates_never_reach_apply(boto: Any, aws: Any, name: str,
                                                   cfg_extra: dict[str, Any],
                                                   inc_kw: dict[str, Any], reason: str) -> None:
    iam = boto("iam")
    user, key = new_key(iam)
    tags = {"riposte:exempt": "yes"} if inc_kw.pop("exempt", False) else {}
    account = inc_kw.get("account", HOME)
    ref = ResourceRef(type="iam.access_key", id=key, account=account, tags=tags,
                      details={"user_name": user})
    ctx = context(containment(KEY_POLICY, **cfg_extra), MemoryStore(), aws, FixedClock())
    out = await build(ctx.config, ctx).process(incident(ref, **inc_kw))
    (rec,) = records(out)
    assert rec.status == ActionStatus.SKIPPED and reason in rec.reason
    assert rec.calls == ()
    assert status_of(iam, user, key) == "Active"


async def test_pause_and_resume_through_the_state_store(boto: Any, aws: Any) -> None:
    iam = boto("iam")
    user, key = new_key(iam)
    ctx = context(containment(KEY_POLICY), MemoryStore(), aws, FixedClock())
    stage = build(ctx.config, ctx)
    await ops.pause(ctx)
    assert await ops.paused(ctx)
    (rec,) = records(await stage.process(incident(key_ref(user, key))))
    assert rec.status == ActionStatus.SKIPPED and "paused" in rec.reason
    assert status_of(iam, user, key) == "Active"
    await ops.resume(ctx)
    (rec,) = records(await stage.process(incident(key_ref(user, key))))
    assert rec.status == ActionStatus.VERIFIED


async def test_replay_simulation_only_plans(boto: Any, aws: Any) -> None:
    iam = boto("iam")
    user, key = new_key(iam)
    ctx = context(containment(KEY_POLICY), MemoryStore(), aws, FixedClock(), simulate=True)
    out = await build(ctx.config, ctx).process(incident(key_ref(user, key)))
    (rec,) = records(out)
    assert rec.status == ActionStatus.PLANNED and rec.mode == ActionMode.DRY_RUN
    assert [c.operation for c in rec.calls] == ["UpdateAccessKey"]
    assert status_of(iam, user, key) == "Active"
    assert out[0].phase == IncidentPhase.DETECTED


async def test_approve_mode_stores_plans_that_expire_or_can_be_rejected(
        boto: Any, aws: Any) -> None:
    iam = boto("iam")
    (u1, k1), (u2, k2), (u3, k3) = (new_key(iam) for _ in range(3))
    clock = FixedClock()
    ctx = context(containment(KEY_POLICY, policy_mode="approve", approval_ttl_seconds=600),
                  MemoryStore(clock), aws, clock)
    stage = build(ctx.config, ctx)
    recs = [records(await stage.process(incident(key_ref(u, k))))[0]
            for u, k in ((u1, k1), (u2, k2), (u3, k3))]
    assert [r.status for r in recs] == [ActionStatus.AWAITING_APPROVAL] * 3
    assert recs[0].rollback_hint == f"riposte approve {recs[0].id}"
    assert all(status_of(iam, u, k) == "Active" for u, k in ((u1, k1), (u2, k2), (u3, k3)))
    # A redelivery does not queue a second plan.
    assert records(await stage.process(incident(key_ref(u1, k1), incident_id=recs[0].incident_id))
                   ) == []
    assert len(await ops.pending_plans(ctx)) == 3

    await ops.pause(ctx)
    with pytest.raises(OperationRefused, match="paused"):
        await ops.approve(ctx, recs[0].id)
    await ops.resume(ctx)
    done = await ops.approve(ctx, recs[0].id)
    assert done.status == ActionStatus.VERIFIED and status_of(iam, u1, k1) == "Inactive"

    rejected = await ops.reject(ctx, recs[1].id, reason="false positive")
    assert rejected.status == ActionStatus.REJECTED
    with pytest.raises(OperationRefused):
        await ops.approve(ctx, recs[1].id)
    assert status_of(iam, u2, k2) == "Active"

    clock.advance(601)
    with pytest.raises(OperationRefused, match="expired"):
        await ops.approve(ctx, recs[2].id)
    assert status_of(iam, u3, k3) == "Active"

    (rolled,) = await ops.rollback(ctx, incident_id=recs[0].incident_id)
    assert rolled.status == ActionStatus.ROLLED_BACK and status_of(iam, u1, k1) == "Active"


async def test_approval_refuses_a_plan_whose_resource_changed(boto: Any, aws: Any) -> None:
    iam = boto("iam")
    user, key = new_key(iam)
    ctx = context(containment(KEY_POLICY, policy_mode="approve"), MemoryStore(), aws,
                  FixedClock())
    (rec,) = records(await build(ctx.config, ctx).process(incident(key_ref(user, key))))
    iam.update_access_key(UserName=user, AccessKeyId=key, Status="Inactive")
    done = await ops.approve(ctx, rec.id)  # nothing left to do: no call made
    assert done.status == ActionStatus.VERIFIED and "already inactive" in done.reason
    assert done.calls == ()
    with pytest.raises(OperationRefused, match="nothing was applied"):
        await ops.rollback(ctx, action_id=rec.id)


# --- AWS errors, from a local fake of the IAM query API -------------------------------------
class FakeIam:
    """IAM's query API for one user's key: reads answer from state; ``fail_on`` (None = every
    call) answers with the configured error, as IAM does."""

    NS = "https://iam.amazonaws.com/doc/2010-05-08/"

    def __init__(self) -> None:
        self.code = "Throttling"
        self.status = 400
        self.calls = 0
        self.fail_on: str | None = None
        self.key_status = "Active"
        self.updates = 0

    def _ok(self, action: str, result: str) -> web.Response:
        return web.Response(text=f'<{action}Response xmlns="{self.NS}"><{action}Result>{result}'
                                 f"</{action}Result><ResponseMetadata><RequestId>fake-1"
                                 f"</RequestId></ResponseMetadata></{action}Response>",
                            content_type="text/xml")

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        form = await request.post()
        action = str(form.get("Action", ""))
        if self.fail_on is not None and action != self.fail_on:
            if action == "ListAccessKeys":
                user = str(form.get("UserName", ""))
                return self._ok(action, (
                    f"<AccessKeyMetadata><member><UserName>{user}</UserName>"
                    f"<AccessKeyId>AKIAFAKEFAKEFAKE0003</AccessKeyId><Status>{self.key_status}"
                    "</Status></member></AccessKeyMetadata><IsTruncated>false</IsTruncated>"))
            if action == "ListUserTags":
                return self._ok(action, "<Tags/><IsTruncated>false</IsTruncated>")
            if action == "UpdateAccessKey":
                self.updates += 1
                self.key_status = str(form["Status"])
                return web.Response(text=f'<UpdateAccessKeyResponse xmlns="{self.NS}">'
                                         "<ResponseMetadata><RequestId>fake-1</RequestId>"
                                         "</ResponseMetadata></UpdateAccessKeyResponse>",
                                    content_type="text/xml")
        body = (f'<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error>'
                f"<Type>Sender</Type><Code>{self.code}</Code><Message>fake {self.code}"
                f"</Message></Error><RequestId>fake-1</RequestId></ErrorResponse>")
        return web.Response(status=self.status, text=body, content_type="text/xml")


@pytest.fixture
async def fake_iam(moto_server: str, monkeypatch: pytest.MonkeyPatch
                   ) -> AsyncIterator[tuple[FakeIam, AwsClients]]:
    fake = FakeIam()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner, url = await start_app(app)
    monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", url)
    clients = AwsClients(REGION)
    try:
        yield fake, clients
    finally:
        await clients.aclose()
        await runner.cleanup()


async def test_throttling_is_retriable_and_releases_the_claim(
        fake_iam: tuple[FakeIam, AwsClients]) -> None:
    fake, clients = fake_iam
    store = MemoryStore()
    ctx = context(containment(KEY_POLICY, home_account=HOME), store, clients, FixedClock())
    inc = incident(key_ref("someone", "AKIAFAKEFAKEFAKE0001"))
    with pytest.raises(RetriableError):
        await build(ctx.config, ctx).process(inc)
    assert fake.calls >= 1
    assert await store.scan("ledger:") == []  # the redelivery may claim it again


async def test_access_denied_is_failed_and_alerted_not_retried(
        fake_iam: tuple[FakeIam, AwsClients]) -> None:
    fake, clients = fake_iam
    fake.code, fake.status = "AccessDenied", 403
    ctx = context(containment(KEY_POLICY, home_account=HOME), MemoryStore(), clients,
                  FixedClock())
    stage = build(ctx.config, ctx)
    errors = metrics.value(metrics.ERRORS, stage="contain", error_type="access_denied")
    inc = incident(key_ref("someone", "AKIAFAKEFAKEFAKE0002"))
    (rec,) = records(await stage.process(inc))
    assert rec.status == ActionStatus.FAILED and "AccessDenied" in rec.reason
    assert metrics.value(metrics.ERRORS, stage="contain", error_type="access_denied") - errors == 1
    calls = fake.calls
    # Redelivered: the failure is final in the ledger, AWS is not asked again.
    assert records(await stage.process(inc)) == []
    assert fake.calls == calls


async def test_an_expired_approval_is_decided_again_on_the_next_delivery(
        boto: Any, aws: Any) -> None:
    iam = boto("iam")
    keys = [new_key(iam) for _ in range(2)]
    clock = FixedClock()
    cfg = containment(KEY_POLICY, rate_limit={"actions_per_minute": 1},
                      approval_ttl_seconds=120)
    ctx = context(cfg, MemoryStore(clock), aws, clock)
    stage = build(ctx.config, ctx)
    incs = [incident(key_ref(u, k)) for u, k in keys]
    first, second = [records(await stage.process(i))[0] for i in incs]
    assert (first.status, second.status) == (ActionStatus.VERIFIED,
                                             ActionStatus.AWAITING_APPROVAL)
    # Same incident again within the approval window: still waiting, nothing queued twice.
    assert records(await stage.process(incs[1])) == []
    clock.advance(121)  # nobody decided; the plan expired and the bucket refilled
    (again,) = records(await stage.process(incs[1]))
    assert again.status == ActionStatus.VERIFIED
    assert status_of(iam, *keys[1]) == "Inactive"


CHILD = """
import asyncio, os, signal, sys
sys.path.insert(0, {root!r})
from pipeline.aws import AwsClients
from pipeline.models import ResourceRef
from pipeline.stages.contain import build
from pipeline.state.sqlite import SqliteStore
from tests.integration.actions_support import FixedClock, containment, context, incident

async def main():
    clock = FixedClock({now!r})
    store = await SqliteStore.open({path!r}, clock=clock)
    aws = AwsClients("us-east-1")
    # Die the moment AWS has accepted the change, before the ledger hears of it.
    aws.session.register("after-call.iam.UpdateAccessKey",
                         lambda **_: os.kill(os.getpid(), signal.SIGKILL))
    ctx = context(containment(["iam.deactivate_access_key"], claim_timeout_seconds=60),
                  store, aws, clock)
    ref = ResourceRef(type="iam.access_key", id={key!r}, account="123456789012",
                      details={{"user_name": {user!r}}})
    await build(ctx.config, ctx).process(incident(ref, incident_id={inc!r}))

asyncio.run(main())
"""


async def test_sigkill_between_apply_and_ledger_write_then_restart(
        boto: Any, aws: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    iam = boto("iam")
    user, key = new_key(iam)
    clock = FixedClock()
    path = str(tmp_path / "state.db")
    inc_id = uid("inc-")
    root = ROOT
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD.format(root=root, now=clock.now(), path=path, key=key,
                                           user=user, inc=inc_id),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = await asyncio.wait_for(child.communicate(), timeout=60)
    assert child.returncode == -9, err.decode()[-2000:]
    assert status_of(iam, user, key) == "Inactive"  # applied, then killed

    store = await SqliteStore.open(path, clock=clock)
    try:
        (entry,) = await store.scan("ledger:")
        assert entry.value["state"] == CLAIMED and entry.value["plan"]
        clock.advance(61)  # the dead worker's claim is now stale
        ctx = context(containment(KEY_POLICY, claim_timeout_seconds=60), store, aws, clock)
        recovered = metrics.value(metrics.ACTIONS, action="iam.deactivate_access_key",
                                  mode="enforce", status="recovered")
        (rec,) = records(await build(ctx.config, ctx).process(
            incident(key_ref(user, key), incident_id=inc_id)))
        assert rec.status == ActionStatus.VERIFIED and "not applied again" in rec.reason
        assert metrics.value(metrics.ACTIONS, action="iam.deactivate_access_key",
                             mode="enforce", status="recovered") - recovered == 1
        (entry,) = await store.scan("ledger:")
        assert entry.value["state"] == "verified"
        assert entry.value["record"]["status"] == "verified"
        await ops.rollback(ctx, action_id=rec.id)
        assert status_of(iam, user, key) == "Active"
    finally:
        await store.aclose()


async def test_throttled_apply_keeps_the_plan_and_recovers_on_redelivery(
        fake_iam: tuple[FakeIam, AwsClients]) -> None:
    fake, clients = fake_iam
    fake.fail_on = "UpdateAccessKey"  # reads work, the change is throttled
    store = MemoryStore()
    ctx = context(containment(KEY_POLICY, home_account=HOME), store, clients, FixedClock())
    stage = build(ctx.config, ctx)
    inc = incident(key_ref("someone", "AKIAFAKEFAKEFAKE0003"))
    with pytest.raises(RetriableError):
        await stage.process(inc)
    (entry,) = await store.scan("ledger:")
    assert entry.value["state"] == CLAIMED and entry.value["interrupted"]
    assert entry.value["plan"]["before"] == {"user_name": "someone", "status": "Active"}

    fake.fail_on = "nothing"  # the throttling is over
    (rec,) = records(await stage.process(inc))
    assert rec.status == ActionStatus.VERIFIED and "re-applied" in rec.reason
    assert fake.updates == 1 and fake.key_status == "Inactive"
    # The before-state kept is the original one, so rollback restores Active.
    await ops.rollback(ctx, action_id=rec.id)
    assert fake.key_status == "Active"


async def test_role_credentials_are_cached_and_refreshed_before_expiry(aws: Any) -> None:
    role_arn = f"arn:aws:iam::{OTHER}:role/riposte-contain"
    cfg = containment(KEY_POLICY, accounts=[HOME, OTHER],
                      roles={OTHER: {"role_arn": role_arn, "external_id": "ext-123",
                                     "duration_seconds": 900}})
    cached = CredentialBroker(cfg, aws)
    first = await cached.session(OTHER)
    assert first is not None and first.account == OTHER and first.credentials
    assert await cached.session(OTHER) is first  # 15 min left: reused
    # With a margin longer than the credentials live, every use refreshes them.
    eager = CredentialBroker(cfg, aws, refresh_margin=3600)
    a, b = await eager.session(OTHER), await eager.session(OTHER)
    assert a is not None and b is not None and a is not b
    assert a.credentials != b.credentials
    assert await eager.session(UNCONFIGURED) is None


async def test_decisions_past_the_sla_are_escalated_once(boto: Any, aws: Any) -> None:
    iam = boto("iam")
    (u1, k1), (u2, k2) = new_key(iam), new_key(iam)
    clock = FixedClock()
    store = MemoryStore(clock)
    ctx = context(containment(KEY_POLICY, sla_seconds=900, rate_limit={"actions_per_minute": 1}),
                  store, aws, clock)
    stage = build(ctx.config, ctx)
    done = records(await stage.process(incident(key_ref(u1, k1))))[0]
    waiting = records(await stage.process(incident(key_ref(u2, k2))))[0]
    assert (done.status, waiting.status) == (ActionStatus.VERIFIED,
                                             ActionStatus.AWAITING_APPROVAL)
    assert await ops.escalate_overdue(ctx) == []  # within the SLA
    clock.advance(901)
    (escalated,) = await ops.escalate_overdue(ctx)
    assert escalated.kind == "escalate" and escalated.incident_id == waiting.incident_id
    assert "awaiting_approval" in escalated.reason and escalated.status == ActionStatus.RECORDED
    # Another worker running the same sweep does not escalate it again.
    other = context(ctx.config.containment, store, aws, clock)
    assert await ops.escalate_overdue(other) == []
