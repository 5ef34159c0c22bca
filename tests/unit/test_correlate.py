"""The correlate stage over real samples (normalized by the real NormalizeStage) and
over events built directly for the wide, property-based cases.

Derived fixtures are made here from the project's sample copies: the cloud-custodian
GuardDuty ``Backdoor:EC2/C&CActivity.B!DNS`` event is rewritten onto the instance,
account, region and time of the cloud-custodian Inspector2 ``ListFindings`` recording
(four open CVEs on ``i-07b035550fa86717d``) and its ``sample`` flag removed, so the two
published samples describe one attacked, vulnerable instance.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.models import (
    Detection,
    Event,
    EventKind,
    Incident,
    RawRecord,
    ResourceRef,
    Severity,
    SeverityLabel,
)
from pipeline.stages.correlate import CorrelateStage, incident_id, parse_image, resource_keys
from pipeline.stages.correlate_config import CorrelateConfig
from pipeline.stages.normalize import NormalizeStage
from pipeline.stages.score import ScoreStage
from pipeline.stages.score_config import ScoreConfig
from pipeline.state.base import StateStore
from pipeline.state.memory import MemoryStore
from pipeline.state.sqlite import SqliteStore

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "samples"
WINDOW = 3600.0
PAIR_INSTANCE = "i-07b035550fa86717d"
PAIR_ACCOUNT = "644160558196"
PAIR_REGION = "eu-central-1"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


# --- fixtures from the real samples ------------------------------------------------------------
def _load(rel: str) -> dict[str, Any]:
    path = SAMPLES / rel
    assert path.exists(), f"sample fixture {rel} is missing from tests/fixtures/samples"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _normalize(payload: dict[str, Any]) -> list[Event]:
    return NormalizeStage().normalize(RawRecord(payload=payload, message_id="test"))


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def guardduty_on_pair(updated: datetime, *, count: int = 1,
                      instance: str = PAIR_INSTANCE) -> Event:
    """The custodian C2 finding, rewritten onto the Inspector recording's instance."""
    doc = copy.deepcopy(_load("guardduty/custodian-ec2-duty-event.json"))
    detail = doc["detail"]
    detail["resource"]["instanceDetails"]["instanceId"] = instance
    detail["resource"]["instanceDetails"]["tags"] = [{"key": "criticality", "value": "high"}]
    detail["service"]["additionalInfo"] = {}
    detail["service"]["count"] = count
    detail["accountId"] = doc["account"] = PAIR_ACCOUNT
    detail["region"] = doc["region"] = PAIR_REGION
    detail["updatedAt"] = _iso(updated)
    detail["severity"] = 8
    (event,) = _normalize(doc)
    assert not event.sample
    return event


def inspector_pair_findings(shift: timedelta = timedelta(0)) -> list[Event]:
    """The four open CVEs of the custodian Inspector2 recording (optionally re-timed)."""
    doc = copy.deepcopy(
        _load("inspector2/custodian-placebo-inspector2-listfindings-query-filter.json"))
    if shift:
        for finding in doc["data"]["findings"]:
            finding["updatedAt"] = _iso(INSPECTOR_TIME + shift)
    events = _normalize(doc)
    assert len(events) == 4 and {e.status for e in events} == {"ACTIVE"}
    return events


INSPECTOR_TIME = datetime(2023, 9, 8, 20, 7, 30, 366000, tzinfo=UTC)
GD_TIME = datetime(2023, 9, 8, 20, 30, tzinfo=UTC)


def closed_inspector(status: str, updated: datetime) -> Event:
    """The AWS docs EC2 vulnerability finding (published CLOSED) at a chosen status/time."""
    doc = copy.deepcopy(_load("inspector2/awsdocs-inspector2-ec2-package-vulnerability.json"))
    detail = doc["detail"]
    detail["status"] = status
    detail["updatedAt"] = _iso(updated)
    detail["severity"] = "HIGH"
    (event,) = _normalize(doc)
    return event


