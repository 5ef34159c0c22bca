"""A user from outside the organisation added to a privileged Cognito group.

``AdminAddUserToGroup`` into an ``admin``-like group is how an attacker with
Cognito admin rights (or a misconfigured sign-up flow) promotes an account of
their own. The user is judged by the email domain of the user name; CloudTrail
often hides Cognito user names (``HIDDEN_DUE_TO_SECURITY_REASONS``) and user pools
may use opaque ids, so a user whose email cannot be read fires when
``cognito_unknown_email_fires`` is set (the default: the safe side). With no
``org_email_domains`` configured, no domain counts as the organisation's.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from pipeline.detections._cloudtrail import CloudTrailView
from pipeline.detections.config import DetectionsConfig
from pipeline.detections.registry import CloudTrailRule, Hit, register
from pipeline.models import ResourceRef, SeverityLabel

if TYPE_CHECKING:
    from pipeline.context import RuntimeContext

EVENTS = frozenset({"AdminAddUserToGroup"})


def email_domain(value: str | None) -> str | None:
    if not value or value.count("@") != 1:
        return None
    domain = value.rsplit("@", 1)[1].strip().lower()
    return domain or None


def domain_in(domain: str, allowed: list[str]) -> bool:
    """Exact domain or a subdomain of an allowed one (``eu.example.com`` of ``example.com``)."""
    return any(domain == d or domain.endswith(f".{d}") for d in allowed)


@register(
    "cognito_external_user_privileged_group",
    title="User outside the organisation added to a privileged Cognito group",
    severity=SeverityLabel.HIGH,
    mitre=("T1098",),
    description="AdminAddUserToGroup put a user whose email is not in the organisation's "
                "domains (or cannot be read) into a group matching a privileged pattern.",
    config=("org_email_domains", "privileged_group_patterns", "cognito_unknown_email_fires"),
    event_names=EVENTS,
)
class CognitoExternalUserPrivilegedGroup(CloudTrailRule):
    def __init__(self, config: DetectionsConfig, ctx: RuntimeContext) -> None:
        super().__init__(config, ctx)
        self._patterns = [p.lower() for p in config.privileged_group_patterns]

    def privileged(self, group: str) -> bool:
        name = group.lower()
        return any(fnmatch.fnmatchcase(name, p) for p in self._patterns)

    async def evaluate(self, view: CloudTrailView) -> Hit | None:
        if view.event_name not in EVENTS or not view.succeeded:
            return None
        if view.event_source not in (None, "cognito-idp.amazonaws.com"):
            return None
        params = view.request_parameters
        group = params.get("groupName")
        if not isinstance(group, str) or not self.privileged(group):
            return None
        username = params.get("username") or params.get("userName")
        username = str(username) if username is not None else None
        domain = email_domain(username)
        if domain is None:
            if not self.config.cognito_unknown_email_fires:
                return None
            why = "the added user's email cannot be read from the record"
        elif domain_in(domain, self.config.org_email_domains):
            return None
        else:
            why = f"email domain {domain} is not one of the organisation's domains"
        pool = params.get("userPoolId")
        target = ResourceRef("other", f"cognito:{pool}:{username}", account=view.own_account,
                             region=view.region,
                             details={"user_pool_id": pool, "username": username,
                                      "group": group})
        return Hit(
            facts={
                "user_pool_id": pool,
                "group": group,
                "username": username,
                "email_domain": domain,
                "org_email_domains": list(self.config.org_email_domains),
                "principal_arn": view.principal_arn,
                "why": why,
            },
            targets=(target,),
        )
