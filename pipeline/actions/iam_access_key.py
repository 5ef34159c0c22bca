"""iam.deactivate_access_key: set a leaked or abused access key inactive.

Inactive, not deleted: the key can be reactivated by rollback and its last-used
data stays for the investigation. The prior status is the before-state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

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
from pipeline.actions.registry import register

GLOBAL_REGION = "us-east-1"  # IAM is global; its endpoint lives in us-east-1


async def _status(aws: ClientSource, user: str, key_id: str) -> str | None:
    try:
        result = await describe(aws, "iam", "ListAccessKeys", GLOBAL_REGION, UserName=user)
    except ActionFailed as exc:
        if exc.code == "NoSuchEntity":
            return None
        raise
    for meta in result.get("AccessKeyMetadata", []):
        if meta.get("AccessKeyId") == key_id:
            return str(meta.get("Status"))
    return None


@register
class IamDeactivateAccessKey(BaseAction):
    kind: ClassVar[str] = "iam.deactivate_access_key"
    resource_types: ClassVar[frozenset[str]] = frozenset({"iam.access_key"})
    permissions: ClassVar[frozenset[str]] = frozenset({
        "iam:ListAccessKeys", "iam:GetAccessKeyLastUsed", "iam:UpdateAccessKey",
        "iam:ListUserTags",
    })

    async def plan(self, request: PlanRequest, aws: ClientSource) -> Plan:
        key_id = request.resource.id
        user = request.resource.details.get("user_name")
        if not user:
            try:
                found = await describe(aws, "iam", "GetAccessKeyLastUsed", GLOBAL_REGION,
                                       AccessKeyId=key_id)
            except ActionFailed as exc:
                if exc.code in ("NoSuchEntity", "AccessDenied", "InvalidClientTokenId"):
                    raise Refused(f"access key {key_id} not found in {aws.account}") from None
                raise
            user = found.get("UserName")
        if not user:
            raise Refused(f"access key {key_id}: owner unknown")
        status = await _status(aws, str(user), key_id)
        if status is None:
            raise Refused(f"access key {key_id} not found for user {user} in {aws.account}")
        if status == "Inactive":
            raise InEffect(f"access key {key_id} is already inactive")
        # Keys carry no tags; the owning user's exempt tag protects its keys.
        user_tags = await describe(aws, "iam", "ListUserTags", GLOBAL_REGION, UserName=user)
        steps = (Step(call("iam", "UpdateAccessKey", {
            "UserName": user, "AccessKeyId": key_id, "Status": "Inactive"},
            account=request.account, region=GLOBAL_REGION)),)
        return Plan(id=request.action_id, kind=self.kind, incident_id=request.incident_id,
                    resource=request.resource, account=request.account, region=request.region,
                    steps=steps, before={"user_name": user, "status": status}, settings={},
                    created_at=request.now, resource_tags=tags_dict(user_tags.get("Tags")))

    async def verify(self, applied: Applied, aws: ClientSource) -> bool:
        before = applied.plan.before
        return await _status(aws, str(before["user_name"]), applied.plan.resource.id) == "Inactive"

    async def rollback_steps(self, applied: Applied, aws: ClientSource) -> Sequence[Step]:
        before, plan = applied.plan.before, applied.plan
        if await _status(aws, str(before["user_name"]), plan.resource.id) == before["status"]:
            return []
        return [Step(call("iam", "UpdateAccessKey", {
            "UserName": before["user_name"], "AccessKeyId": plan.resource.id,
            "Status": before["status"]}, account=plan.account, region=GLOBAL_REGION))]