# --- events built directly ---------------------------------------------------------------------
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ACCOUNT = "111122223333"
REGION = "us-east-1"


def instance(iid: str, **tags: str) -> ResourceRef:
    return ResourceRef("ec2.instance", iid, None, ACCOUNT, REGION, tags)


def gd_event(fid: str, resources: Sequence[ResourceRef], *, t: float = 0, count: int = 1,
             ftype: str = "Backdoor:EC2/C&CActivity.B!DNS", score: int = 80,
             sample: bool = False, observe_only: bool = False) -> Event:
    return Event(id=fid, kind=EventKind.GUARDDUTY, type=ftype, title=f"gd {fid}",
                 source="aws.guardduty", account=ACCOUNT, region=REGION,
                 time=T0 + timedelta(seconds=t), severity=Severity.of_score(score, score / 10),
                 resources=tuple(resources), count=count, status="ACTIVE", sample=sample,
                 observe_only=observe_only or sample,
                 observe_reason="sample_finding" if sample else
                 ("account_not_allowed" if observe_only else None))


def insp_event(fid: str, resources: Sequence[ResourceRef], *, t: float = 0,
               status: str = "ACTIVE", label: str = "MEDIUM", cvss: float = 5.0,
               exploit: bool = False) -> Event:
    score = {"LOW": 20, "MEDIUM": 50, "HIGH": 75, "CRITICAL": 95}[label]
    return Event(id=f"arn:aws:inspector2:{REGION}:{ACCOUNT}:finding/{fid}",
                 kind=EventKind.INSPECTOR, type="PACKAGE_VULNERABILITY", title=f"CVE {fid}",
                 source="aws.inspector2", account=ACCOUNT, region=REGION,
                 time=T0 + timedelta(seconds=t), severity=Severity.of_score(score, label),
                 resources=tuple(resources), status=status,
                 attributes={"cvss": cvss, "epss": 0.2, "exploit_available": exploit,
                             "fix_available": "YES", "network_reachable": False})


def stage(store: StateStore, **overrides: Any) -> CorrelateStage:
    return CorrelateStage(CorrelateConfig(**{"window_seconds": WINDOW, **overrides}), store)


async def run(st_: CorrelateStage, events: Iterable[Event]) -> list[Incident]:
    incidents: list[Incident] = []
    for event in events:
        out = await st_.process(event)
        assert out[0] is event  # the event always passes through first
        incidents.extend(i for i in out[1:] if isinstance(i, Incident))
    return incidents


def latest(incidents: Iterable[Incident]) -> dict[str, Incident]:
    final: dict[str, Incident] = {}
    for inc in incidents:
        if inc.id not in final or inc.revision > final[inc.id].revision:
            final[inc.id] = inc
    return final


def finding_ids(incident: Incident) -> set[str]:
    return {f.event_id for f in incident.findings}


# --- the project's derived fixtures (tests/fixtures/derived), table-driven -----------------------
DERIVED = Path(__file__).resolve().parents[1] / "fixtures" / "derived"
DERIVED_FILES = {
    "gd": "guardduty/gd-ec2-paired-finding.json",
    "gd_update": "guardduty/gd-ec2-paired-finding-update.json",
    "insp": "inspector2/inspector-ec2-paired-finding.json",
    "insp_closed": "inspector2/inspector-ec2-paired-finding-closed.json",
    "gd_key": "guardduty/gd-iam-accesskey-finding.json",
}


def derived(name: str) -> Event:
    path = DERIVED / DERIVED_FILES[name]
    assert path.exists(), f"derived fixture {path.name} is missing from tests/fixtures/derived"
    (event,) = _normalize(json.loads(path.read_text()))
    return event


