"""ec2.snapshot: snapshot every EBS volume of the instance for forensics, before changes.

Snapshots are evidence, so rollback leaves them in place (deleting evidence is a
person's decision). Idempotent: volumes that already have a snapshot tagged with
this incident are not snapshotted again.
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
    Refused,
    Step,
    call,
    describe,
    tags_dict,
)
from pipeline.actions.config import SnapshotSettings
from pipeline.actions.registry import register

INCIDENT_TAG = "riposte:incident"


async def _snapshotted(aws: ClientSource, region: str, incident_id: str) -> set[str]:
    result = await describe(aws, "ec2", "DescribeSnapshots", region, OwnerIds=["self"],
                            Filters=[{"Name": f"tag:{INCIDENT_TAG}", "Values": [incident_id]}])
    return {str(s["VolumeId"]) for s in result.get("Snapshots", [])
            if s.get("State") != "error"}


def _volumes(instance: dict[str, Any]) -> list[str]:
    return [str(m["Ebs"]["VolumeId"]) for m in instance.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("VolumeId")]


@register
class Ec2Snapshot(BaseAction):
    kind: ClassVar[str] = "ec2.snapshot"
    resource_types: ClassVar[frozenset[str]] = frozenset({"ec2.instance"})
    volatile_before: ClassVar[frozenset[str]] = frozenset({"already_snapshotted"})
    permissions: ClassVar[frozenset[str]] = frozenset({
        "ec2:DescribeInstances", "ec2:DescribeSnapshots", "ec2:CreateSnapshot", "ec2:CreateTags",
    })
    disruptive: ClassVar[bool] = False

    async def plan(self, request: PlanRequest, aws: ClientSource) -> Plan:
        assert isinstance(request.settings, SnapshotSettings)
        instance = await describe_instance(aws, request.region, request.resource.id)
        volumes = _volumes(instance)
        done = await _snapshotted(aws, request.region, request.incident_id)
        todo = [v for v in volumes if v not in done]
        if not volumes:
            raise Refused(f"instance {request.resource.id} has no EBS volume")
        if not todo:
            raise InEffect("every EBS volume already has a snapshot for this incident")
        steps = tuple(Step(call("ec2", "CreateSnapshot", {
            "VolumeId": v,
            "Description": f"{request.settings.description} ({request.incident_id})",
            "TagSpecifications": [{"ResourceType": "snapshot", "Tags": [
                {"Key": INCIDENT_TAG, "Value": request.incident_id},
                {"Key": "riposte:instance", "Value": request.resource.id},
                {"Key": "riposte:volume", "Value": v},
            ]}],
        }, account=request.account, region=request.region), bind={f"snapshot:{v}": "SnapshotId"})
            for v in todo)
        return Plan(id=request.action_id, kind=self.kind, incident_id=request.incident_id,
                    resource=request.resource, account=request.account, region=request.region,
                    steps=steps, before={"volumes": volumes, "already_snapshotted": sorted(done)},
                    settings=request.settings.model_dump(), created_at=request.now,
                    resource_tags=tags_dict(instance.get("Tags")))

    async def verify(self, applied: Applied, aws: ClientSource) -> bool:
        plan = applied.plan
        done = await _snapshotted(aws, plan.region, plan.incident_id)
        return set(plan.before["volumes"]) <= done

    async def rollback_steps(self, applied: Applied, aws: ClientSource) -> Sequence[Step]:
        return []  # evidence is kept
