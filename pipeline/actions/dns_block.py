"""dns.block_domain: add a finding's domain to a Route 53 Resolver DNS Firewall list.

Declared and planned, but refused in enforce: the local AWS stand-in (moto 5.2)
lacks Route 53 Resolver DNS Firewall (its calls answer 500), so this action has
never been exercised against any implementation of the API and Riposte will not
run untested code against a customer's resolver. Dry-run and approve show the
exact call it would make.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pipeline.actions.base import (
    ActionFailed,
    Applied,
    BaseAction,
    ClientSource,
    Plan,
    PlanRequest,
    Refused,
    Step,
    call,
)
from pipeline.actions.config import DnsBlockSettings
from pipeline.actions.registry import register

UNTESTED = ("dns.block_domain is not enabled for enforcement: moto lacks Route 53 Resolver "
            "DNS Firewall, so this action is untested")


@register
class DnsBlockDomain(BaseAction):
    kind: ClassVar[str] = "dns.block_domain"
    resource_types: ClassVar[frozenset[str]] = frozenset({"ec2.instance"})
    permissions: ClassVar[frozenset[str]] = frozenset({
        "route53resolver:ListFirewallDomains", "route53resolver:UpdateFirewallDomains",
    })

    async def plan(self, request: PlanRequest, aws: ClientSource) -> Plan:
        s = request.settings
        assert isinstance(s, DnsBlockSettings)
        domain = request.attributes.get(s.domain_attribute)
        if not isinstance(domain, str) or not domain.strip(".") or len(domain) > 253:
            raise Refused("the finding names no domain to block")
        domain = domain.strip(".").lower() + "."
        steps = (Step(call("route53resolver", "UpdateFirewallDomains", {
            "FirewallDomainListId": s.firewall_domain_list_id, "Operation": "ADD",
            "Domains": [domain]}, account=request.account, region=request.region)),)
        return Plan(id=request.action_id, kind=self.kind, incident_id=request.incident_id,
                    resource=request.resource, account=request.account, region=request.region,
                    steps=steps, before={"domain": domain,
                                         "list_id": s.firewall_domain_list_id},
                    settings=s.model_dump(), created_at=request.now, note=UNTESTED)

    async def apply(self, plan: Plan, aws: ClientSource) -> Applied:
        raise ActionFailed("NotSupported", UNTESTED)

    async def verify(self, applied: Applied, aws: ClientSource) -> bool:
        return False

    async def rollback_steps(self, applied: Applied, aws: ClientSource) -> Sequence[Step]:
        b = applied.plan.before
        return [Step(call("route53resolver", "UpdateFirewallDomains", {
            "FirewallDomainListId": b["list_id"], "Operation": "REMOVE",
            "Domains": [b["domain"]]}, account=applied.plan.account,
            region=applied.plan.region))]
