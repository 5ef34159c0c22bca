"""EC2 containment actions against the moto server: apply, verify by describing, roll back.

moto gaps met here (see docs): after ``ModifyNetworkInterfaceAttribute`` moto's
interface view lists the old groups *and* the new one, so the multi-interface
path is checked at the plan level only; single-interface isolation uses
``ModifyInstanceAttribute``, whose ``DescribeInstances`` view moto keeps right.
Deleting a NACL entry that is not there is a 500 in moto; rollback never does it.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from pipeline import metrics
from pipeline.actions import ops
from pipeline.actions.base import REF_PREFIX
from pipeline.models import ActionMode, ActionRecord, ActionStatus, Incident, IncidentPhase
from pipeline.stages.contain import build
from pipeline.state.memory import MemoryStore
from tests.integration.actions_support import (
    FixedClock,
    containment,
    context,
    ec2_ref,
    incident,
    instance_groups,
    make_instance,
)

pytestmark = pytest.mark.integration


async def run(stage: Any, inc: Incident) -> tuple[Incident, list[ActionRecord]]:
    out = await stage.process(inc)
    assert isinstance(out[0], Incident)
    return out[0], [r for r in out[1:] if isinstance(r, ActionRecord)]


def nacl_entries(boto: Any, subnet: str) -> list[dict[str, Any]]:
    acl = boto("ec2").describe_network_acls(
        Filters=[{"Name": "association.subnet-id", "Values": [subnet]}])["NetworkAcls"][0]
    return sorted(acl["Entries"], key=lambda e: (e["Egress"], e["RuleNumber"]))


async def test_isolate_applies_verifies_and_rolls_back_exactly(boto: Any, aws: Any) -> None:
    ids = make_instance(boto)
    original = instance_groups(boto, ids["instance"])
    cfg = containment(["ec2.isolate"], quarantine={"admin_cidrs": ["192.0.2.0/24"]})
    ctx = context(cfg, MemoryStore(), aws, FixedClock())
    stage = build(ctx.config, ctx)

    updated, records = await run(stage, incident(ec2_ref(ids)))

    (rec,) = records
    assert rec.status == ActionStatus.VERIFIED, rec.reason
    assert rec.mode == ActionMode.ENFORCE
    assert updated.phase == IncidentPhase.CONTAINED and updated.contained_at is not None
    assert updated.actions == (rec,)
    ec2 = boto("ec2")
    (q,) = ec2.describe_security_groups(Filters=[
        {"Name": "group-name", "Values": ["riposte-quarantine"]},
        {"Name": "vpc-id", "Values": [ids["vpc"]]}])["SecurityGroups"]
    assert instance_groups(boto, ids["instance"]) == [q["GroupId"]]
    assert q["IpPermissionsEgress"] == []
    assert [r["CidrIp"] for p in q["IpPermissions"] for r in p["IpRanges"]] == ["192.0.2.0/24"]
    assert {t["Key"]: t["Value"] for t in q["Tags"]}["riposte:quarantine"] == "true"
    assert rec.before["interfaces"][0]["groups"] == original

    (rolled,) = await ops.rollback(ctx, action_id=rec.id)
    assert rolled.status == ActionStatus.ROLLED_BACK
    assert instance_groups(boto, ids["instance"]) == original
    # Rollback is recorded and idempotent: a second one changes nothing.
    (again,) = await ops.rollback(ctx, action_id=rec.id)
    assert again == rolled
    assert instance_groups(boto, ids["instance"]) == original


async def test_quarantine_group_is_created_once_per_vpc_and_reused(boto: Any, aws: Any) -> None:
    first = make_instance(boto)
    second = make_instance(boto, vpc=first["vpc"], subnet=first["subnet"])
    ctx = context(containment(["ec2.isolate"]), MemoryStore(), aws, FixedClock())
    stage = build(ctx.config, ctx)

    _, (r1,) = await run(stage, incident(ec2_ref(first)))
    _, (r2,) = await run(stage, incident(ec2_ref(second)))

    assert r1.calls[0].operation == "CreateSecurityGroup"
    assert [c.operation for c in r2.calls] == ["ModifyInstanceAttribute"]
    groups = boto("ec2").describe_security_groups(Filters=[
        {"Name": "group-name", "Values": ["riposte-quarantine"]},
        {"Name": "vpc-id", "Values": [first["vpc"]]}])["SecurityGroups"]
    assert len(groups) == 1
    assert instance_groups(boto, first["instance"]) == instance_groups(boto, second["instance"])


async def test_dry_run_plan_is_exactly_what_enforce_executes(boto: Any, aws: Any) -> None:
    ids = make_instance(boto)
    clock = FixedClock()
    inc = incident(ec2_ref(ids))
    dry_ctx = context(containment(["ec2.isolate", "ec2.nacl_deny"], mode="dry-run"),
                      MemoryStore(), aws, clock)
    _, planned = await run(build(dry_ctx.config, dry_ctx), inc)
    assert [r.status for r in planned] == [ActionStatus.PLANNED] * 2
    before_groups = instance_groups(boto, ids["instance"])
    assert before_groups == sorted(ids["groups"])  # dry-run changed nothing
    assert not any(e["RuleAction"] == "deny" and e["RuleNumber"] < 100
                   for e in nacl_entries(boto, ids["subnet"]))

    enf_ctx = context(containment(["ec2.isolate", "ec2.nacl_deny"]), MemoryStore(), aws, clock)
    _, applied = await run(build(enf_ctx.config, enf_ctx), inc)
    assert [r.status for r in applied] == [ActionStatus.VERIFIED] * 2
    (quarantine,) = instance_groups(boto, ids["instance"])

    def resolved(calls: Any) -> list[tuple[str, str, Any]]:
        out = []
        for c in calls:
            params = {k: ([quarantine if v == REF_PREFIX + "quarantine_group" else v
                           for v in val] if isinstance(val, list) and k == "Groups" else
                          quarantine if val == REF_PREFIX + "quarantine_group" else val)
                      for k, val in c.params.items()}
            out.append((c.service, c.operation, params))
        return out

    for dry, enforced in zip(planned, applied, strict=True):
        assert dry.kind == enforced.kind
        assert resolved(dry.calls) == resolved(enforced.calls)
        assert dry.before == enforced.before


async def test_nacl_deny_allocates_free_rules_and_rollback_restores_entries(
        boto: Any, aws: Any) -> None:
    a = make_instance(boto)
    b = make_instance(boto, vpc=a["vpc"], subnet=a["subnet"])
    ec2 = boto("ec2")
    acl_id = ec2.describe_network_acls(Filters=[
        {"Name": "association.subnet-id", "Values": [a["subnet"]]}])["NetworkAcls"][0][
        "NetworkAclId"]
    # A person's entry already holds rule 1: it must be skipped, not clobbered.
    ec2.create_network_acl_entry(NetworkAclId=acl_id, RuleNumber=1, Protocol="6",
                                 RuleAction="allow", Egress=False, CidrBlock="10.0.0.0/8",
                                 PortRange={"From": 22, "To": 22})
    original = nacl_entries(boto, a["subnet"])
    store = MemoryStore()
    ctx1 = context(containment(["ec2.nacl_deny"]), store, aws, FixedClock())
    ctx2 = context(containment(["ec2.nacl_deny"]), store, aws, FixedClock())
    (_, ra), (_, rb) = await asyncio.gather(run(build(ctx1.config, ctx1), incident(ec2_ref(a))),
                                            run(build(ctx2.config, ctx2), incident(ec2_ref(b))))
    assert ra[0].status == rb[0].status == ActionStatus.VERIFIED
    rules_a = {c.params["RuleNumber"] for c in ra[0].calls}
    rules_b = {c.params["RuleNumber"] for c in rb[0].calls}
    assert rules_a.isdisjoint(rules_b) and 1 not in rules_a | rules_b
    entries = nacl_entries(boto, a["subnet"])
    for ip, rules in ((a["ip"], rules_a), (b["ip"], rules_b)):
        for egress in (False, True):
            assert any(e["CidrBlock"] == f"{ip}/32" and e["RuleAction"] == "deny"
                       and e["Egress"] is egress and e["RuleNumber"] in rules for e in entries)

    await ops.rollback(ctx1, action_id=ra[0].id)
    await ops.rollback(ctx2, action_id=rb[0].id)
    assert nacl_entries(boto, a["subnet"]) == original
    # A second rollback finds nothing of ours and issues no delete (moto would 500).
    (again,) = await ops.rollback(ctx1, action_id=ra[0].id)
    assert again.status == ActionStatus.ROLLED_BACK


async def test_detach_instance_profile_and_restore_association(boto: Any, aws: Any) -> None:
    ids = make_instance(boto)
    iam, ec2 = boto("iam"), boto("ec2")
    role = iam.create_role(RoleName=ids["instance"], AssumeRolePolicyDocument="{}")["Role"]
    profile = iam.create_instance_profile(InstanceProfileName=ids["instance"])["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=ids["instance"],
                                     RoleName=role["RoleName"])
    ec2.associate_iam_instance_profile(IamInstanceProfile={"Arn": profile["Arn"]},
                                       InstanceId=ids["instance"])

    def associated() -> list[str]:
        found = ec2.describe_iam_instance_profile_associations(
            Filters=[{"Name": "instance-id", "Values": [ids["instance"]]}])
        return [a["IamInstanceProfile"]["Arn"] for a in found["IamInstanceProfileAssociations"]
                if a["State"] in ("associated", "associating")]

    ctx = context(containment(["ec2.detach_instance_profile"]), MemoryStore(), aws, FixedClock())
    _, (rec,) = await run(build(ctx.config, ctx), incident(ec2_ref(ids)))
    assert rec.status == ActionStatus.VERIFIED
    assert associated() == []
    assert rec.before["associations"][0]["profile_arn"] == profile["Arn"]
    await ops.rollback(ctx, action_id=rec.id)
    assert associated() == [profile["Arn"]]


async def test_snapshot_tags_evidence_and_is_not_repeated(boto: Any, aws: Any) -> None:
    ids = make_instance(boto)
    ctx = context(containment(["ec2.snapshot", "ec2.isolate"]), MemoryStore(), aws, FixedClock())
    inc = incident(ec2_ref(ids))
    _, (snap, iso) = await run(build(ctx.config, ctx), inc)
    assert snap.status == iso.status == ActionStatus.VERIFIED
    assert [c.operation for c in snap.calls] == ["CreateSnapshot"]
    found = boto("ec2").describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:riposte:incident", "Values": [inc.id]}])["Snapshots"]
    assert len(found) == 1
    # Another worker with an empty ledger plans again: the volume is already done.
    ctx2 = context(containment(["ec2.snapshot"]), MemoryStore(), aws, FixedClock())
    _, (again,) = await run(build(ctx2.config, ctx2), inc)
    assert again.status == ActionStatus.VERIFIED and "already in effect" in again.reason
    assert again.calls == ()


async def test_tag_rollback_restores_previous_values_exactly(boto: Any, aws: Any) -> None:
    ids = make_instance(boto, tags={"riposte:status": "previous", "team": "web"})
    ec2 = boto("ec2")

    def tags() -> dict[str, str]:
        found = ec2.describe_tags(Filters=[{"Name": "resource-id",
                                            "Values": [ids["instance"]]}])["Tags"]
        return {t["Key"]: t["Value"] for t in found}

    before = tags()
    ctx = context(containment(["ec2.tag"]), MemoryStore(), aws, FixedClock())
    inc = incident(ec2_ref(ids))
    _, (rec,) = await run(build(ctx.config, ctx), inc)
    assert rec.status == ActionStatus.VERIFIED
    assert tags()["riposte:incident"] == inc.id and tags()["riposte:status"] == "quarantined"
    await ops.rollback(ctx, action_id=rec.id)
    assert tags() == before


async def test_live_exempt_tag_and_unknown_instance_never_reach_apply(boto: Any, aws: Any) -> None:
    exempt = make_instance(boto, tags={"riposte:exempt": "true"})
    ctx = context(containment(["ec2.isolate"]), MemoryStore(), aws, FixedClock())
    stage = build(ctx.config, ctx)
    # The finding does not carry the tag; the live describe before apply does.
    _, (rec,) = await run(stage, incident(ec2_ref(exempt)))
    assert rec.status == ActionStatus.SKIPPED and "exempt" in rec.reason
    assert instance_groups(boto, exempt["instance"]) == sorted(exempt["groups"])

    forged = dict(exempt, instance="i-0123456789abcdef0")
    _, (rec2,) = await run(stage, incident(ec2_ref(forged)))
    assert rec2.status == ActionStatus.SKIPPED and "not found" in rec2.reason
    assert rec2.calls == ()


async def test_multi_interface_instance_moves_every_interface(boto: Any, aws: Any) -> None:
    ids = make_instance(boto)
    ec2 = boto("ec2")
    eni = ec2.create_network_interface(SubnetId=ids["subnet"], Groups=[ids["groups"][0]])[
        "NetworkInterface"]["NetworkInterfaceId"]
    ec2.attach_network_interface(NetworkInterfaceId=eni, InstanceId=ids["instance"],
                                 DeviceIndex=1)
    ctx = context(containment(["ec2.isolate"], mode="dry-run"), MemoryStore(), aws, FixedClock())
    _, (rec,) = await run(build(ctx.config, ctx), incident(ec2_ref(ids)))
    assert rec.status == ActionStatus.PLANNED
    moves = [c for c in rec.calls if c.operation == "ModifyNetworkInterfaceAttribute"]
    assert sorted(c.params["NetworkInterfaceId"] for c in moves) == sorted(
        i["id"] for i in rec.before["interfaces"])
    assert len(moves) == 2
    assert all(c.params["Groups"] == [REF_PREFIX + "quarantine_group"] for c in moves)


async def test_temporary_open_group_comes_first(boto: Any, aws: Any) -> None:
    ids = make_instance(boto)
    cfg = containment([{"kind": "ec2.isolate", "settings": {"temporary_open_first": True}}])
    ctx = context(cfg, MemoryStore(), aws, FixedClock())
    _, (rec,) = await run(build(ctx.config, ctx), incident(ec2_ref(ids)))
    assert rec.status == ActionStatus.VERIFIED
    moves = [c.params["Groups"][0] for c in rec.calls if c.operation == "ModifyInstanceAttribute"]
    assert len(moves) == 2 and moves[0] != moves[1]
    assert instance_groups(boto, ids["instance"]) == [moves[1]]


async def test_approval_of_a_stale_plan_is_refused_and_the_plan_refreshed(
        boto: Any, aws: Any) -> None:
    ids = make_instance(boto)
    ctx = context(containment(["ec2.isolate"], policy_mode="approve"), MemoryStore(), aws,
                  FixedClock())
    _, (rec,) = await run(build(ctx.config, ctx), incident(ec2_ref(ids)))
    assert rec.status == ActionStatus.AWAITING_APPROVAL
    assert instance_groups(boto, ids["instance"]) == sorted(ids["groups"])
    # Someone changes the instance's groups while the plan waits.
    boto("ec2").modify_instance_attribute(InstanceId=ids["instance"], Groups=[ids["groups"][0]])

    with pytest.raises(ops.OperationRefused, match="changed since"):
        await ops.approve(ctx, rec.id)
    assert instance_groups(boto, ids["instance"]) == [ids["groups"][0]]
    (pending,) = await ops.pending_plans(ctx)
    assert pending["plan_id"] == rec.id

    done = await ops.approve(ctx, rec.id)
    assert done.status == ActionStatus.VERIFIED
    # The before-state is the one seen at approval, so rollback restores what was there.
    assert done.before["interfaces"][0]["groups"] == [ids["groups"][0]]
    await ops.rollback(ctx, action_id=rec.id)
    assert instance_groups(boto, ids["instance"]) == [ids["groups"][0]]


async def test_archived_finding_rolls_back_automatically_once(boto: Any, aws: Any) -> None:
    ids = make_instance(boto)
    original = instance_groups(boto, ids["instance"])
    ctx = context(containment(["ec2.tag", "ec2.isolate"], rollback_when_resolved=True),
                  MemoryStore(), aws, FixedClock())
    stage = build(ctx.config, ctx)
    event_basis = metrics.REGISTRY.get_sample_value(
        "riposte_time_to_contain_seconds_count", {"basis": "event"}) or 0.0
    inc = incident(ec2_ref(ids))
    contained, first = await run(stage, inc)
    assert [r.status for r in first] == [ActionStatus.VERIFIED] * 2
    assert contained.phase == IncidentPhase.CONTAINED
    assert metrics.REGISTRY.get_sample_value(
        "riposte_time_to_contain_seconds_count", {"basis": "event"}) == event_basis + 1
    assert instance_groups(boto, ids["instance"]) != original

    archived = replace(contained, findings=tuple(replace(f, status="ARCHIVED")
                                                 for f in contained.findings), revision=2)
    recovered, rolled = await run(stage, archived)
    assert recovered.phase == IncidentPhase.RECOVERED
    assert [r.kind for r in rolled] == ["ec2.isolate", "ec2.tag"]  # reverse order
    assert all(r.status == ActionStatus.ROLLED_BACK for r in rolled)
    assert instance_groups(boto, ids["instance"]) == original
    # Redelivered: nothing more to do.
    _, again = await run(stage, archived)
    assert again == []


async def test_concurrent_instance_reads_coalesce_into_one_describe(boto: Any,
                                                                    aws: Any) -> None:
    """Plans running together read their instances with ONE filtered DescribeInstances;
    a missing instance is simply absent, a malformed id never reaches EC2."""
    from pipeline.actions import _ec2
    from pipeline.actions.base import Refused
    from pipeline.actions.credentials import AccountSession
    from tests.integration.actions_support import HOME, REGION

    first = make_instance(boto)
    others = [make_instance(boto, vpc=first["vpc"], subnet=first["subnet"]) for _ in range(3)]
    wanted = [first["instance"], *(o["instance"] for o in others)]
    source = AccountSession(account=HOME, aws=aws)
    reader = _ec2._instance_reader(source, REGION)
    calls, keys = reader.calls, reader.keys
    counted = (metrics.value(metrics.CONTAINMENT_READ_CALLS, operation="DescribeInstances"),
               metrics.value(metrics.CONTAINMENT_READ_KEYS, operation="DescribeInstances"))

    results = await asyncio.gather(
        *(_ec2.describe_instance(source, REGION, i) for i in wanted),
        _ec2.describe_instance(source, REGION, "i-0123456789abcdef0"),  # no such instance
        _ec2.describe_instance(source, REGION, "i-x'; DROP"),  # malformed: refused locally
        *(_ec2.find_group(source, REGION, first["vpc"], name)
          for name in ("riposte-quarantine", "default")),
        return_exceptions=True)

    assert [r["InstanceId"] for r in results[:4] if isinstance(r, dict)] == wanted
    assert isinstance(results[4], Refused) and "not found" in results[4].reason
    assert isinstance(results[5], Refused) and "malformed" in results[5].reason
    assert results[6] is None  # no quarantine group yet
    default = boto("ec2").describe_security_groups(Filters=[
        {"Name": "vpc-id", "Values": [first["vpc"]]},
        {"Name": "group-name", "Values": ["default"]}])["SecurityGroups"][0]["GroupId"]
    assert results[7] == default
    assert (reader.calls, reader.keys) == (calls + 1, keys + 5)
    # What operators see: one call, five instances asked for.
    assert (metrics.value(metrics.CONTAINMENT_READ_CALLS, operation="DescribeInstances"),
            metrics.value(metrics.CONTAINMENT_READ_KEYS, operation="DescribeInstances")) == (
        counted[0] + 1, counted[1] + 5)
