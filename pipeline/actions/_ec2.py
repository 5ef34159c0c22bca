"""EC2 reads shared by the instance actions (describe, group lookup)."""

from __future__ import annotations

from typing import Any

from pipeline.actions.base import ActionFailed, ClientSource, Refused, describe


async def describe_instance(aws: ClientSource, region: str, instance_id: str) -> dict[str, Any]:
    """The instance as EC2 sees it now, or Refused when it does not exist here.

    A finding naming an instance that this account and region do not hold is either
    stale or forged; either way nothing is done to anything else.
    """
    try:
        result = await describe(aws, "ec2", "DescribeInstances", region,
                                InstanceIds=[instance_id])
    except ActionFailed as exc:
        if exc.code in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
            raise Refused(f"instance {instance_id} not found in {aws.account}/{region}") from None
        raise
    for reservation in result.get("Reservations", []):
        for instance in reservation.get("Instances", []):
            if instance.get("InstanceId") == instance_id:
                state = instance.get("State", {}).get("Name")
                if state in ("terminated", "shutting-down"):
                    raise Refused(f"instance {instance_id} is {state}")
                return dict(instance)
    raise Refused(f"instance {instance_id} not found in {aws.account}/{region}")


async def find_group(aws: ClientSource, region: str, vpc_id: str, name: str) -> str | None:
    result = await describe(aws, "ec2", "DescribeSecurityGroups", region,
                            Filters=[{"Name": "group-name", "Values": [name]},
                                     {"Name": "vpc-id", "Values": [vpc_id]}])
    groups = result.get("SecurityGroups", [])
    return str(groups[0]["GroupId"]) if groups else None


def interfaces(instance: dict[str, Any]) -> list[dict[str, Any]]:
    """Network interfaces in device-index order (the primary first)."""
    return sorted(instance.get("NetworkInterfaces", []),
                  key=lambda e: int(e.get("Attachment", {}).get("DeviceIndex", 0)))
