"""IAM policy changes that hand out wildcards, and attachments of administrator policies.

An inline or managed policy whose Allow statement grants ``Action: *`` on
``Resource: *`` is administrator access under another name (CRITICAL); a wildcard
on either side alone is still far broader than any reviewed policy should be
(HIGH). CloudTrail logs ``policyDocument`` as a JSON string, URL-encoded by IAM,
so both forms are read. Attaching a configured admin policy (AdministratorAccess
by default) to a user or role is HIGH.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline.detections._cloudtrail import CloudTrailView, as_list, load_policy
from pipeline.detections.config import DetectionsConfig
from pipeline.detections.registry import CloudTrailRule, Hit, register
from pipeline.models import ResourceRef, SeverityLabel

if TYPE_CHECKING:
    from pipeline.context import RuntimeContext

POLICY_WRITES = frozenset({"PutUserPolicy", "PutRolePolicy", "PutGroupPolicy", "CreatePolicy",
                           "CreatePolicyVersion"})
ATTACHES = frozenset({"AttachUserPolicy", "AttachRolePolicy", "AttachGroupPolicy"})
_WILDCARD_ACTIONS = frozenset({"*", "*:*"})


def wildcard_statements(document: Any) -> list[dict[str, Any]]:
    """Each Allow statement with a wildcard action and/or resource, described."""
    if not isinstance(document, Mapping):
        return []
    found: list[dict[str, Any]] = []
    for index, stmt in enumerate(as_list(document.get("Statement"))):
        if not isinstance(stmt, Mapping) or str(stmt.get("Effect", "")).lower() != "allow":
            continue
        actions = [str(a).strip() for a in as_list(stmt.get("Action"))]
        resources = [str(r).strip() for r in as_list(stmt.get("Resource"))]
        any_action = any(a in _WILDCARD_ACTIONS for a in actions)
        any_resource = "*" in resources
        if any_action or any_resource:
            found.append({"index": index, "sid": stmt.get("Sid"), "action_wildcard": any_action,
                          "resource_wildcard": any_resource})
    return found


def _policy_target(view: CloudTrailView) -> ResourceRef | None:
    params = view.request_parameters
    account = view.own_account
    for key, rtype in (("userName", "iam.user"), ("roleName", "iam.role"),
                       ("groupName", "other")):
        name = params.get(key)
        if isinstance(name, str) and name:
            return ResourceRef(rtype, name, account=account, details={"kind": key[:-4]})
    arn = params.get("policyArn")
    if isinstance(arn, str) and arn:
        return ResourceRef("other", arn, arn=arn, account=account, details={"kind": "policy"})
    name = params.get("policyName")
    if isinstance(name, str) and name:
        return ResourceRef("other", f"policy/{name}", account=account,
                           details={"kind": "policy"})
    return None


@register(
    "iam_policy_wildcard",
    title="IAM policy grants wildcard permissions",
    severity=SeverityLabel.HIGH,
    mitre=("T1098.003",),
    description="An IAM policy was written with an Allow statement whose Action and Resource "
                "are both * (CRITICAL) or either one is * (HIGH).",
    event_names=POLICY_WRITES,
)
class IamPolicyWildcard(CloudTrailRule):
    async def evaluate(self, view: CloudTrailView) -> Hit | None:
        if view.event_name not in POLICY_WRITES or not view.succeeded:
            return None
        raw_doc = view.request_parameters.get("policyDocument")
        document = load_policy(raw_doc)
        statements = wildcard_statements(document)
        if not statements:
            return None
        both = any(s["action_wildcard"] and s["resource_wildcard"] for s in statements)
        target = _policy_target(view)
        return Hit(
            severity=SeverityLabel.CRITICAL if both else SeverityLabel.HIGH,
            title=("IAM policy grants full administrator access (Action * on Resource *)"
                   if both else None),
            facts={
                "event_name": view.event_name,
                "policy_name": view.request_parameters.get("policyName"),
                "target": target.key if target else None,
                "statements": statements,
                "principal_arn": view.principal_arn,
                "why": "Allow statement with Action and Resource both *" if both
                       else "Allow statement with a wildcard Action or Resource",
            },
            targets=(target,) if target else (),
        )


@register(
    "iam_admin_policy_attached",
    title="Administrator policy attached to an IAM identity",
    severity=SeverityLabel.HIGH,
    mitre=("T1098.003",),
    description="A configured administrator managed policy (AdministratorAccess by default) was "
                "attached to a user, role or group.",
    config=("admin_policy_arns",),
    event_names=ATTACHES,
)
class IamAdminPolicyAttached(CloudTrailRule):
    def __init__(self, config: DetectionsConfig, ctx: RuntimeContext) -> None:
        super().__init__(config, ctx)
        self._admin = frozenset(config.admin_policy_arns)

    async def evaluate(self, view: CloudTrailView) -> Hit | None:
        if view.event_name not in ATTACHES or not view.succeeded:
            return None
        arn = view.request_parameters.get("policyArn")
        if arn not in self._admin:
            return None
        target = _policy_target(view)
        return Hit(
            facts={
                "event_name": view.event_name,
                "policy_arn": arn,
                "target": target.key if target else None,
                "principal_arn": view.principal_arn,
                "why": f"{arn} attached by {view.event_name}",
            },
            targets=(target,) if target else (),
        )
