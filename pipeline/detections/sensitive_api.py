"""Sensitive API calls made with access keys from outside the trusted networks.

Account discovery and privilege changes (ListUsers, ListBuckets, CreateUser,
AttachUserPolicy...) from an address outside the organisation's networks is the
classic first hour of a leaked access key. Calls AWS services make on the
principal's behalf (source ``AWS Internal`` or a service host name, ``invokedBy``)
are not the principal's own and are ignored.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from pipeline.detections._cloudtrail import CloudTrailView
from pipeline.detections.config import DetectionsConfig
from pipeline.detections.registry import CloudTrailRule, Hit, register
from pipeline.models import SeverityLabel

if TYPE_CHECKING:
    from pipeline.context import RuntimeContext

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_MITRE_BY_API = {
    "CreateUser": "T1136.003",
    "ListUsers": "T1087.004",
    "ListBuckets": "T1619",
    "DescribeInstances": "T1580",
    "DescribeDBInstances": "T1580",
    "AttachUserPolicy": "T1098.003",
}


def parse_networks(cidrs: list[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


@register(
    "sensitive_api_untrusted_network",
    title="Sensitive API call with access keys from outside trusted networks",
    severity=SeverityLabel.MEDIUM,
    mitre=("T1078.004",),
    description="A sensitive API (discovery or privilege change) was called successfully with "
                "an access key from a source address outside the trusted CIDRs.",
    config=("trusted_cidrs", "sensitive_apis", "extra_sensitive_apis",
            "sensitive_api_include_console"),
)
class SensitiveApiFromUntrustedNetwork(CloudTrailRule):
    def __init__(self, config: DetectionsConfig, ctx: RuntimeContext) -> None:
        super().__init__(config, ctx)
        self._apis = frozenset(config.sensitive_apis) | frozenset(config.extra_sensitive_apis)
        self._networks = parse_networks(config.trusted_cidrs)
        # Nearly every source address is a dotted quad: those are matched as integers.
        self._v4 = tuple((int(n.network_address), int(n.netmask))
                         for n in self._networks if n.version == 4)

    @property
    def event_names(self) -> frozenset[str]:
        return self._apis

    def trusted(self, view: CloudTrailView) -> bool | None:
        """True/False for an address; None when there is no source address at all."""
        if view.source_ip is None:
            return None
        n = view.ipv4
        if n is not None:
            return any(n & mask == net for net, mask in self._v4)
        addr = view.ip
        if addr is None:
            return False  # neither an IP nor a service name: not provably ours
        return any(addr.version == net.version and addr in net for net in self._networks)

    async def evaluate(self, view: CloudTrailView) -> Hit | None:
        if view.event_name not in self._apis or not view.succeeded:
            return None
        if not view.access_key_id or view.service_originated:
            return None
        if view.from_console and not self.config.sensitive_api_include_console:
            return None
        if self.trusted(view) is not False:
            return None
        mitre = _MITRE_BY_API.get(view.event_name or "")
        return Hit(
            facts={
                "event_name": view.event_name,
                "event_source": view.event_source,
                "source_ip": view.source_ip,
                "source_ip_parsed": view.ip is not None,
                "access_key_id": view.access_key_id,
                "principal_arn": view.principal_arn,
                "user_agent": view.user_agent,
                "console_session": view.from_console,
                "why": f"{view.event_name} from {view.source_ip}, outside "
                       f"{', '.join(self.config.trusted_cidrs) or 'any trusted network'}",
            },
            mitre=(mitre,) if mitre else (),
        )
