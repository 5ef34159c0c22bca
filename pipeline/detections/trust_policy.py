"""Role trust policies that let another account assume the role without an external id.

A trust policy naming a foreign account (or ``*``) as principal, with no
``sts:ExternalId`` condition, lets anyone in that account assume the role: the
confused-deputy hole AWS's own guidance closes with an external id, and a common
persistence trick after a compromise. CreateRole logs the document as
``assumeRolePolicyDocument``, UpdateAssumeRolePolicy as ``policyDocument``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline.detections._cloudtrail import CloudTrailView, as_list, load_policy
from pipeline.detections.config import DetectionsConfig
from pipeline.detections.registry import CloudTrailRule, Hit, register
from pipeline.models import ResourceRef, SeverityLabel

if TYPE_CHECKING:
    from pipeline.context import RuntimeContext

EVENTS = frozenset({"CreateRole", "UpdateAssumeRolePolicy"})
_ACCOUNT = re.compile(r"^(?:arn:aws[a-z-]*:(?:iam|sts)::)?(\d{12})(?::|$)")
_ASSUME_ACTIONS = frozenset({"sts:assumerole", "sts:*", "*"})


def principal_accounts(principal: Any) -> list[str]:
    """Account ids (or ``*``) named by the AWS part of a statement's Principal."""
    if principal == "*":
        return ["*"]
    if not isinstance(principal, Mapping):
        return []
    out: list[str] = []
    for value in as_list(principal.get("AWS")):
        text = str(value).strip()
        if text == "*":
            out.append("*")
            continue
        match = _ACCOUNT.match(text)
        out.append(match.group(1) if match else text)
    return out


def has_external_id(condition: Any) -> bool:
    if not isinstance(condition, Mapping):
        return False
    for clause in condition.values():
        if isinstance(clause, Mapping) and any(
                str(key).lower() == "sts:externalid" for key in clause):
            return True
    return False


def risky_statements(document: Any, own: set[str]) -> list[dict[str, Any]]:
    if not isinstance(document, Mapping):
        return []
    found: list[dict[str, Any]] = []
    for index, stmt in enumerate(as_list(document.get("Statement"))):
        if not isinstance(stmt, Mapping) or str(stmt.get("Effect", "")).lower() != "allow":
            continue
        actions = {str(a).lower() for a in as_list(stmt.get("Action"))}
        if not actions & _ASSUME_ACTIONS:
            continue
        foreign = [a for a in principal_accounts(stmt.get("Principal")) if a not in own]
        if foreign and not has_external_id(stmt.get("Condition")):
            found.append({"index": index, "sid": stmt.get("Sid"), "accounts": foreign})
    return found


@register(
    "role_trust_cross_account_no_external_id",
    title="Role trust policy allows another account without sts:ExternalId",
    severity=SeverityLabel.CRITICAL,
    mitre=("T1098.003", "T1199"),
    description="A role's trust policy lets a principal from another account (or *) assume it "
                "without an sts:ExternalId condition.",
    config=("trusted_account_ids",),
    event_names=EVENTS,
)
class CrossAccountTrustWithoutExternalId(CloudTrailRule):
    def __init__(self, config: DetectionsConfig, ctx: RuntimeContext) -> None:
        super().__init__(config, ctx)
        self._trusted = set(config.trusted_account_ids)

    async def evaluate(self, view: CloudTrailView) -> Hit | None:
        if view.event_name not in EVENTS or not view.succeeded:
            return None
        params = view.request_parameters
        field = ("assumeRolePolicyDocument" if view.event_name == "CreateRole"
                 else "policyDocument")
        own = set(self._trusted)
        if view.own_account:
            own.add(view.own_account)
        statements = risky_statements(load_policy(params.get(field)), own)
        if not statements:
            return None
        role = params.get("roleName")
        target = (ResourceRef("iam.role", str(role), account=view.own_account)
                  if role else None)
        accounts = sorted({a for s in statements for a in s["accounts"]})
        return Hit(
            facts={
                "event_name": view.event_name,
                "role_name": role,
                "own_account": view.own_account,
                "foreign_principals": accounts,
                "statements": statements,
                "principal_arn": view.principal_arn,
                "why": f"trust policy lets {', '.join(accounts)} assume the role "
                       "without sts:ExternalId",
            },
            targets=(target,) if target else (),
        )
