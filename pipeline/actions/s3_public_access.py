"""s3.block_public_access: put the bucket's public access block, recording the prior one.

Rollback restores the prior configuration exactly, or deletes the block when the
bucket had none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pipeline.actions.base import (
    ActionFailed,
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
from pipeline.actions.config import S3BlockSettings
from pipeline.actions.registry import register

_KEYS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")


async def current_block(aws: ClientSource, region: str, bucket: str) -> dict[str, bool] | None:
    try:
        result = await describe(aws, "s3", "GetPublicAccessBlock", region, Bucket=bucket)
    except ActionFailed as exc:
        if exc.code == "NoSuchPublicAccessBlockConfiguration":
            return None
        if exc.code == "NoSuchBucket":
            raise Refused(f"bucket {bucket} not found in {aws.account}") from None
        raise
    config: dict[str, Any] = result.get("PublicAccessBlockConfiguration", {})
    return {k: bool(config.get(k, False)) for k in _KEYS}


async def _bucket_tags(aws: ClientSource, region: str, bucket: str) -> dict[str, str]:
    try:
        result = await describe(aws, "s3", "GetBucketTagging", region, Bucket=bucket)
    except ActionFailed as exc:
        if exc.code == "NoSuchTagSet":
            return {}
        raise
    return tags_dict(result.get("TagSet"))


@register
class S3BlockPublicAccess(BaseAction):
    kind: ClassVar[str] = "s3.block_public_access"
    resource_types: ClassVar[frozenset[str]] = frozenset({"s3.bucket"})
    permissions: ClassVar[frozenset[str]] = frozenset({
        "s3:GetBucketPublicAccessBlock", "s3:PutBucketPublicAccessBlock",
        "s3:GetBucketTagging",
    })

    async def plan(self, request: PlanRequest, aws: ClientSource) -> Plan:
        s = request.settings
        assert isinstance(s, S3BlockSettings)
        bucket = request.resource.id
        before = await current_block(aws, request.region, bucket)
        tags = await _bucket_tags(aws, request.region, bucket)
        wanted = {"BlockPublicAcls": s.block_public_acls, "IgnorePublicAcls": s.ignore_public_acls,
                  "BlockPublicPolicy": s.block_public_policy,
                  "RestrictPublicBuckets": s.restrict_public_buckets}
        if before == wanted:
            raise InEffect(f"bucket {bucket} already has the wanted public access block")
        steps = (Step(call("s3", "PutPublicAccessBlock", {
            "Bucket": bucket, "PublicAccessBlockConfiguration": wanted},
            account=request.account, region=request.region)),)
        return Plan(id=request.action_id, kind=self.kind, incident_id=request.incident_id,
                    resource=request.resource, account=request.account, region=request.region,
                    steps=steps, before={"bucket": bucket, "public_access_block": before},
                    settings=s.model_dump(), created_at=request.now, resource_tags=tags)

    async def verify(self, applied: Applied, aws: ClientSource) -> bool:
        plan = applied.plan
        wanted = dict(plan.calls[0].params["PublicAccessBlockConfiguration"])
        current = await current_block(aws, plan.region, str(plan.before["bucket"]))
        return current == wanted

    async def rollback_steps(self, applied: Applied, aws: ClientSource) -> Sequence[Step]:
        plan = applied.plan
        bucket = str(plan.before["bucket"])
        prior = plan.before["public_access_block"]
        if await current_block(aws, plan.region, bucket) == prior:
            return []
        if prior is None:
            return [Step(call("s3", "DeletePublicAccessBlock", {"Bucket": bucket},
                              account=plan.account, region=plan.region))]
        return [Step(call("s3", "PutPublicAccessBlock", {
            "Bucket": bucket, "PublicAccessBlockConfiguration": dict(prior)},
            account=plan.account, region=plan.region))]
