"""ec2.detach_instance_profile: take the instance's role credentials away.

A compromised instance keeps minting role credentials from its metadata service
for as long as a profile is associated. The association (its profile ARN) is the
before-state; rollback associates the same profile again (AWS gives the new
association a new id, which is the only difference).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pipeline.actions._ec2 import describe_instance
from pipeline.actions.base import (
    Applied,
    BaseAction,
    ClientSource,
    InEffect,
    Plan,
    PlanRequest,
    Step,
    call,
    describe,
    tags_dict,
)
from pipeline.actions.registry import register


async def associations(aws: ClientSource, region: str, instance_id: str
                       ) -> list[dict[str, Any]]:
    result = await describe(aws, "ec2", "DescribeIamInstanceProfileAssociations", region,
                            Filters=[{"Name": "instance-id", "Values": [instance_id]}])
    return [a for a in result.get("IamInstanceProfileAssociations", [])
            if a.get("State") in ("associated", "associating")]


@register
class Ec2DetachInstanceProfile(BaseAction):
    kind: ClassVar[str] = "ec2.detach_instance_profile"
    resource_types: ClassVar[frozenset[str]] = frozenset({"ec2.instance"})
    permissions: ClassVar[frozenset[str]] = frozenset({
        "ec2:DescribeInstances", "ec2:DescribeIamInstanceProfileAssociations",
        "ec2:DisassociateIamInstanceProfile", "ec2:AssociateIamInstanceProfile", "iam:PassRole",
    })

    async def plan(self, request: PlanRequest, aws: ClientSource) -> Plan:
        instance = await describe_instance(aws, request.region, request.resource.id)
        found = await associations(aws, request.region, request.resource.id)
        if not found:
            raise InEffect(f"instance {request.resource.id} has no instance profile")
        before = {"instance_id": request.resource.id, "associations": [
            {"id": a["AssociationId"], "profile_arn": a["IamInstanceProfile"]["Arn"]}
            for a in found]}
        steps = tuple(Step(call("ec2", "DisassociateIamInstanceProfile",
                                {"AssociationId": a["AssociationId"]},
                                account=request.account, region=request.region),
                           tolerate=frozenset({"InvalidAssociationID.NotFound"}))
                      for a in found)
        return Plan(id=request.action_id, kind=self.kind, incident_id=request.incident_id,
                    resource=request.resource, account=request.account, region=request.region,
                    steps=steps, before=before, settings={}, created_at=request.now,
                    resource_tags=tags_dict(instance.get("Tags")))

    async def verify(self, applied: Applied, aws: ClientSource) -> bool:
        plan = applied.plan
        return not await associations(aws, plan.region, str(plan.before["instance_id"]))

    async def rollback_steps(self, applied: Applied, aws: ClientSource) -> Sequence[Step]:
        plan = applied.plan
        instance_id = str(plan.before["instance_id"])
        current = {a["IamInstanceProfile"]["Arn"]
                   for a in await associations(aws, plan.region, instance_id)}
        if current:
            # Something else is associated now; one profile per instance, so restoring
            # would fail or clobber a person's fix. Leave it and say so in the record.
            return []
        return [Step(call("ec2", "AssociateIamInstanceProfile", {
            "IamInstanceProfile": {"Arn": a["profile_arn"]}, "InstanceId": instance_id},
            account=plan.account, region=plan.region))
            for a in plan.before["associations"][:1]]