# (sequence of fixtures, incident revisions emitted per step, final findings, correlated)
DERIVED_CASES = {
    "guardduty then inspector": (["gd", "insp"], [1, 1], {"gd", "insp"}, True),
    "inspector then guardduty": (["insp", "gd"], [0, 1], {"gd", "insp"}, True),
    "duplicates": (["gd", "insp", "gd", "insp"], [1, 1, 0, 0], {"gd", "insp"}, True),
    "update then stale": (["gd", "insp", "gd_update", "gd"], [1, 1, 1, 0], {"gd", "insp"},
                          True),
    "closed inspector": (["gd", "insp", "insp_closed"], [1, 1, 1], {"gd"}, False),
    "closed before open": (["insp_closed", "gd", "insp"], [0, 1, 0], {"gd"}, False),
    "unrelated key finding": (["gd_key", "gd", "insp"], [1, 1, 1], {"gd", "insp"}, True),
}


@pytest.mark.parametrize("case", sorted(DERIVED_CASES))
async def test_derived_fixture_scenarios(case: str) -> None:
    names, emitted, expected, correlated = DERIVED_CASES[case]
    st_ = stage(MemoryStore(FakeClock()), window_seconds=7 * 86400)
    incidents: list[Incident] = []
    for name, count in zip(names, emitted, strict=True):
        event = derived(name)
        out = await st_.process(event)
        assert out[0] is event
        assert len(out) - 1 == count, f"{case}: {name}"
        incidents.extend(i for i in out[1:] if isinstance(i, Incident))
    pair_key = "ec2.instance:i-0abc123def4567890"
    if "gd_key" in names:  # an access-key incident lists the key and its user
        (key_inc,) = [i for i in latest(incidents).values() if i.key != pair_key]
        assert [r.key for r in key_inc.resources] == ["iam.access_key:AKIAIOSFODNN7EXAMPLE",
                                                      "iam.user:deploy-bot"]
    (inc,) = [i for i in latest(incidents).values() if i.key == pair_key]
    assert finding_ids(inc) == {derived(n).id for n in expected}
    assert inc.correlated is correlated
    if "gd_update" in names:
        assert [f.count for f in inc.findings if f.kind is EventKind.GUARDDUTY] == [2]


# --- real samples: pairing, both orders --------------------------------------------------------
@pytest.mark.parametrize("order", ["guardduty_first", "inspector_first"])
async def test_pair_from_samples_in_either_order(order: str) -> None:
    gd = guardduty_on_pair(GD_TIME)
    vulns = inspector_pair_findings()
    events = [gd, *vulns] if order == "guardduty_first" else [*vulns, gd]
    incidents = await run(stage(MemoryStore(FakeClock())), events)
    final = latest(incidents)
    assert len(final) == 1
    (inc,) = final.values()
    assert inc.id == incident_id(f"{PAIR_ACCOUNT}/{PAIR_REGION}/ec2.instance:{PAIR_INSTANCE}")
    assert inc.correlated
    assert finding_ids(inc) == {gd.id, *(v.id for v in vulns)}
    assert inc.key == f"ec2.instance:{PAIR_INSTANCE}"
    assert inc.account == PAIR_ACCOUNT and inc.region == PAIR_REGION
    assert "T1071.004" in inc.mitre and "T1071" in inc.mitre
    assert inc.resources[0].id == PAIR_INSTANCE
    assert inc.resources[0].tags.get("criticality") == "high"
    assert "4 open vulnerabilities" in inc.title
    assert not inc.sample and not inc.observe_only
    if order == "inspector_first":
        # Medium CVEs alone are only indexed: the first incident comes with GuardDuty.
        assert len(incidents) == 1 and incidents[0].trigger is gd
    else:
        assert [i.revision for i in incidents] == [1, 2, 3, 4, 5]
        assert [len(i.findings) for i in incidents] == [1, 2, 3, 4, 5]


async def test_duplicates_produce_no_new_revision() -> None:
    gd = guardduty_on_pair(GD_TIME)
    vulns = inspector_pair_findings()
    st_ = stage(MemoryStore(FakeClock()))
    await run(st_, [gd, *vulns])
    for event in [gd, *vulns, gd]:
        out = await st_.process(event)
        assert out == [event]


