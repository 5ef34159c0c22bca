"""dns.block_domain against a local fake of the Route 53 Resolver DNS Firewall API.

moto has no DNS Firewall (its calls answer 500), so the real aiobotocore client is
pointed, through ``AWS_ENDPOINT_URL_ROUTE53RESOLVER``, at a small aiohttp server that
speaks the service's JSON 1.1 protocol for the two operations the action uses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from pipeline.actions import ops
from pipeline.models import ActionRecord, ActionStatus, ResourceRef
from pipeline.stages.contain import build
from pipeline.state.memory import MemoryStore
from tests.integration.actions_support import (
    HOME,
    REGION,
    FixedClock,
    containment,
    context,
    incident,
    make_instance,
)
from tests.loopback import start_app

pytestmark = pytest.mark.integration

LIST_ID = "rslvr-fdl-0123456789abcdef"


class FakeResolver:
    """ListFirewallDomains (paged) and UpdateFirewallDomains, as Route 53 Resolver answers."""

    def __init__(self) -> None:
        self.lists: dict[str, list[str]] = {LIST_ID: ["known-bad.example.", "other.example."]}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        op = request.headers.get("X-Amz-Target", "").removeprefix("Route53Resolver.")
        body: dict[str, Any] = await request.json()
        self.calls.append((op, body))
        domains = self.lists.get(body.get("FirewallDomainListId", ""))
        if domains is None:
            return web.json_response({"__type": "ResourceNotFoundException",
                                      "message": "domain list not found"}, status=400)
        if op == "ListFirewallDomains":
            start = int(body.get("NextToken") or 0)
            size = int(body.get("MaxResults", 100))
            page: dict[str, Any] = {"Domains": domains[start:start + size]}
            if start + size < len(domains):
                page["NextToken"] = str(start + size)
            return web.json_response(page)
        if op == "UpdateFirewallDomains":
            change = [d.lower() for d in body["Domains"]]
            if body["Operation"] == "ADD":
                domains.extend(d for d in change if d not in domains)
            elif body["Operation"] == "REMOVE":
                domains[:] = [d for d in domains if d not in change]
            return web.json_response({"Id": body["FirewallDomainListId"], "Name": "riposte",
                                      "Status": "UPDATING", "StatusMessage": "updating"})
        return web.json_response({"__type": "InvalidRequestException", "message": op},
                                 status=400)


@pytest.fixture
async def resolver(moto_server: str, monkeypatch: pytest.MonkeyPatch
                   ) -> AsyncIterator[FakeResolver]:
    fake = FakeResolver()
    app = web.Application()
    app.router.add_post("/", fake.handle)
    runner, fake.url = await start_app(app)
    monkeypatch.setenv("AWS_ENDPOINT_URL_ROUTE53RESOLVER", fake.url)
    try:
        yield fake
    finally:
        await runner.cleanup()


def _incident(domain: str) -> Any:
    ref = ResourceRef(type="ec2.instance", id="i-0aaaabbbbccccdddd", account=HOME, region=REGION)
    return incident(ref, finding_type="Backdoor:EC2/C&CActivity.B!DNS",
                    attributes={"domain": domain})


def _spec(list_id: str = LIST_ID) -> list[dict[str, Any]]:
    return [{"kind": "dns.block_domain", "settings": {"firewall_domain_list_id": list_id}}]


async def _run(ctx: Any, inc: Any) -> ActionRecord:
    out = await build(ctx.config, ctx).process(inc)
    (record,) = [r for r in out if isinstance(r, ActionRecord)]
    return record


async def test_block_verify_and_roll_back_exactly(resolver: FakeResolver, aws: Any) -> None:
    before = list(resolver.lists[LIST_ID])
    dry = context(containment(_spec(), mode="dry-run"), MemoryStore(), aws, FixedClock())
    planned = await _run(dry, _incident("Evil.Example.COM."))
    assert planned.status == ActionStatus.PLANNED
    assert resolver.lists[LIST_ID] == before, "dry-run changes nothing"

    ctx = context(containment(_spec()), MemoryStore(), aws, FixedClock())
    rec = await _run(ctx, _incident("Evil.Example.COM."))
    assert rec.status == ActionStatus.VERIFIED, rec.reason
    assert resolver.lists[LIST_ID] == [*before, "evil.example.com."]
    assert [c.params for c in rec.calls] == [c.params for c in planned.calls] == [
        {"FirewallDomainListId": LIST_ID, "Operation": "ADD", "Domains": ["evil.example.com."]}]
    assert rec.before == {"domain": "evil.example.com.", "list_id": LIST_ID, "listed": False}

    await ops.rollback(ctx, action_id=rec.id)
    assert resolver.lists[LIST_ID] == before, "exactly the added domain is removed"


async def test_a_domain_already_listed_is_left_alone(resolver: FakeResolver, aws: Any) -> None:
    resolver.lists[LIST_ID].extend(f"filler-{i}.example." for i in range(1500))  # two pages
    before = list(resolver.lists[LIST_ID])
    ctx = context(containment(_spec()), MemoryStore(), aws, FixedClock())
    rec = await _run(ctx, _incident("known-bad.example"))
    assert rec.status == ActionStatus.VERIFIED and "already" in rec.reason
    assert rec.calls == ()
    assert resolver.lists[LIST_ID] == before
    assert not [c for c in resolver.calls if c[0] == "UpdateFirewallDomains"]


async def test_unknown_list_or_missing_domain_is_skipped(resolver: FakeResolver,
                                                         aws: Any) -> None:
    ctx = context(containment(_spec("rslvr-fdl-missing")), MemoryStore(), aws, FixedClock())
    rec = await _run(ctx, _incident("evil.example.com"))
    assert rec.status == ActionStatus.SKIPPED and "not found" in rec.reason
    ctx = context(containment(_spec()), MemoryStore(), aws, FixedClock())
    rec = await _run(ctx, _incident(""))
    assert rec.status == ActionStatus.SKIPPED and "no domain" in rec.reason
    assert not [c for c in resolver.calls if c[0] == "UpdateFirewallDomains"]


async def test_an_instance_tagged_exempt_since_the_finding_is_left_alone(
        resolver: FakeResolver, aws: Any, boto: Any) -> None:
    """The finding's own copy of the instance has no tags; the live instance does."""
    ids = make_instance(boto, tags={"riposte:exempt": "incident-response lab"})
    ref = ResourceRef(type="ec2.instance", id=ids["instance"], account=HOME, region=REGION)
    inc = incident(ref, finding_type="Backdoor:EC2/C&CActivity.B!DNS",
                   attributes={"domain": "evil.example.com"})
    before = list(resolver.lists[LIST_ID])
    ctx = context(containment(_spec()), MemoryStore(), aws, FixedClock())

    rec = await _run(ctx, inc)

    assert rec.status == ActionStatus.SKIPPED
    assert "exempt" in rec.reason and "seen live" in rec.reason
    assert resolver.lists[LIST_ID] == before
