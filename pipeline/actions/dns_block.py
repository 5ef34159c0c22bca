"""dns.block_domain: add a finding's domain to a Route 53 Resolver DNS Firewall list.

The list (``firewall_domain_list_id``) is one a DNS Firewall rule group already
blocks with; the action only adds the domain a GuardDuty DNS finding names, after
reading the list so the before-state says whether the domain was already there.
The instance that made the lookup is read too, for its live tags: an instance tagged
exempt since the finding was raised is left alone like with every other action. An
instance that is gone by then does not stop the block: the domain is still bad.
Rollback removes the domain only if this action added it. The local AWS stand-in
(moto) has no DNS Firewall, so the tests run the real client against a local fake
of the Route 53 Resolver JSON API (``ListFirewallDomains``, ``UpdateFirewallDomains``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pipeline.actions._ec2 import describe_instance
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
from pipeline.actions.config import DnsBlockSettings
from pipeline.actions.registry import register

_PAGE = 1000


async def _listed(aws: ClientSource, list_id: str, region: str) -> set[str]:
    """Every domain on the list (lower case, with the trailing dot DNS Firewall uses)."""
    domains: set[str] = set()
    token: str | None = None
    while True:
        params: dict[str, object] = {"FirewallDomainListId": list_id, "MaxResults": _PAGE}
        if token:
            params["NextToken"] = token
        page = await describe(aws, "route53resolver", "ListFirewallDomains", region, **params)
        domains.update(str(d).lower() for d in page.get("Domains", []))
        token = page.get("NextToken")
        if not token:
            return domains


def _normalized(domain: object) -> str:
    if not isinstance(domain, str) or not domain.strip(".") or len(domain) > 253:
        raise Refused("the finding names no domain to block")
    return domain.strip(".").lower() + "."


@register
class DnsBlockDomain(BaseAction):
    kind: ClassVar[str] = "dns.block_domain"
    resource_types: ClassVar[frozenset[str]] = frozenset({"ec2.instance"})
    permissions: ClassVar[frozenset[str]] = frozenset({
        "route53resolver:ListFirewallDomains", "route53resolver:UpdateFirewallDomains",
        "ec2:DescribeInstances",
    })

    async def plan(self, request: PlanRequest, aws: ClientSource) -> Plan:
        s = request.settings
        assert isinstance(s, DnsBlockSettings)
        domain = _normalized(request.attributes.get(s.domain_attribute))
        try:
            listed = await _listed(aws, s.firewall_domain_list_id, request.region)
        except ActionFailed as exc:
            if exc.code == "ResourceNotFoundException":
                raise Refused(f"DNS Firewall domain list {s.firewall_domain_list_id} not found "
                              f"in {request.account}/{request.region}") from None
            raise
        if domain in listed:
            raise InEffect(f"{domain} is already on {s.firewall_domain_list_id}")
        try:
            instance = await describe_instance(aws, request.region, request.resource.id)
            live_tags: dict[str, str] | None = tags_dict(instance.get("Tags"))
        except Refused:  # terminated or gone: nothing to read, the domain is still bad
            live_tags = None
        steps = (Step(call("route53resolver", "UpdateFirewallDomains", {
            "FirewallDomainListId": s.firewall_domain_list_id, "Operation": "ADD",
            "Domains": [domain]}, account=request.account, region=request.region)),)
        return Plan(id=request.action_id, kind=self.kind, incident_id=request.incident_id,
                    resource=request.resource, account=request.account, region=request.region,
                    steps=steps, before={"domain": domain, "list_id": s.firewall_domain_list_id,
                                         "listed": False},
                    settings=s.model_dump(), created_at=request.now,
                    resource_tags=live_tags)

    async def verify(self, applied: Applied, aws: ClientSource) -> bool:
        b = applied.plan.before
        return str(b["domain"]) in await _listed(aws, str(b["list_id"]), applied.plan.region)

    async def rollback_steps(self, applied: Applied, aws: ClientSource) -> Sequence[Step]:
        b, plan = applied.plan.before, applied.plan
        if str(b["domain"]) not in await _listed(aws, str(b["list_id"]), plan.region):
            return []
        return [Step(call("route53resolver", "UpdateFirewallDomains", {
            "FirewallDomainListId": b["list_id"], "Operation": "REMOVE",
            "Domains": [b["domain"]]}, account=plan.account, region=plan.region))]
