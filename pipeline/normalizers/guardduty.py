"""GuardDuty findings (GetFindings shape, alone or as an EventBridge ``detail``) to Events.

Only the header fields are validated by a model; ``resource`` and ``service`` are
read defensively because their shape depends on the finding family (EC2, IAM,
S3, EKS, ECS, Lambda, RDS, Malware Protection...) and grows every year.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.models import Event, EventKind, ResourceRef, Severity
from pipeline.normalizers.common import (
    Envelope,
    dedupe,
    first_time,
    lambda_base_arn,
    looks_generated,
    lst,
    obj,
    opt_bool,
    opt_num,
    opt_str,
    resource_from_arn,
    str_list,
    tags_from_list,
    validate,
)

SOURCE = "aws.guardduty"
DETAIL_TYPE = "GuardDuty Finding"


class GuardDutyFinding(BaseModel):
    """The fields of a GuardDuty finding Riposte reads; everything else is kept as extra."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    id: str = Field(min_length=1)
    type: str = Field(min_length=1)
    severity: float = Field(ge=0, le=10, allow_inf_nan=False)
    account_id: str | None = Field(None, alias="accountId")
    region: str | None = None
    # Descriptive fields: read leniently (a wrong type loses the text, not the finding).
    partition: Any = None
    arn: Any = None
    title: Any = None
    description: Any = None
    created_at: Any = Field(None, alias="createdAt")
    updated_at: Any = Field(None, alias="updatedAt")
    resource: dict[str, Any] | None = None
    service: dict[str, Any] | None = None


@lru_cache(maxsize=256)
def severity_of(value: float) -> Severity:
    """GuardDuty's 0.1-10 scale times ten; its bands (Low 1-3.9, Medium 4-6.9, High 7-8.9,
    Critical 9-10) then line up with the common label cut-offs (10/40/70/90).

    Cached: GuardDuty uses a handful of values, and Severity is immutable."""
    native: float | int = int(value) if value.is_integer() else value
    return Severity.of_score(value * 10, native=native)


def normalize(doc: Mapping[str, Any], env: Envelope, raw: Mapping[str, Any]) -> Event:
    """One finding (an EventBridge ``detail`` or a bare finding) as an Event.

    Sample findings are flagged and made observe-only here already, so nothing
    downstream can act on one even if a later trust check were misconfigured.
    """
    finding = validate(GuardDutyFinding, doc, "GuardDuty finding")
    account = finding.account_id or env.account
    region = finding.region or env.region
    partition = opt_str(finding.partition) or "aws"
    resource = obj(finding.resource)
    service = obj(finding.service)
    action = obj(service.get("action"))
    additional = obj(service.get("additionalInfo"))

    affected = obj(obj(action.get("awsApiCallAction")).get("affectedResources"))
    resources = _resources(resource, affected, account, region, partition)
    attributes = _attributes(finding, service, action, resource)
    akd = obj(resource.get("accessKeyDetails"))
    sample = _is_sample(additional) or looks_generated(
        akd.get("accessKeyId"), akd.get("userName"), akd.get("principalId"),
        attributes.get("api"),
    )
    count_num = opt_num(service.get("count"))
    archived = opt_bool(service.get("archived")) is True
    created = first_time(finding.created_at)
    time = first_time(finding.updated_at) or env.time or created or env.fallback_time()
    return Event(
        id=finding.id,
        kind=EventKind.GUARDDUTY,
        type=finding.type,
        title=opt_str(finding.title) or finding.type,
        source=SOURCE,
        account=account,
        region=region,
        time=time,
        severity=severity_of(finding.severity),
        resources=resources,
        created_at=created,
        detail_type=env.detail_type or DETAIL_TYPE,
        sample=sample,
        observe_only=sample,
        observe_reason="sample_finding" if sample else None,
        status="ARCHIVED" if archived else "ACTIVE",
        count=int(count_num) if count_num is not None and count_num >= 0 else None,
        attributes=attributes,
        origin=env.origin(),
        received_at=env.record.received_at,
        raw=raw,
    )


