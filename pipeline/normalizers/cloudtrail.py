"""CloudTrail records to Events, whether they came through EventBridge or a log file.

An "AWS API Call via CloudTrail" event's ``detail`` and one item of a log file's
``Records`` are the same record, so both take this one path and produce the same
Event (only ``origin`` and ``detail_type``'s provenance differ).

Resources are ordered caller first: the access key (the thing a key-abuse
response deactivates), then the principal (user or role), then what the call
touched (the ``resources`` array and the obvious request parameters).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.models import NO_SEVERITY, Event, EventKind, ResourceRef
from pipeline.normalizers.common import (
    Envelope,
    dedupe,
    first_time,
    invalid,
    lst,
    obj,
    opt_bool,
    opt_str,
    resource_from_arn,
    validate,
)

DETAIL_TYPES = {
    "AwsApiCall": "AWS API Call via CloudTrail",
    "AwsConsoleSignIn": "AWS Console Sign In via CloudTrail",
    "AwsServiceEvent": "AWS Service Event via CloudTrail",
    "AwsConsoleAction": "AWS Console Action via CloudTrail",
    "AwsCloudTrailInsight": "AWS Insight via CloudTrail",
}


class CloudTrailRecord(BaseModel):
    """The fields of a CloudTrail record Riposte reads; everything else is kept as extra."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    event_id: str | None = Field(None, alias="eventID", min_length=1)
    event_name: str = Field(min_length=1, alias="eventName")
    event_source: str = Field(min_length=1, alias="eventSource")
    event_time: Any = Field(None, alias="eventTime")
    event_type: Any = Field(None, alias="eventType")
    aws_region: str | None = Field(None, alias="awsRegion")
    recipient_account_id: str | None = Field(None, alias="recipientAccountId")
    source_ip: Any = Field(None, alias="sourceIPAddress")
    user_agent: Any = Field(None, alias="userAgent")
    error_code: Any = Field(None, alias="errorCode")
    error_message: Any = Field(None, alias="errorMessage")
    read_only: Any = Field(None, alias="readOnly")
    user_identity: dict[str, Any] | None = Field(None, alias="userIdentity")
    # Kept as published (null, an object, occasionally something else).
    request_parameters: Any = Field(None, alias="requestParameters")
    response_elements: Any = Field(None, alias="responseElements")
    resources: list[Any] | None = None


class CloudTrailAttributes(dict[str, Any]):
    """An event's attributes exactly as :func:`normalize` wrote them.

    Each field normalize reads from the record is present when the record has it as a
    non-empty string (``mfa_authenticated`` and ``read_only``: a boolean; the request and
    response: any non-null value) and absent otherwise, so a reader that finds this type
    need not look in the raw record for what is missing (see
    :class:`~pipeline.detections._cloudtrail.CloudTrailView`). It is an ordinary dict in
    every other way: it serialises, compares and copies as one.
    """

    __slots__ = ()


# Field names that differ from their alias: the model also accepts them (populate_by_name).
_NAMES = frozenset(name for name, info in CloudTrailRecord.model_fields.items()
                   if info.alias not in (None, name))


