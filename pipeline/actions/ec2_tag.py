"""ec2.tag: mark the instance (and its volumes) with the incident id and status.

The tags tell the owner, and other tooling, why the instance behaves as it does.
The previous values of the two keys are the before-state: rollback puts them back
or deletes keys that did not exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pipeline.actions._ec2 import describe_instance
from pipeline.actions.base import (
    Applied,
    BaseAction,
    ClientSource,
    Plan,
    PlanRequest,
    Step,
    call,
    describe,
    tags_dict,
)
from pipeline.actions.config import TagSettings
from pipeline.actions.ec2_snapshot import _volumes
from pipeline.actions.registry import register


async def _tags_of(aws: ClientSource, region: str, resource_id: str) -> dict[str, str]:
    result = await describe(aws, "ec2", "DescribeTags", region,
                            Filters=[{"Name": "resource-id", "Values": [resource_id]}])
    return tags_dict(result.get("Tags", []))


@register
class Ec2Tag(BaseAction):
    kind: ClassVar[str] = "ec2.tag"
    resource_types: ClassVar[frozenset[str]] = frozenset({"ec2.instance"})
    permissions: ClassVar[frozenset[str]] = frozenset({
        "ec2:DescribeInstances", "ec2:DescribeTags", "ec2:CreateTags", "ec2:DeleteTags",
    })
    disruptive: ClassVar[bool] = False

    async def plan(self, request: PlanRequest, aws: ClientSource) -> Plan:
        s = request.settings
        assert isinstance(s, TagSettings)
        instance = await describe_instance(aws, request.region, request.resource.id)
        targets = [request.resource.id] + (_volumes(instance) if s.include_volumes else [])
        keys = (s.incident_tag_key, s.status_tag_key)
        before: dict[str, dict[str, str]] = {}
        for rid in targets:
            current = await _tags_of(aws, request.region, rid)
            before[rid] = {k: current[k] for k in keys if k in current}
        steps = (Step(call("ec2", "CreateTags", {"Resources": targets, "Tags": [
            {"Key": s.incident_tag_key, "Value": request.incident_id},
            {"Key": s.status_tag_key, "Value": s.status_value},
        ]}, account=request.account, region=request.region)),)
        return Plan(id=request.action_id, kind=self.kind, incident_id=request.incident_id,
                    resource=request.resource, account=request.account, region=request.region,
                    steps=steps, before={"tags": before, "keys": list(keys)},
                    settings=s.model_dump(), created_at=request.now,
                    resource_tags=tags_dict(instance.get("Tags")))

    async def verify(self, applied: Applied, aws: ClientSource) -> bool:
        plan = applied.plan
        wanted = tags_dict(plan.calls[0].params["Tags"])
        for rid in plan.before["tags"]:
            current = await _tags_of(aws, plan.region, rid)
            if any(current.get(k) != v for k, v in wanted.items()):
                return False
        return True

    async def rollback_steps(self, applied: Applied, aws: ClientSource) -> Sequence[Step]:
        plan = applied.plan
        steps: list[Step] = []
        for rid, old in sorted(plan.before["tags"].items()):
            missing = [k for k in plan.before["keys"] if k not in old]
            if old:
                steps.append(Step(call("ec2", "CreateTags", {"Resources": [rid], "Tags": [
                    {"Key": k, "Value": v} for k, v in sorted(old.items())]},
                    account=plan.account, region=plan.region)))
            if missing:
                steps.append(Step(call("ec2", "DeleteTags", {"Resources": [rid], "Tags": [
                    {"Key": k} for k in missing]}, account=plan.account, region=plan.region)))
        return steps