async def test_update_bumps_revision_and_stale_update_is_ignored() -> None:
    st_ = stage(MemoryStore(FakeClock()))
    v1 = guardduty_on_pair(GD_TIME, count=1)
    v2 = guardduty_on_pair(GD_TIME + timedelta(minutes=5), count=4)
    (first,) = await run(st_, [v1])
    (second,) = await run(st_, [v2])
    assert second.id == first.id and second.revision == first.revision + 1
    assert [f.count for f in second.findings] == [4]
    assert await st_.process(v1) == [v1]  # late, older update: nothing new


async def test_closed_inspector_leaves_the_incident_and_cannot_come_back() -> None:
    st_ = stage(MemoryStore(FakeClock()))
    opened = closed_inspector("ACTIVE", datetime(2024, 9, 4, 16, 0, tzinfo=UTC))
    closed = closed_inspector("CLOSED", datetime(2024, 9, 4, 17, 0, tzinfo=UTC))
    (standalone,) = await run(st_, [opened])  # HIGH: an incident of its own
    assert finding_ids(standalone) == {opened.id} and not standalone.correlated
    (after,) = await run(st_, [closed])
    assert after.id == standalone.id and after.findings == ()
    assert await st_.process(opened) == [opened]  # older ACTIVE delivery after the close


async def test_closed_partner_is_removed_from_a_correlated_incident() -> None:
    st_ = stage(MemoryStore(FakeClock()))
    gd = gd_event("g1", [instance("i-0aaaaaaaaaaaaaaa1")])
    vuln = insp_event("v1", [instance("i-0aaaaaaaaaaaaaaa1")], t=10)
    closed = replace(vuln, status="CLOSED", time=vuln.time + timedelta(seconds=5))
    final = latest(await run(st_, [gd, vuln]))
    assert next(iter(final.values())).correlated
    (after,) = await run(st_, [closed])
    assert finding_ids(after) == {"g1"} and not after.correlated


async def test_archived_guardduty_finding_stays_but_does_not_pair() -> None:
    st_ = stage(MemoryStore(FakeClock()))
    res = [instance("i-0aaaaaaaaaaaaaaa6")]
    archived = replace(gd_event("g1", res), status="ARCHIVED")
    (inc,) = latest(await run(st_, [archived, insp_event("v1", res, t=5)])).values()
    assert finding_ids(inc) == {"g1"} and not inc.correlated


async def test_pair_outside_the_window_does_not_correlate() -> None:
    gd = guardduty_on_pair(GD_TIME)
    vulns = inspector_pair_findings(shift=timedelta(seconds=WINDOW + 3600))
    incidents = await run(stage(MemoryStore(FakeClock())), [gd, *vulns])
    (inc,) = latest(incidents).values()
    assert not inc.correlated
    assert finding_ids(inc) == {gd.id}


async def test_window_is_event_time_not_store_time() -> None:
    clock = FakeClock()
    st_ = stage(MemoryStore(clock))
    gd = gd_event("g1", [instance("i-0aaaaaaaaaaaaaaa2")], t=0)
    await run(st_, [gd])
    clock.t += WINDOW * 0.5  # wall time moves; event times below are what count
    vuln = insp_event("v1", [instance("i-0aaaaaaaaaaaaaaa2")], t=WINDOW - 1)
    (inc,) = await run(st_, [vuln])
    assert inc.correlated


async def test_index_entries_expire_after_window_plus_margin() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    st_ = stage(store, index_margin_seconds=100)
    await run(st_, [insp_event("v1", [instance("i-0aaaaaaaaaaaaaaa3")])])
    (entry,) = await store.scan("corr:")
    assert "#insp#" in entry.key
    clock.t += WINDOW + 100
    assert await store.scan("corr:") == []


