"""Builders shared by the containment tests: moto resources, incidents, contexts, clocks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pipeline.actions.config import ContainmentConfig
from pipeline.aws import AwsClients
from pipeline.config import RiposteConfig
from pipeline.context import RuntimeContext
from pipeline.models import (
    Event,
    EventKind,
    FindingRef,
    Incident,
    ResourceRef,
    RiskScore,
    Severity,
    SeverityLabel,
)
from pipeline.state.base import StateStore

HOME = "123456789012"
REGION = "us-east-1"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


class FixedClock:
    """A clock tests move by hand (rate limits, claim timeouts, approval expiry)."""

    def __init__(self, now: float | None = None) -> None:
        self.value = now if now is not None else T0.timestamp() + 60

    def now(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds


def uid(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def incident(resource: ResourceRef, *, finding_type: str = "UnauthorizedAccess:EC2/TorClient",
             account: str | None = HOME, region: str | None = REGION, score: int = 85,
             incident_id: str | None = None, sample: bool = False,
             observe_only: bool = False, source: str = "aws.guardduty",
             detail_type: str = "GuardDuty Finding",
             attributes: dict[str, Any] | None = None) -> Incident:
    sev = Severity.of_score(score)
    trigger = Event(
        id=uid("ev-"), kind=EventKind.GUARDDUTY, type=finding_type, title=finding_type,
        source=source, account=account, region=region, time=T0, severity=sev,
        resources=(resource,), created_at=T0, detail_type=detail_type, sample=sample,
        observe_only=observe_only, attributes=attributes or {}, received_at=T0.timestamp() + 5)
    return Incident(
        id=incident_id or uid("inc-"), key=resource.key, title=finding_type, account=account,
        region=region, resources=(resource,),
        findings=(FindingRef(trigger.id, EventKind.GUARDDUTY, finding_type, sev, T0),),
        first_seen=T0, last_seen=T0, score=RiskScore(score, SeverityLabel.from_score(score)),
        sample=sample, observe_only=observe_only, trigger=trigger,
        detected_at=T0.timestamp() + 5)


def containment(actions: list[dict[str, Any]] | list[str], *, mode: str = "enforce",
                policy_mode: str | None = None, resource_types: list[str] | None = None,
                **extra: Any) -> ContainmentConfig:
    acts = [a if isinstance(a, dict) else {"kind": a} for a in actions]
    policy: dict[str, Any] = {"name": "p1", "match": {"finding_types": ["*"], "min_score": 50},
                              "actions": acts}
    if resource_types:
        policy["match"]["resource_types"] = resource_types
    if policy_mode:
        policy["mode"] = policy_mode
    data: dict[str, Any] = {"mode": mode, "accounts": [HOME], "regions": [REGION],
                            "policies": [policy]}
    data.update(extra)
    return ContainmentConfig.model_validate(data)


def context(cfg: ContainmentConfig, store: StateStore, aws: AwsClients, clock: Any, *,
            simulate: bool = False) -> RuntimeContext:
    return RuntimeContext(config=RiposteConfig(containment=cfg), store=store, aws=aws,
                          clock=clock, simulate=simulate)


def make_instance(boto: Any, *, groups: int = 2, tags: dict[str, str] | None = None,
                  vpc: str | None = None, subnet: str | None = None) -> dict[str, Any]:
    """A VPC (or the given one), a subnet, ``groups`` security groups and one instance."""
    ec2 = boto("ec2")
    if vpc is None:
        vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
    sgs = [ec2.create_security_group(GroupName=uid("sg-"), Description="app", VpcId=vpc)[
        "GroupId"] for _ in range(groups)]
    # A fixed image from moto's built-in catalogue (listing all 1,300 takes seconds).
    image = "ami-03cf127a"
    kwargs: dict[str, Any] = {}
    if tags:
        kwargs["TagSpecifications"] = [{"ResourceType": "instance", "Tags": [
            {"Key": k, "Value": v} for k, v in tags.items()]}]
    inst = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet,
                             SecurityGroupIds=sgs, **kwargs)["Instances"][0]
    return {"vpc": vpc, "subnet": subnet, "groups": sgs, "instance": inst["InstanceId"],
            "ip": inst["PrivateIpAddress"]}


def ec2_ref(ids: dict[str, Any], **kw: Any) -> ResourceRef:
    return ResourceRef(type="ec2.instance", id=ids["instance"], account=HOME, region=REGION,
                       details={"vpc_id": ids["vpc"], "subnet_id": ids["subnet"]}, **kw)


def instance_groups(boto: Any, instance_id: str) -> list[str]:
    d = boto("ec2").describe_instances(InstanceIds=[instance_id])
    return sorted(g["GroupId"] for g in d["Reservations"][0]["Instances"][0]["SecurityGroups"])