def camel_keys(value: Any, depth: int = 0) -> Any:
    """A finding as boto3's GetFindings returns it (``Service.Action.ActionType``) in the
    API's own camelCase (``service.action.actionType``), which the rest of this module reads.

    Keys such as ``AWS::EC2::Instance`` (affected resources) are names, not fields, and
    are kept; nesting beyond 64 levels is left as it is.
    """
    if depth > 64:
        return value
    if isinstance(value, dict):
        return {(k[:1].lower() + k[1:] if isinstance(k, str) and "::" not in k else k):
                camel_keys(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [camel_keys(v, depth + 1) for v in value]
    return value


def _is_sample(additional: Mapping[str, Any]) -> bool:
    if opt_bool(additional.get("sample")) is True:
        return True
    # Newer findings carry additionalInfo as {"value": "<json text>", "type": "default"}.
    for value in additional.values():
        if isinstance(value, str) and '"sample":true' in value.replace(" ", "").lower():
            return True
    return False


# --- attributes -----------------------------------------------------------------------------
_REMOTE_ACTIONS = ("awsApiCallAction", "networkConnectionAction", "kubernetesApiCallAction",
                   "rdsLoginAttemptAction")


def _remote_ip_details(action: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in _REMOTE_ACTIONS:
        details = obj(obj(action.get(key)).get("remoteIpDetails"))
        if details:
            return details
    for probe in lst(obj(action.get("portProbeAction")).get("portProbeDetails")):
        details = obj(obj(probe).get("remoteIpDetails"))
        if details:
            return details
    return {}


def _attributes(finding: GuardDutyFinding, service: Mapping[str, Any],
                action: Mapping[str, Any], resource: Mapping[str, Any]) -> dict[str, Any]:
    family, _, rest = finding.type.partition(":")
    attrs: dict[str, Any] = {
        "finding_family": family if rest else None,
        "threat_purpose": family if rest else None,
        "resource_type_affected": rest.split("/", 1)[0] if "/" in rest else None,
        "threat_family": (rest.split("/", 1)[1].split(".", 1)[0].split("!", 1)[0]
                          if "/" in rest else None),
        "finding_arn": opt_str(finding.arn),
        "resource_type": opt_str(resource.get("resourceType")),
        "resource_role": opt_str(service.get("resourceRole")),
        "action_type": opt_str(action.get("actionType")),
        "detector_id": opt_str(service.get("detectorId")),
        "event_first_seen": opt_str(service.get("eventFirstSeen")),
        "event_last_seen": opt_str(service.get("eventLastSeen")),
        "description": opt_str(finding.description),
    }
    dns = obj(action.get("dnsRequestAction"))
    if dns:
        attrs["domain"] = opt_str(dns.get("domain"))
        attrs["blocked"] = opt_bool(dns.get("blocked"))
    api = obj(action.get("awsApiCallAction"))
    if api:
        attrs["api"] = opt_str(api.get("api"))
        attrs["api_service"] = opt_str(api.get("serviceName"))
        attrs["caller_type"] = opt_str(api.get("callerType"))
        attrs["error_code"] = opt_str(api.get("errorCode"))
        domain = opt_str(obj(api.get("domainDetails")).get("domain"))
        if domain:
            attrs["caller_domain"] = domain
    conn = obj(action.get("networkConnectionAction"))
    if conn:
        attrs["connection_direction"] = opt_str(conn.get("connectionDirection"))
        attrs["protocol"] = opt_str(conn.get("protocol"))
        attrs["local_port"] = opt_num(obj(conn.get("localPortDetails")).get("port"))
        attrs["remote_port"] = opt_num(obj(conn.get("remotePortDetails")).get("port"))
        attrs["blocked"] = opt_bool(conn.get("blocked"))
    remote = _remote_ip_details(action)
    if remote:
        org = obj(remote.get("organization"))
        attrs["remote_ip"] = opt_str(remote.get("ipAddressV4")) or opt_str(
            remote.get("ipAddressV6"))
        attrs["remote_country"] = opt_str(obj(remote.get("country")).get("countryName"))
        attrs["remote_asn"] = opt_str(str(org["asn"])) if org.get("asn") is not None else None
        attrs["remote_org"] = opt_str(org.get("asnOrg")) or opt_str(org.get("org"))
    return {k: v for k, v in attrs.items() if v is not None}


# --- resources ------------------------------------------------------------------------------
def _resources(resource: Mapping[str, Any], affected: Mapping[str, Any], account: str | None,
               region: str | None, partition: str) -> tuple[ResourceRef, ...]:
    rtype = resource.get("resourceType")
    instance = obj(resource.get("instanceDetails"))
    out: list[ResourceRef] = []
    if rtype == "Instance":
        _add_instance(out, instance, account, region, partition)
    elif rtype == "AccessKey":
        _add_access_key(out, obj(resource.get("accessKeyDetails")), account, partition)
    elif rtype == "S3Bucket":
        for bucket in lst(resource.get("s3BucketDetails")):
            _add_bucket(out, obj(bucket), account, region)
        _add_access_key(out, obj(resource.get("accessKeyDetails")), account, partition)
    elif rtype in ("EKSCluster", "ECSCluster", "Container"):
        _add_workload(out, resource, account, region)
        _add_instance(out, instance, account, region, partition)
    elif rtype == "Lambda":
        _add_lambda(out, obj(resource.get("lambdaDetails")), account, region)
    else:
        _add_instance(out, instance, account, region, partition)
        _add_other(out, resource, account, region)
    if not out:
        _add_affected(out, affected, account, region)
    return dedupe(out)


_AFFECTED_TYPES = {"AWS::EC2::Instance": "ec2.instance", "AWS::S3::Bucket": "s3.bucket",
                   "AWS::IAM::Role": "iam.role", "AWS::IAM::User": "iam.user"}


def _add_affected(out: list[ResourceRef], affected: Mapping[str, Any], account: str | None,
                  region: str | None) -> None:
    """API-call findings without a ``resource`` still name what the call touched."""
    for cfn_type, value in affected.items():
        name = opt_str(value)
        if name is None:
            continue
        if name.startswith("arn:"):
            out.append(resource_from_arn(name, account=account, region=region))
        else:
            out.append(ResourceRef(_AFFECTED_TYPES.get(cfn_type, "other"), name, None, account,
                                   region, details={"native_type": cfn_type}))


def _add_instance(out: list[ResourceRef], inst: Mapping[str, Any], account: str | None,
                  region: str | None, partition: str) -> None:
    instance_id = opt_str(inst.get("instanceId"))
    if instance_id is None:
        return
    enis = [obj(e) for e in lst(inst.get("networkInterfaces"))]
    private_ips: list[str] = []
    public_ips: list[str] = []
    groups: list[str] = []
    interfaces: list[dict[str, Any]] = []
    for eni in enis:
        ips = [opt_str(obj(p).get("privateIpAddress")) for p in lst(eni.get("privateIpAddresses"))]
        eni_private = [ip for ip in (opt_str(eni.get("privateIpAddress")), *ips) if ip]
        private_ips.extend(ip for ip in eni_private if ip not in private_ips)
        public = opt_str(eni.get("publicIp"))
        if public and public not in public_ips:
            public_ips.append(public)
        eni_groups = [g for g in (opt_str(obj(sg).get("groupId"))
                                  for sg in lst(eni.get("securityGroups"))) if g]
        groups.extend(g for g in eni_groups if g not in groups)
        interfaces.append({
            "id": opt_str(eni.get("networkInterfaceId")),
            "vpc_id": opt_str(eni.get("vpcId")),
            "subnet_id": opt_str(eni.get("subnetId")),
            "private_ips": eni_private,
            "public_ip": public,
            "ipv6_addresses": str_list(eni.get("ipv6Addresses")),
            "security_group_ids": eni_groups,
        })
    first = interfaces[0] if interfaces else {}
    details = {
        "vpc_id": first.get("vpc_id"),
        "subnet_id": first.get("subnet_id"),
        "image_id": opt_str(inst.get("imageId")),
        "instance_type": opt_str(inst.get("instanceType")),
        "instance_state": opt_str(inst.get("instanceState")),
        "availability_zone": opt_str(inst.get("availabilityZone")),
        "platform": opt_str(inst.get("platform")),
        "private_ips": private_ips,
        "public_ips": public_ips,
        "security_group_ids": groups,
        "network_interfaces": interfaces,
        "instance_profile_arn": opt_str(obj(inst.get("iamInstanceProfile")).get("arn")),
    }
    out.append(ResourceRef(
        type="ec2.instance",
        id=instance_id,
        arn=(f"arn:{partition}:ec2:{region}:{account}:instance/{instance_id}"
             if account and region else None),
        account=account,
        region=region,
        tags=tags_from_list(inst.get("tags")),
        details={k: v for k, v in details.items() if v is not None},
    ))


def _add_access_key(out: list[ResourceRef], akd: Mapping[str, Any], account: str | None,
                    partition: str) -> None:
    key_id = opt_str(akd.get("accessKeyId"))
    user_name = opt_str(akd.get("userName"))
    user_type = opt_str(akd.get("userType"))
    principal_id = opt_str(akd.get("principalId"))
    if key_id is not None:
        out.append(ResourceRef(
            type="iam.access_key", id=key_id, account=account,
            details={k: v for k, v in (("user_name", user_name), ("user_type", user_type),
                                       ("principal_id", principal_id)) if v is not None},
        ))
    if user_name is None:
        return
    if user_type == "IAMUser":
        out.append(ResourceRef(
            "iam.user", user_name,
            f"arn:{partition}:iam::{account}:user/{user_name}" if account else None, account))
    elif user_type == "AssumedRole":
        out.append(ResourceRef(
            "iam.role", user_name,
            f"arn:{partition}:iam::{account}:role/{user_name}" if account else None, account))
    elif user_type == "Root" and account:
        out.append(ResourceRef("aws.account", account, None, account))


def _add_bucket(out: list[ResourceRef], bucket: Mapping[str, Any], account: str | None,
                region: str | None) -> None:
    arn = opt_str(bucket.get("arn"))
    name = opt_str(bucket.get("name")) or (arn.rsplit(":", 1)[-1] if arn else None)
    if name is None:
        return
    public = obj(bucket.get("publicAccess"))
    details = {
        "bucket_type": opt_str(bucket.get("type")),
        "effective_permission": opt_str(public.get("effectivePermission")),
        "owner_id": opt_str(obj(bucket.get("owner")).get("id")),
    }
    out.append(ResourceRef(
        type="s3.bucket", id=name, arn=arn or f"arn:aws:s3:::{name}", account=account,
        region=region, tags=tags_from_list(bucket.get("tags")),
        details={k: v for k, v in details.items() if v is not None},
    ))


def _image_ref(image: Any, account: str | None, region: str | None) -> ResourceRef | None:
    """An ECR image named by digest (``repo@sha256:...``); tags alone do not identify one."""
    text = opt_str(image)
    if text is None or "@sha256:" not in text:
        return None
    repo_uri, digest = text.split("@", 1)
    repository = repo_uri.split("/", 1)[1] if "/" in repo_uri else repo_uri
    return ResourceRef("ecr.image", digest, None, account, region,
                       details={"repository": repository, "image": text})


def _add_workload(out: list[ResourceRef], resource: Mapping[str, Any], account: str | None,
                  region: str | None) -> None:
    eks = obj(resource.get("eksClusterDetails"))
    name = opt_str(eks.get("name"))
    if name:
        out.append(ResourceRef("eks.cluster", name, opt_str(eks.get("arn")), account, region,
                               details={"vpc_id": eks.get("vpcId")} if eks.get("vpcId") else {}))
    ecs = obj(resource.get("ecsClusterDetails"))
    task = obj(ecs.get("taskDetails"))
    task_arn = opt_str(task.get("arn"))
    if task_arn:
        out.append(ResourceRef("ecs.task", task_arn, task_arn, account, region,
                               details={"cluster_arn": opt_str(ecs.get("arn")),
                                        "task_definition_arn": opt_str(task.get("definitionArn"))}))
    elif opt_str(ecs.get("arn")):
        out.append(ResourceRef("ecs.cluster", str(ecs["arn"]), str(ecs["arn"]), account, region,
                               details={"name": opt_str(ecs.get("name"))}))
    containers: list[Any] = [resource.get("containerDetails")]
    workload = obj(obj(resource.get("kubernetesDetails")).get("kubernetesWorkloadDetails"))
    containers.extend(lst(workload.get("containers")))
    containers.extend(lst(task.get("containers")))
    for container in containers:
        ref = _image_ref(obj(container).get("image"), account, region)
        if ref is not None:
            out.append(ref)


def _add_lambda(out: list[ResourceRef], details: Mapping[str, Any], account: str | None,
                region: str | None) -> None:
    arn = opt_str(details.get("functionArn"))
    if arn is None:
        return
    base = lambda_base_arn(arn)
    out.append(ResourceRef(
        "lambda.function", base, base, account, region,
        tags=tags_from_list(details.get("tags")),
        details={k: v for k, v in (("function_name", opt_str(details.get("functionName"))),
                                   ("role", opt_str(details.get("role")))) if v is not None},
    ))


_OTHER_ID_KEYS = (("rdsDbInstanceDetails", "dbInstanceArn"), ("ebsVolumeDetails", None),
                  ("rdsLimitlessDbDetails", "dbShardGroupArn"))


def _add_other(out: list[ResourceRef], resource: Mapping[str, Any], account: str | None,
               region: str | None) -> None:
    rtype = opt_str(resource.get("resourceType")) or "unknown"
    for key, arn_key in _OTHER_ID_KEYS:
        sub = obj(resource.get(key))
        arn = opt_str(sub.get(arn_key)) if arn_key else None
        if arn:
            ref = resource_from_arn(arn, account=account, region=region)
            out.append(ResourceRef(ref.type, ref.id, ref.arn, ref.account, ref.region,
                                   details={"native_type": rtype}))
            return
