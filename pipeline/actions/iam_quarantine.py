"""iam.quarantine_principal: an explicit deny-all inline policy on a user or role.

For roles the policy also denies every session issued before now
(``aws:TokenIssueTime``), which is how AWS revokes temporary credentials that
were already handed out: stolen session tokens stop working at once. The policy
has a name of its own per incident, so rollback deletes exactly that policy and
nothing a person attached.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, ClassVar

import orjson

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
from pipeline.actions.config import QuarantinePrincipalSettings
from pipeline.actions.registry import register

GLOBAL_REGION = "us-east-1"


def policy_name(prefix: str, incident_id: str) -> str:
    return f"{prefix}-{hashlib.sha256(incident_id.encode()).hexdigest()[:12]}"


def document(kind: str, issued_before: str, *, sessions_only: bool) -> dict[str, Any]:
    statements: list[dict[str, Any]] = []
    if kind == "user" or not sessions_only:
        statements.append({"Sid": "RiposteQuarantineDenyAll", "Effect": "Deny", "Action": "*",
                           "Resource": "*"})
    if kind == "role":
        statements.append({"Sid": "RiposteRevokeOlderSessions", "Effect": "Deny", "Action": "*",
                           "Resource": "*", "Condition": {
                               "DateLessThan": {"aws:TokenIssueTime": issued_before}}})
    return {"Version": "2012-10-17", "Statement": statements}


async def _get(aws: ClientSource, kind: str, name: str, policy: str) -> dict[str, Any] | None:
    op, key = ("GetUserPolicy", "UserName") if kind == "user" else ("GetRolePolicy", "RoleName")
    try:
        result = await describe(aws, "iam", op, GLOBAL_REGION, **{key: name, "PolicyName": policy})
    except ActionFailed as exc:
        if exc.code == "NoSuchEntity":
            return None
        raise
    doc = result.get("PolicyDocument")
    if isinstance(doc, str):
        parsed: dict[str, Any] = orjson.loads(doc)
        return parsed
    return dict(doc) if isinstance(doc, dict) else None


@register
class IamQuarantinePrincipal(BaseAction):
    kind: ClassVar[str] = "iam.quarantine_principal"
    resource_types: ClassVar[frozenset[str]] = frozenset({"iam.user", "iam.role"})
    permissions: ClassVar[frozenset[str]] = frozenset({
        "iam:GetUser", "iam:GetRole", "iam:GetUserPolicy", "iam:GetRolePolicy",
        "iam:PutUserPolicy", "iam:PutRolePolicy", "iam:DeleteUserPolicy", "iam:DeleteRolePolicy",
    })

    async def plan(self, request: PlanRequest, aws: ClientSource) -> Plan:
        s = request.settings
        assert isinstance(s, QuarantinePrincipalSettings)
        kind = "user" if request.resource.type == "iam.user" else "role"
        name = request.resource.id
        try:
            found = await describe(aws, "iam", "GetUser" if kind == "user" else "GetRole",
                                   GLOBAL_REGION,
                                   **{"UserName" if kind == "user" else "RoleName": name})
        except ActionFailed as exc:
            if exc.code == "NoSuchEntity":
                raise Refused(f"{kind} {name} not found in {aws.account}") from None
            raise
        pname = policy_name(s.policy_name_prefix, request.incident_id)
        if await _get(aws, kind, name, pname) is not None:
            raise InEffect(f"{kind} {name} already carries {pname}")
        issued_before = request.now.strftime("%Y-%m-%dT%H:%M:%SZ")
        doc = document(kind, issued_before, sessions_only=s.revoke_sessions_only)
        op, key = ("PutUserPolicy", "UserName") if kind == "user" else ("PutRolePolicy",
                                                                         "RoleName")
        steps = (Step(call("iam", op, {key: name, "PolicyName": pname,
                                       "PolicyDocument": orjson.dumps(doc).decode()},
                           account=request.account, region=GLOBAL_REGION)),)
        return Plan(id=request.action_id, kind=self.kind, incident_id=request.incident_id,
                    resource=request.resource, account=request.account, region=request.region,
                    steps=steps, before={"principal": kind, "name": name, "policy_name": pname,
                                         "existing_policy": None},
                    settings=s.model_dump(), created_at=request.now,
                    resource_tags=tags_dict(found.get("User" if kind == "user" else "Role",
                                                      {}).get("Tags")))

    async def verify(self, applied: Applied, aws: ClientSource) -> bool:
        b = applied.plan.before
        wanted: dict[str, Any] = orjson.loads(applied.plan.calls[0].params["PolicyDocument"])
        current = await _get(aws, str(b["principal"]), str(b["name"]), str(b["policy_name"]))
        return current == wanted

    async def rollback_steps(self, applied: Applied, aws: ClientSource) -> Sequence[Step]:
        b, plan = applied.plan.before, applied.plan
        kind, name, pname = str(b["principal"]), str(b["name"]), str(b["policy_name"])
        if await _get(aws, kind, name, pname) is None:
            return []
        op, key = ("DeleteUserPolicy", "UserName") if kind == "user" else ("DeleteRolePolicy",
                                                                            "RoleName")
        return [Step(call("iam", op, {key: name, "PolicyName": pname}, account=plan.account,
                          region=GLOBAL_REGION), tolerate=frozenset({"NoSuchEntity"}))]
