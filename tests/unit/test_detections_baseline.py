"""First-seen baseline: learning in event time, firing once, surviving a restart."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pipeline.clock import EventTimeClock
from pipeline.detections._cloudtrail import CloudTrailView, parse_ip
from pipeline.detections.baseline import FirstSeenActivity, network_of
from pipeline.detections.registry import RULES
from pipeline.models import Event
from pipeline.stages.detect import DetectStage
from pipeline.state.base import StateStore
from pipeline.state.memory import MemoryStore
from pipeline.state.sqlite import SqliteStore
from tests.unit.cloudtrail_cases import derive, make_ctx, normalized

T0 = datetime(2024, 6, 2, 20, 0, tzinfo=UTC)
DAY = 86400.0
USER = "arn:aws:iam::187901811700:user/exposed.user"


def call(day: float, api: str = "GetCallerIdentity", *, source: str = "sts.amazonaws.com",
         ip: str = "73.252.165.138", region: str = "us-east-1", **extra: Any) -> Event:
    """The published aws-cli GetCallerIdentity record, moved in time and edited."""
    when = T0 + timedelta(days=day)
    fields = {"eventTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "eventID": str(uuid.uuid4()),
              "eventName": api, "eventSource": source, "sourceIPAddress": ip,
              "awsRegion": region, **extra}
    return normalized(derive("panther-getcalleridentity-awscli.json", fields))


def stage_for(store: StateStore, clock: EventTimeClock | None = None,
              **config: Any) -> DetectStage:
    ctx = make_ctx(store, clock or EventTimeClock(), rules=["first_seen_activity"],
                   baseline_learning_seconds=7 * DAY, **config)
    return DetectStage(RULES.build(ctx.config.detections, ctx))


async def fired(stage: DetectStage, event: Event, clock: EventTimeClock | None = None
                ) -> list[Event]:
    if clock is not None:
        clock.advance_to(event.time)  # what the runner does in replay
    return list((await stage.process(event))[1:])


async def test_learning_then_first_seen_fires_once() -> None:
    stage = stage_for(MemoryStore())
    # Learning week: everything is recorded silently, including a new API and region.
    assert await fired(stage, call(0)) == []
    assert await fired(stage, call(1, "ListBuckets", source="s3.amazonaws.com")) == []
    assert await fired(stage, call(6.9, region="eu-west-1")) == []
    # After learning: what was learnt stays quiet.
    assert await fired(stage, call(8, "ListBuckets", source="s3.amazonaws.com")) == []
    assert await fired(stage, call(8, region="eu-west-1")) == []
    # A new API fires, once.
    first = await fired(stage, call(9, "ListUsers", source="iam.amazonaws.com"))
    assert len(first) == 1
    det = first[0].detection
    assert det is not None and det.rule_id == "first_seen_activity"
    assert det.facts["new"] == {"api": "iam.amazonaws.com/ListUsers"}
    assert det.facts["subject"] == USER
    assert await fired(stage, call(9.5, "ListUsers", source="iam.amazonaws.com")) == []


async def test_new_region_and_network_dimensions() -> None:
    stage = stage_for(MemoryStore())
    await fired(stage, call(0))
    new_region = await fired(stage, call(10, region="ap-southeast-2"))
    assert new_region[0].detection is not None
    assert new_region[0].detection.facts["new"] == {"region": "ap-southeast-2"}
    # Same /24: not new. Another /24: new.
    assert await fired(stage, call(10, ip="73.252.165.7")) == []
    other_net = await fired(stage, call(10, ip="198.51.100.9"))
    assert other_net[0].detection is not None
    assert other_net[0].detection.facts["new"] == {"network": "198.51.100.0/24"}
    ipv6 = await fired(stage, call(10, ip="2001:db8:1234:5678::1"))
    assert ipv6[0].detection is not None
    assert ipv6[0].detection.facts["new"] == {"network": "2001:db8:1234::/48"}
    assert await fired(stage, call(10, ip="2001:db8:1234:ffff::2")) == []


async def test_asn_replaces_the_ip_prefix_when_known() -> None:
    stage = stage_for(MemoryStore())
    first = call(0)
    await fired(stage, replace(first, attributes={**first.attributes, "source_asn": 7922}))
    later = call(10, ip="198.51.100.9")
    assert await fired(stage, replace(later, attributes={**later.attributes,
                                                         "source_asn": 7922})) == []
    other = await fired(stage, replace(later, id="x2", attributes={**later.attributes,
                                                                  "source_asn": 64500}))
    assert other[0].detection is not None
    assert other[0].detection.facts["new"] == {"network": "asn:64500"}


async def test_failed_and_service_calls_are_not_learnt_and_do_not_fire() -> None:
    stage = stage_for(MemoryStore())
    await fired(stage, call(0))
    assert await fired(stage, call(9, "ListUsers", source="iam.amazonaws.com",
                                   errorCode="AccessDenied")) == []
    assert await fired(stage, call(9, "ListRoles", source="iam.amazonaws.com",
                                   sourceIPAddress="AWS Internal")) == []
    # Neither was recorded: the first successful own call still fires.
    assert len(await fired(stage, call(9.1, "ListUsers", source="iam.amazonaws.com"))) == 1
    assert len(await fired(stage, call(9.2, "ListRoles", source="iam.amazonaws.com"))) == 1


async def test_untrusted_events_do_not_train_the_baseline() -> None:
    stage = stage_for(MemoryStore())
    await fired(stage, call(0))
    forged = replace(call(1, "ListUsers", source="iam.amazonaws.com"), observe_only=True,
                     observe_reason="account_not_allowed")
    assert await fired(stage, forged) == []
    # The forged call taught nothing: the real one after learning is still new.
    assert len(await fired(stage, call(9, "ListUsers", source="iam.amazonaws.com"))) == 1


async def test_assumed_role_sessions_share_the_role_baseline() -> None:
    stage = stage_for(MemoryStore())

    def session(day: float, key: str, name: str, api: str = "CreateUser") -> Event:
        when = (T0 + timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return normalized(derive("panther-createuser-console.json", {
            "eventTime": when, "eventID": str(uuid.uuid4()), "eventName": api,
            "userIdentity.accessKeyId": key,
            "userIdentity.arn": f"arn:aws:sts::123456789012:assumed-role/tester/{name}"}))

    await fired(stage, session(0, "ASIA1", "alice"))
    assert await fired(stage, session(8, "ASIA2", "bob")) == []
    new = await fired(stage, session(8, "ASIA3", "carol", "DeleteUser"))
    assert new[0].detection is not None
    assert new[0].detection.facts["subject"] == "arn:aws:iam::123456789012:role/tester"


async def test_out_of_order_event_before_first_sighting_is_learning() -> None:
    stage = stage_for(MemoryStore())
    await fired(stage, call(10))
    assert await fired(stage, call(2, "ListUsers", source="iam.amazonaws.com")) == []


async def test_concurrent_workers_fire_once() -> None:
    store = MemoryStore()
    a, b = stage_for(store), stage_for(store)
    await fired(a, call(0))
    event = call(9, "ListUsers", source="iam.amazonaws.com")
    results = await asyncio.gather(*(s.process(event) for s in (a, b, a, b)))
    assert sum(len(r) - 1 for r in results) == 1


async def test_store_keys_and_ttl() -> None:
    clock = EventTimeClock()
    store = MemoryStore(clock)
    stage = stage_for(store, clock, baseline_ttl_seconds=20 * DAY)
    await fired(stage, call(0), clock)
    await fired(stage, call(0.1, region="eu-west-1"), clock)
    keys = [s.key for s in await store.scan(f"baseline:{USER}:")]
    assert f"baseline:{USER}:api:sts.amazonaws.com/GetCallerIdentity" in keys
    assert f"baseline:{USER}:region:us-east-1" in keys
    assert f"baseline:{USER}:network:73.252.165.0/24" in keys
    assert f"baseline:{USER}:first" in keys
    entry = await store.get(f"baseline:{USER}:region:eu-west-1")
    assert entry is not None and entry.expires_at == clock.now() + 20 * DAY
    # Seen every few days, entries are refreshed and never expire...
    for day in range(3, 40, 3):
        assert await fired(stage, call(day), clock) == []
    assert await store.get(f"baseline:{USER}:region:us-east-1") is not None
    # ...while a region used once, 39 days ago, has expired and counts as new again.
    assert await store.get(f"baseline:{USER}:region:eu-west-1") is None
    again = await fired(stage, call(40, region="eu-west-1"), clock)
    assert again[0].detection is not None
    assert again[0].detection.facts["new"] == {"region": "eu-west-1"}


async def test_restart_keeps_the_baseline(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    clock = EventTimeClock()
    store = await SqliteStore.open(path, clock=clock)
    try:
        stage = stage_for(store, clock)
        await fired(stage, call(0), clock)
        await fired(stage, call(1, "ListBuckets", source="s3.amazonaws.com"), clock)
    finally:
        await store.aclose()

    store = await SqliteStore.open(path, clock=clock)
    try:
        stage = stage_for(store, clock)  # a new process: nothing in memory
        assert await fired(stage, call(9, "ListBuckets", source="s3.amazonaws.com"),
                           clock) == []
        assert len(await fired(stage, call(9, "ListUsers", source="iam.amazonaws.com"),
                               clock)) == 1
    finally:
        await store.aclose()

    store = await SqliteStore.open(path, clock=clock)
    try:
        stage = stage_for(store, clock)
        # The detection fired before the restart does not fire again after it.
        assert await fired(stage, call(9.5, "ListUsers", source="iam.amazonaws.com"),
                           clock) == []
    finally:
        await store.aclose()


def _reference_network(source_ip: str) -> str | None:
    """What the /24 or /48 of an address is, by the ipaddress module alone."""
    addr = parse_ip(source_ip)
    if addr is None:
        return None
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


@given(st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.tuples(*[st.integers(0, 999)] * 4).map(lambda t: ".".join(map(str, t))),
    st.from_regex(r"\s?0?[0-9]{1,3}\.[0-9]{1,3}\.0?[0-9]{1,3}\.[0-9]{1,3}\s?", fullmatch=True),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.text(max_size=20),
))
def test_network_of_matches_the_ipaddress_module(source_ip: str) -> None:
    # The dotted-quad shortcut must agree with the general parser on every input,
    # including leading zeros, out-of-range octets, padding and IPv4-mapped IPv6.
    event = normalized(derive("panther-getcalleridentity-awscli.json",
                              {"sourceIPAddress": source_ip}))
    view = CloudTrailView(event)
    assert network_of(view) == (_reference_network(view.source_ip)
                                if view.source_ip else None)


async def test_cache_stays_within_its_size_and_never_decides_a_verdict() -> None:
    # The same traffic through a rule that caches nothing, one with a cache smaller than
    # the working set (evicting all the time) and one that holds everything: the same
    # detections, and the small cache never holds more than its size.
    traffic = [call(day / 4, api, source=src, ip=f"10.{day % 5}.{day % 7}.9",
                    region=("us-east-1", "eu-west-1")[day % 2])
               for day in range(0, 60)
               for api, src in (("GetCallerIdentity", "sts.amazonaws.com"),
                                ("ListBuckets", "s3.amazonaws.com"))]
    users = ["alice", "bob", "carol"]
    verdicts = []
    for size in (0, 7, 100_000):
        stage = stage_for(MemoryStore(), baseline_cache_size=size)
        rule = stage.rules[0]
        assert isinstance(rule, FirstSeenActivity)
        out = []
        for event in traffic:
            for user in users:
                arn = f"arn:aws:iam::187901811700:user/{user}"
                ev = replace(event, id=f"{event.id}-{user}",
                             attributes={**event.attributes, "principal_arn": arn})
                out += [(user, sorted(d.detection.facts["new"].items()))
                        for d in await fired(stage, ev) if d.detection is not None]
                assert rule._entries <= size
                assert rule._entries == sum(1 + len(p.seen) for p in rule._known.values())
        verdicts.append(out)
    assert verdicts[0] == verdicts[1] == verdicts[2]
    assert verdicts[0], "the traffic must make the rule fire for the comparison to mean much"