async def test_restart_keeps_correlation(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    clock = FakeClock()
    gd = guardduty_on_pair(GD_TIME)
    vulns = inspector_pair_findings()
    store = await SqliteStore.open(path, clock=clock)
    try:
        first = await run(stage(store), [*vulns[:2], gd])
    finally:
        await store.aclose()
    store = await SqliteStore.open(path, clock=clock)
    try:
        second = await run(stage(store), [*vulns[2:], gd])
    finally:
        await store.aclose()
    (inc,) = latest(first + second).values()
    assert inc.correlated and inc.revision == 3
    assert finding_ids(inc) == {gd.id, *(v.id for v in vulns)}
    assert {i.id for i in first} == {i.id for i in second}


async def test_concurrent_workers_on_one_file_lose_no_finding(tmp_path: Path) -> None:
    import asyncio

    path = tmp_path / "state.db"
    stores = [await SqliteStore.open(path) for _ in range(2)]
    try:
        res = [instance("i-0aaaaaaaaaaaaaaa4")]
        events = [gd_event("g1", res)] + [insp_event(f"v{i}", res, t=i) for i in range(12)]
        workers = [stage(s) for s in stores]
        await asyncio.gather(*(workers[i % 2].process(e) for i, e in enumerate(events)))
        got = await stores[0].get(f"incident:{incident_id(f'{ACCOUNT}/{REGION}/' + res[0].key)}")
        assert got is not None
        assert len(got.value["members"]) == 13 and got.value["correlated"] is True
    finally:
        for s in stores:
            await s.aclose()


async def test_findings_per_incident_are_capped_deterministically() -> None:
    res = [instance("i-0aaaaaaaaaaaaaaa5")]
    vulns = [insp_event(f"v{i:02d}", res, t=i, label="CRITICAL" if i % 3 == 0 else "MEDIUM")
             for i in range(8)]
    events = [gd_event("g1", res), *vulns]
    finals = []
    for order in (events, events[::-1]):
        st_ = stage(MemoryStore(FakeClock()), max_findings_per_incident=4)
        (inc,) = latest(await run(st_, order)).values()
        finals.append(inc)
    assert finding_ids(finals[0]) == finding_ids(finals[1])
    kept = finding_ids(finals[0])
    assert len(kept) == 4 and "g1" in kept
    assert all(v.id in kept for v in vulns if v.severity.label is SeverityLabel.CRITICAL)
    assert finals[0].title.endswith("(+5 more findings)")


# --- incidents of their own ----------------------------------------------------------------------
async def test_standalone_findings() -> None:
    st_ = stage(MemoryStore(FakeClock()))
    low = insp_event("low", [instance("i-0bbbbbbbbbbbbbbb1")], label="MEDIUM")
    high = insp_event("high", [instance("i-0bbbbbbbbbbbbbbb2")], label="CRITICAL")
    gd = gd_event("g", [instance("i-0bbbbbbbbbbbbbbb3")])
    assert await st_.process(low) == [low]
    out = await st_.process(high)
    assert len(out) == 2 and finding_ids(out[1]) == {high.id}
    out = await st_.process(gd)
    assert len(out) == 2 and finding_ids(out[1]) == {"g"} and not out[1].correlated


async def test_inspector_standalone_threshold_is_configurable() -> None:
    st_ = stage(MemoryStore(FakeClock()), inspector_standalone_min_severity="medium")
    low = insp_event("low", [instance("i-0bbbbbbbbbbbbbbb4")], label="MEDIUM")
    assert len(await st_.process(low)) == 2


@pytest.mark.parametrize("rel", [
    "securityhub/custodian-placebo-securityhub-getfindings-instance.json",
    "securityhub/panther-asff-decoy-s3-accessed.json",
    "guardduty/custodian-iam-duty-event.json",
    "guardduty/panther-privesc-iamuser-adminpermissions.json",
])
async def test_real_findings_become_incidents_of_their_own(rel: str) -> None:
    st_ = stage(MemoryStore(FakeClock()))
    for event in _normalize(_load(rel)):
        out = await st_.process(event)
        assert out[0] is event and len(out) == 2
        inc = out[1]
        assert isinstance(inc, Incident) and finding_ids(inc) == {event.id}
        assert inc.sample == event.sample and inc.observe_only == event.observe_only
        assert inc.key == resource_keys(event)[0]


@pytest.mark.parametrize("rel", [
    "cloudtrail/panther-createuser-console.json",
    "cloudtrail/custodian-event-cloud-trail-create-bucket.json",
    "envelopes/powertools-eventBridgeEvent.json",
])
async def test_cloudtrail_and_unknown_events_pass_through(rel: str) -> None:
    st_ = stage(MemoryStore(FakeClock()))
    for event in _normalize(_load(rel)):
        assert event.kind in (EventKind.CLOUDTRAIL, EventKind.UNKNOWN)
        assert await st_.process(event) == [event]
    assert await st_.process("not an event") == ["not an event"]


async def test_detection_event_is_an_incident_per_resource() -> None:
    st_ = stage(MemoryStore(FakeClock()))
    key = ResourceRef("iam.access_key", "AKIAEXAMPLE0000001", None, ACCOUNT, REGION)
    events = [Event(id=f"det-{i}", kind=EventKind.DETECTION, type="cloudtrail.logging_disabled",
                    title="logging disabled", source="riposte", account=ACCOUNT, region=REGION,
                    time=T0 + timedelta(seconds=i), severity=Severity.of_score(75, "high"),
                    resources=(key,), attributes={"event_name": "StopLogging"},
                    detection=Detection("cloudtrail.logging_disabled", "t", "d",
                                        SeverityLabel.HIGH, ("T1562.008",)))
              for i in range(2)]
    final = latest(await run(st_, events))
    (inc,) = final.values()
    assert finding_ids(inc) == {"det-0", "det-1"}
    assert inc.mitre == ("T1562.008",)
    assert inc.key == "iam.access_key:AKIAEXAMPLE0000001"


async def test_sample_findings_never_merge_with_real_ones() -> None:
    st_ = stage(MemoryStore(FakeClock()))
    sample = _normalize(_load("guardduty/custodian-ec2-duty-event.json"))[0]
    assert sample.sample
    real_vuln = insp_event("v", [ResourceRef("ec2.instance", "i-99999999", None,
                                             sample.account, sample.region)],
                           label="CRITICAL")
    real_vuln = replace(real_vuln, account=sample.account, region=sample.region,
                        time=sample.time)
    final = latest(await run(st_, [real_vuln, sample]))
    assert len(final) == 2
    flagged = [i for i in final.values() if i.sample]
    assert len(flagged) == 1 and flagged[0].observe_only and not flagged[0].correlated
    assert finding_ids(flagged[0]) == {sample.id}


async def test_observe_only_events_make_observe_only_incidents() -> None:
    st_ = stage(MemoryStore(FakeClock()))
    res = [instance("i-0ccccccccccccccc1")]
    (inc,) = await run(st_, [gd_event("g", res, observe_only=True)])
    assert inc.observe_only and not inc.sample and inc.observe_reason == "account_not_allowed"
    (trusted,) = await run(st_, [gd_event("g2", res)])
    assert trusted.id != inc.id and not trusted.observe_only


# --- containers ----------------------------------------------------------------------------------
DIGEST = "sha256:" + "ab" * 32


def test_parse_image() -> None:
    assert parse_image(f"123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app@{DIGEST}") == \
        f"ecr.image:team/app@{DIGEST}"
    assert parse_image("team/app:v1") == "ecr.image:team/app:v1"
    assert parse_image("localhost:5000/app:v1") == "ecr.image:app:v1"
    assert parse_image("app") is None


async def test_eks_runtime_finding_pairs_with_the_image_and_node() -> None:
    st_ = stage(MemoryStore(FakeClock()))
    node = instance("i-0ddddddddddddddd1")
    gd_image = ResourceRef("ecr.image", DIGEST, None, ACCOUNT, REGION,
                           details={"repository": "team/app",
                                    "image": f"1.dkr.ecr.{REGION}.amazonaws.com/team/app@{DIGEST}"})
    cluster = ResourceRef("eks.cluster", "prod", None, ACCOUNT, REGION)
    gd = gd_event("g-eks", [cluster, gd_image, node], ftype="CryptoCurrency:Runtime/BitcoinTool.B")
    image_vuln = insp_event("img", [ResourceRef(
        "ecr.image", DIGEST, f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/team/app/{DIGEST}",
        ACCOUNT, REGION, details={"repository": "team/app", "image_tags": ["v1"]})])
    node_vuln = insp_event("node", [node])
    final = latest(await run(st_, [image_vuln, gd, node_vuln]))
    (inc,) = final.values()
    assert inc.correlated and finding_ids(inc) == {"g-eks", image_vuln.id, node_vuln.id}
    assert inc.key == f"ecr.image:team/app@{DIGEST}"
    assert "T1496" in inc.mitre
    assert inc.resources[0].type == "ecr.image"  # the incident's own resource first
    assert {r.type for r in inc.resources} == {"ecr.image", "eks.cluster", "ec2.instance"}


async def test_lambda_versions_share_one_key() -> None:
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fn"
    st_ = stage(MemoryStore(FakeClock()))
    gd = gd_event("g-l", [ResourceRef("lambda.function", arn, arn, ACCOUNT, REGION)],
                  ftype="Backdoor:Lambda/C&CActivity.B")
    vuln = insp_event("lv", [ResourceRef("lambda.function", f"{arn}:$LATEST", None, ACCOUNT,
                                         REGION)])
    (inc,) = latest(await run(st_, [gd, vuln])).values()
    assert inc.correlated


# --- property: order and duplication do not matter ----------------------------------------------
INSTANCES = ("i-0eeeeeeeeeeeeeee1", "i-0eeeeeeeeeeeeeee2")


@st.composite
def finding_sets(draw: st.DrawFn) -> list[Event]:
    events: list[Event] = []
    for n in range(draw(st.integers(1, 3))):
        res = [instance(draw(st.sampled_from(INSTANCES)), criticality="high")]
        base = draw(st.integers(0, 3 * int(WINDOW)))
        ftype = draw(st.sampled_from(["Backdoor:EC2/C&CActivity.B!DNS", "Recon:EC2/Portscan",
                                      "CryptoCurrency:EC2/BitcoinTool.B!DNS"]))
        for v in range(draw(st.integers(1, 3))):
            events.append(gd_event(f"g{n}", res, t=base + 60 * v, count=v + 1, ftype=ftype))
    for n in range(draw(st.integers(0, 4))):
        res = [instance(draw(st.sampled_from(INSTANCES)))]
        base = draw(st.integers(0, 3 * int(WINDOW)))
        label = draw(st.sampled_from(["MEDIUM", "HIGH", "CRITICAL"]))
        exploit = draw(st.booleans())
        for v in range(draw(st.integers(1, 3))):
            status = draw(st.sampled_from(["ACTIVE", "ACTIVE", "CLOSED", "SUPPRESSED"]))
            events.append(insp_event(f"v{n}", res, t=base + 30 * v, status=status, label=label,
                                     cvss=7.5, exploit=exploit))
    return events


def summary(incidents: Iterable[Incident], scorer: ScoreStage) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for inc in latest(incidents).values():
        if not inc.findings:
            continue  # an incident whose last finding closed (depends on whether it opened)
        scored = scorer.score_incident(inc)
        assert scored.score is not None
        out[inc.id] = (sorted((f.event_id, f.count, f.status) for f in inc.findings),
                       inc.correlated, scored.score.value, scored.mitre)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
async def test_any_permutation_and_duplication_gives_the_same_incidents(data: st.DataObject
                                                                        ) -> None:
    findings = data.draw(finding_sets())
    extra = data.draw(st.lists(st.sampled_from(findings), max_size=5))
    shuffled = data.draw(st.permutations(findings + extra))
    scorer = ScoreStage(ScoreConfig())
    canonical = sorted(findings, key=lambda e: (e.time, e.count or 0, e.id))
    expected = summary(await run(stage(MemoryStore(FakeClock())), canonical), scorer)
    actual = summary(await run(stage(MemoryStore(FakeClock())), shuffled), scorer)
    assert actual == expected
