"""AWS Security Finding Format (Security Hub) findings to Events.

ASFF wraps findings from many products (GuardDuty, Inspector, Macie, Config,
third parties), so the Event keeps the ASFF view (``kind=securityhub``) and
records the product in ``attributes``; correlation can still match on the
resource ids, which are mapped to Riposte's vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.models import NO_SEVERITY, Event, EventKind, ResourceRef, Severity
from pipeline.normalizers.common import (
    Envelope,
    account_from_arn,
    dedupe,
    first_time,
    label_of,
    lambda_base_arn,
    looks_generated,
    obj,
    opt_bool,
    opt_num,
    opt_str,
    parse_arn,
    region_from_arn,
    severity_from_label,
    str_list,
    tags_from_list,
    validate,
)

SOURCE = "aws.securityhub"
DETAIL_TYPE = "Security Hub Findings - Imported"


class AsffFinding(BaseModel):
    """The ASFF fields Riposte reads; everything else is kept as extra."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    id: str = Field(min_length=1, alias="Id")
    product_arn: str | None = Field(None, alias="ProductArn")
    generator_id: str | None = Field(None, alias="GeneratorId")
    aws_account_id: str | None = Field(None, alias="AwsAccountId")
    region: str | None = Field(None, alias="Region")
    types: list[str] | None = Field(None, alias="Types")
    title: str | None = Field(None, alias="Title")
    description: str | None = Field(None, alias="Description")
    # Read leniently: a malformed block loses a fact, not the finding.
    severity: Any = Field(None, alias="Severity")
    created_at: Any = Field(None, alias="CreatedAt")
    updated_at: Any = Field(None, alias="UpdatedAt")
    workflow: Any = Field(None, alias="Workflow")
    workflow_state: Any = Field(None, alias="WorkflowState")
    record_state: Any = Field(None, alias="RecordState")
    resources: list[dict[str, Any]] | None = Field(None, alias="Resources")
    product_fields: Any = Field(None, alias="ProductFields")
    sample: Any = Field(None, alias="Sample")
    product_name: Any = Field(None, alias="ProductName")
    company_name: Any = Field(None, alias="CompanyName")
    compliance: Any = Field(None, alias="Compliance")


def severity_of(sev: Mapping[str, Any]) -> Severity:
    """``Label`` wins (it is what Security Hub shows); ``Normalized`` gives the score.

    Findings with only ``Normalized`` (older producers) take the label from it.
    """
    label = label_of(sev.get("Label"))
    normalized = opt_num(sev.get("Normalized"))
    native = opt_str(sev.get("Label"))
    if label is not None:
        return severity_from_label(label, normalized, native)
    if normalized is not None:
        return Severity.of_score(normalized, native=int(normalized)
                                 if normalized.is_integer() else normalized)
    product = opt_num(sev.get("Product"))
    if product is not None:
        return Severity.of_score(product * 10 if product <= 10 else product, native=product)
    return NO_SEVERITY


def normalize(doc: Mapping[str, Any], env: Envelope, raw: Mapping[str, Any]) -> Event:
    """One ASFF finding as an Event; ``Types[0]`` (else ``Title``) is its type."""
    finding = validate(AsffFinding, doc, "ASFF finding")
    account = finding.aws_account_id or env.account or account_from_arn(finding.id)
    listed = finding.resources or []
    first_res = listed[0] if listed else {}
    region = (finding.region or opt_str(first_res.get("Region")) or env.region
              or region_from_arn(finding.product_arn))
    product_fields = obj(finding.product_fields)
    resources = dedupe([_resource(r, account, region) for r in listed
                        if opt_str(r.get("Id"))])
    record_state = opt_str(finding.record_state)
    workflow_status = (opt_str(obj(finding.workflow).get("Status"))
                       or opt_str(finding.workflow_state))
    if record_state == "ARCHIVED":
        status: str | None = "ARCHIVED"
    else:
        status = workflow_status or record_state
    additional = product_fields.get("additionalInfo")
    sample = (opt_bool(finding.sample) is True
              or (isinstance(additional, str)
                  and '"sample":true' in additional.replace(" ", "").lower())
              or looks_generated(*(r.id for r in resources)))
    created = first_time(finding.created_at)
    time = first_time(finding.updated_at) or env.time or created or env.fallback_time()
    type_ = finding.types[0] if finding.types else (finding.title or "unknown")
    count = opt_num(product_fields.get("count"))
    attributes: dict[str, Any] = {
        "product_arn": finding.product_arn,
        "product_name": (opt_str(product_fields.get("aws/securityhub/ProductName"))
                         or opt_str(finding.product_name)),
        "company_name": (opt_str(product_fields.get("aws/securityhub/CompanyName"))
                         or opt_str(finding.company_name)),
        "generator_id": finding.generator_id,
        "types": finding.types or None,
        "workflow_status": workflow_status,
        "record_state": record_state,
        "compliance_status": opt_str(obj(finding.compliance).get("Status")),
        "description": finding.description,
        "action_type": opt_str(product_fields.get("action/actionType")),
        "remote_ip": opt_str(product_fields.get(
            "action/awsApiCallAction/remoteIpDetails/ipAddressV4")),
    }
    return Event(
        id=finding.id,
        kind=EventKind.SECURITYHUB,
        type=type_,
        title=finding.title or type_,
        source=SOURCE,
        account=account,
        region=region,
        time=time,
        severity=severity_of(obj(finding.severity)),
        resources=resources,
        created_at=created,
        detail_type=env.detail_type or DETAIL_TYPE,
        sample=sample,
        observe_only=sample,
        observe_reason="sample_finding" if sample else None,
        status=status,
        count=int(count) if count is not None and count >= 0 else None,
        attributes={k: v for k, v in attributes.items() if v is not None},
        origin=env.origin(),
        received_at=env.record.received_at,
        raw=raw,
    )


