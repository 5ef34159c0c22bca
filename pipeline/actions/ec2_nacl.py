"""ec2.nacl_deny: deny all traffic to and from an instance's private IPs at its subnets' NACLs.

Security groups only stop new flows through the instance's own interfaces; a
network ACL deny also stops traffic the group change cannot (tracked flows,
other interfaces in the subnet spoofing the address). Rule numbers come from a
configured range, skipping numbers already in the ACL and numbers another worker
has reserved in the state store, so two workers never pick the same slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pipeline.actions._ec2 import describe_instance, interfaces
from pipeline.actions.base import (
    Applied,
    BaseAction,
    ClientSource,
    InEffect,
    Plan,
    PlanRequest,
    Refused,
    Step,
    call,
    describe,
    tags_dict,
)
from pipeline.actions.registry import register


async def _acl_for_subnet(aws: ClientSource, region: str, subnet: str) -> dict[str, Any]:
    result = await describe(aws, "ec2", "DescribeNetworkAcls", region,
                            Filters=[{"Name": "association.subnet-id", "Values": [subnet]}])
    acls = result.get("NetworkAcls", [])
    if not acls:
        raise Refused(f"no network ACL associated with subnet {subnet}")
    return dict(acls[0])


async def _entries(aws: ClientSource, region: str, acl_id: str) -> list[dict[str, Any]]:
    result = await describe(aws, "ec2", "DescribeNetworkAcls", region, NetworkAclIds=[acl_id])
    acls = result.get("NetworkAcls", [])
    return list(acls[0].get("Entries", [])) if acls else []


def _is_ours(entry: dict[str, Any], rule: dict[str, Any], egress: bool) -> bool:
    return (int(entry["RuleNumber"]) == rule["rule"] and bool(entry["Egress"]) is egress
            and entry.get("CidrBlock") == rule["cidr"] and entry.get("RuleAction") == "deny")


def _private_ips(instance: dict[str, Any]) -> dict[str, list[str]]:
    """Private IPv4 addresses per subnet, over every interface."""
    by_subnet: dict[str, list[str]] = {}
    for eni in interfaces(instance):
        subnet = eni.get("SubnetId") or instance.get("SubnetId")
        addresses = [a["PrivateIpAddress"] for a in eni.get("PrivateIpAddresses", [])
                     if a.get("PrivateIpAddress")] or [eni.get("PrivateIpAddress")]
        for ip in addresses:
            if subnet and ip and ip not in by_subnet.setdefault(str(subnet), []):
                by_subnet[str(subnet)].append(str(ip))
    return by_subnet


@register
class Ec2NaclDeny(BaseAction):
    kind: ClassVar[str] = "ec2.nacl_deny"
    resource_types: ClassVar[frozenset[str]] = frozenset({"ec2.instance"})
    volatile_before: ClassVar[frozenset[str]] = frozenset({"acls"})
    permissions: ClassVar[frozenset[str]] = frozenset({
        "ec2:DescribeInstances", "ec2:DescribeNetworkAcls", "ec2:CreateNetworkAclEntry",
        "ec2:DeleteNetworkAclEntry",
    })

    async def plan(self, request: PlanRequest, aws: ClientSource) -> Plan:
        q, acct, region = request.quarantine, request.account, request.region
        instance = await describe_instance(aws, region, request.resource.id)
        by_subnet = _private_ips(instance)
        if not by_subnet:
            raise Refused(f"instance {request.resource.id} has no private IPv4 address")
        steps: list[Step] = []
        rules: list[dict[str, Any]] = []
        acls: list[dict[str, Any]] = []
        for subnet, ips in sorted(by_subnet.items()):
            acl = await _acl_for_subnet(aws, region, subnet)
            acl_id = str(acl["NetworkAclId"])
            entries = list(acl.get("Entries", []))
            acls.append({"id": acl_id, "subnet": subnet, "entries": sorted(
                ({"rule": int(e["RuleNumber"]), "egress": bool(e["Egress"]),
                  "cidr": e.get("CidrBlock"), "action": e.get("RuleAction")} for e in entries),
                key=lambda e: (e["egress"], e["rule"]))})
            used = {int(e["RuleNumber"]) for e in entries}
            namespace = f"nacl:{acct}:{region}:{acl_id}"
            number = q.nacl_rule_min
            for ip in ips:
                cidr = f"{ip}/32"
                if any(e.get("CidrBlock") == cidr and e.get("RuleAction") == "deny"
                       and q.nacl_rule_min <= int(e["RuleNumber"]) <= q.nacl_rule_max
                       for e in entries):
                    continue  # already denied by an earlier containment
                while True:
                    if number > q.nacl_rule_max:
                        raise Refused(f"no free NACL rule number in {q.nacl_rule_min}-"
                                      f"{q.nacl_rule_max} on {acl_id}")
                    if number in used:
                        number += 1
                        continue
                    free = request.reservations
                    if free is None:
                        break
                    if request.commit:
                        if await free.reserve(namespace, number, request.action_id):
                            break
                    elif not await free.reserved(namespace, number):
                        break
                    number += 1
                used.add(number)
                rule = {"acl": acl_id, "rule": number, "cidr": cidr}
                rules.append(rule)
                for egress in (False, True):
                    steps.append(Step(call("ec2", "CreateNetworkAclEntry", {
                        "NetworkAclId": acl_id, "RuleNumber": number, "Protocol": "-1",
                        "RuleAction": "deny", "Egress": egress, "CidrBlock": cidr,
                    }, account=acct, region=region),
                        tolerate=frozenset({"NetworkAclEntryAlreadyExists"})))
        if not steps:
            raise InEffect("every private IP is already denied in its network ACL")
        return Plan(id=request.action_id, kind=self.kind, incident_id=request.incident_id,
                    resource=request.resource, account=acct, region=region, steps=tuple(steps),
                    before={"acls": acls, "rules": rules}, settings={},
                    created_at=request.now, resource_tags=tags_dict(instance.get("Tags")))

    async def verify(self, applied: Applied, aws: ClientSource) -> bool:
        plan = applied.plan
        cache: dict[str, list[dict[str, Any]]] = {}
        for rule in plan.before["rules"]:
            if rule["acl"] not in cache:
                cache[rule["acl"]] = await _entries(aws, plan.region, rule["acl"])
            for egress in (False, True):
                if not any(_is_ours(e, rule, egress) for e in cache[rule["acl"]]):
                    return False
        return True

    async def rollback_steps(self, applied: Applied, aws: ClientSource) -> Sequence[Step]:
        # Delete only entries that are there and are ours: deleting a missing entry is
        # an error on AWS (and a 500 on moto), and someone else's entry is not ours to drop.
        plan = applied.plan
        steps: list[Step] = []
        cache: dict[str, list[dict[str, Any]]] = {}
        for rule in plan.before["rules"]:
            if rule["acl"] not in cache:
                cache[rule["acl"]] = await _entries(aws, plan.region, rule["acl"])
            for egress in (False, True):
                if any(_is_ours(e, rule, egress) for e in cache[rule["acl"]]):
                    steps.append(Step(call("ec2", "DeleteNetworkAclEntry", {
                        "NetworkAclId": rule["acl"], "RuleNumber": rule["rule"],
                        "Egress": egress}, account=plan.account, region=plan.region)))
        return steps

