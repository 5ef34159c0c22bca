"""ec2.isolate: move every interface of an instance into a quarantine security group.

The quarantine group is created once per VPC and reused (found by name, tagged
``riposte:quarantine``); it has no egress and admits only the configured admin
CIDRs / group, or nothing. Each interface's original groups are the before-state
that rollback puts back.

A single-interface instance is moved with ``ModifyInstanceAttribute(Groups=...)``
(what AWS's own isolation runbooks use, and the view ``DescribeInstances`` reports
reliably); an instance with several interfaces has each interface moved with
``ModifyNetworkInterfaceAttribute``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pipeline.actions._ec2 import describe_instance, find_group, interfaces
from pipeline.actions.base import (
    REF_PREFIX,
    Applied,
    BaseAction,
    ClientSource,
    InEffect,
    Plan,
    PlanRequest,
    Refused,
    Step,
    call,
    tags_dict,
)
from pipeline.actions.config import IsolateSettings, QuarantineConfig
from pipeline.actions.registry import register

QUARANTINE_REF = "quarantine_group"
OPEN_REF = "open_group"
_ALL = {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}


def _create_group(name: str, purpose: str, vpc: str, bind: str, *, account: str,
                  region: str) -> Step:
    return Step(
        call("ec2", "CreateSecurityGroup", {
            "GroupName": name,
            "Description": f"Riposte {purpose} group",
            "VpcId": vpc,
            "TagSpecifications": [{"ResourceType": "security-group", "Tags": [
                {"Key": "Name", "Value": name},
                {"Key": f"riposte:{purpose}", "Value": "true"},
            ]}],
        }, account=account, region=region),
        bind={bind: "GroupId"}, tolerate=frozenset({"InvalidGroup.Duplicate"}))


def _quarantine_group_steps(q: QuarantineConfig, vpc: str, account: str,
                            region: str) -> list[Step]:
    ref = REF_PREFIX + QUARANTINE_REF
    steps = [
        _create_group(q.group_name, "quarantine", vpc, QUARANTINE_REF, account=account,
                      region=region),
        Step(call("ec2", "RevokeSecurityGroupEgress", {"GroupId": ref, "IpPermissions": [_ALL]},
                  account=account, region=region),
             tolerate=frozenset({"InvalidPermission.NotFound"})),
    ]
    admin: list[dict[str, Any]] = [
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": c, "Description": "riposte admin"}]}
        for c in q.admin_cidrs if ":" not in c
    ] + [
        {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": c, "Description": "riposte admin"}]}
        for c in q.admin_cidrs if ":" in c
    ]
    if q.admin_security_group:
        admin.append({"IpProtocol": "-1", "UserIdGroupPairs": [
            {"GroupId": q.admin_security_group, "Description": "riposte admin"}]})
    if admin:
        steps.append(Step(call("ec2", "AuthorizeSecurityGroupIngress",
                               {"GroupId": ref, "IpPermissions": admin},
                               account=account, region=region),
                          tolerate=frozenset({"InvalidPermission.Duplicate"})))
    return steps


def _move(instance_id: str, enis: Sequence[Mapping[str, Any]], group: str, account: str,
          region: str) -> list[Step]:
    if len(enis) == 1:
        return [Step(call("ec2", "ModifyInstanceAttribute",
                          {"InstanceId": instance_id, "Groups": [group]},
                          account=account, region=region))]
    return [Step(call("ec2", "ModifyNetworkInterfaceAttribute",
                      {"NetworkInterfaceId": e["NetworkInterfaceId"], "Groups": [group]},
                      account=account, region=region)) for e in enis]


def _current_groups(instance: Mapping[str, Any]) -> list[dict[str, Any]]:
    enis = interfaces(dict(instance))
    if len(enis) == 1:
        groups = [g["GroupId"] for g in instance.get("SecurityGroups", [])]
        return [{"id": enis[0]["NetworkInterfaceId"], "groups": sorted(groups)}]
    return [{"id": e["NetworkInterfaceId"], "groups": sorted(g["GroupId"] for g in e["Groups"])}
            for e in enis]


@register
class Ec2Isolate(BaseAction):
    kind: ClassVar[str] = "ec2.isolate"
    resource_types: ClassVar[frozenset[str]] = frozenset({"ec2.instance"})
    volatile_before: ClassVar[frozenset[str]] = frozenset({"quarantine_group_id"})
    permissions: ClassVar[frozenset[str]] = frozenset({
        "ec2:DescribeInstances", "ec2:DescribeSecurityGroups", "ec2:CreateSecurityGroup",
        "ec2:CreateTags", "ec2:RevokeSecurityGroupEgress", "ec2:AuthorizeSecurityGroupIngress",
        "ec2:ModifyInstanceAttribute", "ec2:ModifyNetworkInterfaceAttribute",
    })

    async def plan(self, request: PlanRequest, aws: ClientSource) -> Plan:
        assert isinstance(request.settings, IsolateSettings)
        q, acct, region = request.quarantine, request.account, request.region
        instance_id = request.resource.id
        instance = await describe_instance(aws, region, instance_id)
        vpc = instance.get("VpcId")
        enis = interfaces(instance)
        if not vpc or not enis:
            raise Refused(f"instance {instance_id} has no VPC network interface to isolate")
        quarantine_id = await find_group(aws, region, vpc, q.group_name)
        before: dict[str, Any] = {
            "vpc_id": vpc, "instance_id": instance_id, "interfaces": _current_groups(instance),
            "quarantine_group_name": q.group_name, "quarantine_group_id": quarantine_id}
        steps: list[Step] = []
        if quarantine_id is not None and all(i["groups"] == [quarantine_id]
                                             for i in before["interfaces"]):
            raise InEffect(f"instance {instance_id} is already isolated")
        if quarantine_id is None:
            steps += _quarantine_group_steps(q, vpc, acct, region)
        if request.settings.temporary_open_first:
            open_id = await find_group(aws, region, vpc, q.open_group_name)
            if open_id is None:
                steps.append(_create_group(q.open_group_name, "untrack", vpc, OPEN_REF,
                                           account=acct, region=region))
                steps.append(Step(call("ec2", "AuthorizeSecurityGroupIngress",
                                       {"GroupId": REF_PREFIX + OPEN_REF,
                                        "IpPermissions": [_ALL]}, account=acct, region=region),
                                  tolerate=frozenset({"InvalidPermission.Duplicate"})))
            steps += _move(instance_id, enis, open_id or REF_PREFIX + OPEN_REF, acct, region)
        steps += _move(instance_id, enis, quarantine_id or REF_PREFIX + QUARANTINE_REF, acct,
                       region)
        return Plan(id=request.action_id, kind=self.kind, incident_id=request.incident_id,
                    resource=request.resource, account=acct, region=region, steps=tuple(steps),
                    before=before, settings=request.settings.model_dump(),
                    created_at=request.now, resource_tags=tags_dict(instance.get("Tags")))

    async def on_tolerated(self, step: Step, code: str, plan: Plan, aws: ClientSource,
                           outputs: Mapping[str, str]) -> Mapping[str, str]:
        if step.call.operation != "CreateSecurityGroup":
            return {}
        # Another worker created the group first: use theirs (one group per VPC).
        name = str(step.call.params["GroupName"])
        found = await find_group(aws, plan.region, str(plan.before["vpc_id"]), name)
        if found is None:
            return {}
        return {bind: found for bind in step.bind}

    async def _quarantine_id(self, applied: Applied, aws: ClientSource) -> str | None:
        before = applied.plan.before
        known = applied.outputs.get(QUARANTINE_REF) or before.get("quarantine_group_id")
        if known:
            return str(known)
        return await find_group(aws, applied.plan.region, str(before["vpc_id"]),
                                str(before["quarantine_group_name"]))

    async def verify(self, applied: Applied, aws: ClientSource) -> bool:
        target = await self._quarantine_id(applied, aws)
        if target is None:
            return False
        instance = await describe_instance(aws, applied.plan.region,
                                           str(applied.plan.before["instance_id"]))
        return all(i["groups"] == [target] for i in _current_groups(instance))

    async def rollback_steps(self, applied: Applied, aws: ClientSource) -> Sequence[Step]:
        plan = applied.plan
        originals: list[Mapping[str, Any]] = list(plan.before["interfaces"])
        instance_id = str(plan.before["instance_id"])
        if len(originals) == 1:
            return [Step(call("ec2", "ModifyInstanceAttribute",
                              {"InstanceId": instance_id, "Groups": list(originals[0]["groups"])},
                              account=plan.account, region=plan.region))]
        return [Step(call("ec2", "ModifyNetworkInterfaceAttribute",
                          {"NetworkInterfaceId": i["id"], "Groups": list(i["groups"])},
                          account=plan.account, region=plan.region)) for i in originals]