_SIMPLE_TYPES = {
    "AwsIamUser": "iam.user",
    "AwsIamRole": "iam.role",
    "AwsEksCluster": "eks.cluster",
    "AwsEcsTask": "ecs.task",
    "AwsEcsCluster": "ecs.cluster",
}


def _resource(res: Mapping[str, Any], account: str | None, region: str | None) -> ResourceRef:
    rid = str(res["Id"])
    rtype = res.get("Type")
    reg = opt_str(res.get("Region")) or region
    tags = tags_from_list(res.get("Tags"))
    details = obj(res.get("Details"))
    arn = rid if rid.startswith("arn:") else None
    parsed = parse_arn(rid)
    # Producers write malformed ARNs too ("arn:aws:us-east-1:123:instance/i-0abc"): the last
    # path segment is still the resource's own id.
    tail = (parsed.resource if parsed is not None else rid).rsplit("/", 1)[-1]
    native = {"native_type": rtype, "source_id": rid}
    if rtype == "AwsEc2Instance":
        ec2 = obj(details.get("AwsEc2Instance"))
        info = {
            "vpc_id": opt_str(ec2.get("VpcId")),
            "subnet_id": opt_str(ec2.get("SubnetId")),
            "image_id": opt_str(ec2.get("ImageId")),
            "instance_type": opt_str(ec2.get("Type")),
            "ip_addresses": str_list(ec2.get("IpV4Addresses")),
            "instance_profile_arn": opt_str(ec2.get("IamInstanceProfileArn")),
        }
        return ResourceRef("ec2.instance", tail, arn, account, reg, tags,
                           {**native, **{k: v for k, v in info.items() if v is not None}})
    if rtype == "AwsS3Bucket":
        name = parsed.resource if parsed is not None else rid
        return ResourceRef("s3.bucket", name, arn or f"arn:aws:s3:::{name}", account, reg, tags,
                           native)
    if rtype == "AwsIamAccessKey":
        key = obj(details.get("AwsIamAccessKey"))
        key_id = opt_str(key.get("AccessKeyId")) or rid
        info = {"user_name": opt_str(key.get("UserName")),
                "principal_id": opt_str(key.get("PrincipalId")),
                "principal_type": opt_str(key.get("PrincipalType")),
                "status": opt_str(key.get("Status"))}
        return ResourceRef("iam.access_key", key_id, None, account, reg, tags,
                           {**native, **{k: v for k, v in info.items() if v is not None}})
    if rtype == "AwsEcrContainerImage":
        img = obj(details.get("AwsEcrContainerImage"))
        digest = opt_str(img.get("ImageDigest")) or tail
        return ResourceRef("ecr.image", digest, arn, account, reg, tags,
                           {**native, "repository": opt_str(img.get("RepositoryName")),
                            "image_tags": str_list(img.get("ImageTags"))})
    if rtype == "AwsLambdaFunction":
        base = lambda_base_arn(rid)
        return ResourceRef("lambda.function", base, base if arn else None, account, reg, tags,
                           native)
    if rtype == "AwsAccount":
        acct = rid.rsplit(":", 1)[-1] if rid.startswith("AWS::::Account:") else (
            parsed.account if parsed is not None and parsed.account else rid)
        return ResourceRef("aws.account", acct, None, acct, reg, tags, native)
    if isinstance(rtype, str) and rtype in _SIMPLE_TYPES:
        return ResourceRef(_SIMPLE_TYPES[rtype], tail if rtype != "AwsEcsTask" else rid, arn,
                           account, reg, tags, native)
    return ResourceRef("other", rid, arn, account, reg, tags, native)