def _read(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    """The record, under its CloudTrail names; the model checks only what does not plainly
    conform.

    Log files hold well-formed records, which are returned as they are, several times
    faster than the model would read them and with the same values; anything unusual (a
    wrong type, an empty required string, a snake_case field name) goes through the
    model, so error messages and coercions stay the model's.
    """
    get = doc.get
    name, source, ident = get("eventName"), get("eventSource"), get("userIdentity")
    event_id, region, recipient = get("eventID"), get("awsRegion"), get("recipientAccountId")
    resources = get("resources")
    if (type(name) is str and name and type(source) is str and source
            and (event_id is None or (type(event_id) is str and event_id))
            and (region is None or type(region) is str)
            and (recipient is None or type(recipient) is str)
            and (ident is None or type(ident) is dict)
            and (resources is None or type(resources) is list)
            and _NAMES.isdisjoint(doc)):
        return doc
    return validate(CloudTrailRecord, doc, "CloudTrail record").model_dump(by_alias=True)


def source_for(event_source: str) -> str:
    """``iam.amazonaws.com`` -> ``aws.iam``: the EventBridge ``source`` of that record."""
    return "aws." + event_source.split(".", 1)[0]


def normalize(doc: Mapping[str, Any], env: Envelope, raw: Mapping[str, Any]) -> Event:
    """One CloudTrail record as an Event (``eventID`` is the id, ``eventName`` the type).

    A record from a log file has no envelope, so ``source`` and ``detail_type`` are
    what EventBridge would have said for it: rules and allowlists see one vocabulary.
    """
    rec = _read(doc)
    get = rec.get
    event_name: str = rec["eventName"]
    event_source: str = rec["eventSource"]
    event_id = get("eventID") or (env.id if env.shape == "eventbridge" else None)
    if event_id is None:
        raise invalid("CloudTrail record: eventID: Field required")
    ident: Mapping[str, Any] = get("userIdentity") or {}
    context = obj(ident.get("sessionContext"))
    issuer = obj(context.get("sessionIssuer"))
    ident_account = opt_str(ident.get("accountId"))
    recipient = opt_str(get("recipientAccountId"))
    account = recipient or env.account or ident_account
    region = get("awsRegion") or env.region
    access_key = opt_str(ident.get("accessKeyId"))
    user_type = opt_str(ident.get("type"))
    user_name = opt_str(ident.get("userName")) or opt_str(issuer.get("userName"))
    principal_arn = opt_str(ident.get("arn"))
    principal_id = opt_str(ident.get("principalId"))
    event_type = opt_str(get("eventType"))
    request = get("requestParameters")
    # Unset fields are left out (see CloudTrailAttributes), in this order.
    attributes = CloudTrailAttributes(event_name=event_name, event_source=event_source)
    if event_type is not None:
        attributes["event_type"] = event_type
    if (source_ip := opt_str(get("sourceIPAddress"))) is not None:
        attributes["source_ip"] = source_ip
    if (user_agent := opt_str(get("userAgent"))) is not None:
        attributes["user_agent"] = user_agent
    if access_key is not None:
        attributes["access_key_id"] = access_key
    if principal_arn is not None:
        attributes["principal_arn"] = principal_arn
    if principal_id is not None:
        attributes["principal_id"] = principal_id
    if user_type is not None:
        attributes["user_type"] = user_type
    if user_name is not None:
        attributes["user_name"] = user_name
    if ident_account is not None:
        attributes["account_id"] = ident_account
    if (invoked_by := opt_str(ident.get("invokedBy"))) is not None:
        attributes["invoked_by"] = invoked_by
    if (issuer_arn := opt_str(issuer.get("arn"))) is not None:
        attributes["session_issuer_arn"] = issuer_arn
    if (mfa := opt_bool(obj(context.get("attributes")).get("mfaAuthenticated"))) is not None:
        attributes["mfa_authenticated"] = mfa
    if (error_code := opt_str(get("errorCode"))) is not None:
        attributes["error_code"] = error_code
    if (error_message := opt_str(get("errorMessage"))) is not None:
        attributes["error_message"] = error_message
    if (read_only := opt_bool(get("readOnly"))) is not None:
        attributes["read_only"] = read_only
    if request is not None:
        attributes["request_parameters"] = request
    if (response := get("responseElements")) is not None:
        attributes["response_elements"] = response
    if recipient is not None:
        attributes["recipient_account_id"] = recipient
    time = first_time(get("eventTime")) or env.time or env.fallback_time()
    principal = _principal(issuer, user_type, user_name, principal_arn, account=ident_account,
                           principal_id=principal_id)
    resources: list[ResourceRef] = []
    if access_key is not None:
        resources.append(ResourceRef(
            "iam.access_key", access_key, None, ident_account or account,
            details={k: v for k, v in (("user_name", user_name),
                                       ("principal_id", principal_id),
                                       ("principal_arn", principal_arn),
                                       ("temporary", access_key.startswith("ASIA")))
                     if v is not None},
        ))
    if principal is not None:
        resources.append(principal)
    resources.extend(_touched(get("resources"), obj(request), account, region))
    return Event(
        id=event_id,
        kind=EventKind.CLOUDTRAIL,
        type=event_name,
        title=f"{event_name} ({event_source})",
        source=env.source or source_for(event_source),
        account=account,
        region=region,
        time=time,
        severity=NO_SEVERITY,
        resources=dedupe(resources),
        created_at=time,  # a CloudTrail record is created by the call it records
        detail_type=env.detail_type or DETAIL_TYPES.get(event_type or "AwsApiCall",
                                                        DETAIL_TYPES["AwsApiCall"]),
        attributes=attributes,
        origin=env.origin(),
        received_at=env.record.received_at,
        raw=raw,
    )


def _principal(issuer: Mapping[str, Any], user_type: str | None, user_name: str | None,
               principal_arn: str | None, *, account: str | None,
               principal_id: str | None) -> ResourceRef | None:
    if user_type == "IAMUser" and user_name:
        return ResourceRef("iam.user", user_name, principal_arn, account,
                           details={"principal_id": principal_id})
    if user_type == "AssumedRole":
        role_arn = opt_str(issuer.get("arn"))
        role_name = opt_str(issuer.get("userName"))
        if role_name is None and role_arn:
            role_name = role_arn.rsplit("/", 1)[-1]
        if role_name is None and principal_arn and ":assumed-role/" in principal_arn:
            role_name = principal_arn.split(":assumed-role/", 1)[1].split("/", 1)[0]
        if role_name:
            return ResourceRef("iam.role", role_name, role_arn, account,
                               details={"assumed_role_arn": principal_arn,
                                        "principal_id": principal_id})
    if user_type == "Root" and account:
        return ResourceRef("aws.account", account, principal_arn, account,
                           details={"root": True})
    return None


def _touched(resources: list[Any] | None, params: Mapping[str, Any], account: str | None,
             region: str | None) -> list[ResourceRef]:
    out: list[ResourceRef] = []
    for entry in lst(resources):
        item = obj(entry)
        arn = opt_str(item.get("ARN")) or opt_str(item.get("arn"))
        if arn:
            out.append(resource_from_arn(arn, account=opt_str(item.get("accountId")) or account,
                                         region=region))
    if not params:
        return out
    user = opt_str(params.get("userName"))
    if user:
        out.append(ResourceRef("iam.user", user, None, account))
    role = opt_str(params.get("roleName"))
    if role:
        out.append(ResourceRef("iam.role", role, None, account))
    bucket = opt_str(params.get("bucketName"))
    if bucket:
        out.append(ResourceRef("s3.bucket", bucket, f"arn:aws:s3:::{bucket}", account, region))
    key_id = opt_str(params.get("accessKeyId"))
    if key_id:
        out.append(ResourceRef("iam.access_key", key_id, None, account))
    instance_id = opt_str(params.get("instanceId"))
    if instance_id and instance_id.startswith("i-"):
        out.append(ResourceRef("ec2.instance", instance_id, None, account, region))
    for item in lst(obj(params.get("instancesSet")).get("items")):
        iid = opt_str(obj(item).get("instanceId"))
        if iid:
            out.append(ResourceRef("ec2.instance", iid, None, account, region))
    return out
