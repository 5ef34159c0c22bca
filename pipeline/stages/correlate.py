"""The correlate stage: GuardDuty x Inspector on one resource, and incidents for the rest.

Why: an instance that GuardDuty sees talking to a C2 server is worrying; the same
instance also carrying an exploitable CVE is the one to isolate first. This stage
indexes findings by the resource they are about and turns them into incidents a
responder handles as one.

How it stays correct under redelivery, reordering and several workers:

* **Index.** Every finding version is written to ``corr:<scope>#<family>#<finding id>``
  for each resource key it touches (``scope`` is namespace, account, region and
  resource key; ``family`` is ``gd`` for GuardDuty, ``insp`` for Inspector, ``other``
  for Security Hub and detections), so one primary-key range scan reads everything
  known about a resource. A write happens only when the
  new version ranks above the stored one (event time, then ``count``, then status,
  then a content digest), so duplicates and stale out-of-order updates change nothing.
  Closed or suppressed Inspector findings stay as tombstones, so an older ACTIVE
  update arriving late cannot bring them back. Entries expire after the correlation
  window plus a margin: the index is bounded by the finding rate.
* **Incidents.** One per home resource key, id ``inc-`` + sha256(namespace, account,
  region, key). Its finding list is recomputed from the index on every change, so it
  is a function of the set of latest finding versions, not of arrival order:
  the GuardDuty, Security Hub and detection findings whose home is the key; Inspector
  findings on the key at or above the standalone severity; and every open Inspector
  finding on any resource a member GuardDuty finding touches within the window of
  event time (the correlation). Members whose index entries have expired are kept.
  The record is written with compare-and-set, so concurrent workers never lose an
  update; an unchanged finding list emits nothing (no new revision).
* **Races between workers.** Every worker writes its finding to the index BEFORE it
  reads the index, and reads are strongly consistent, so of two findings about one
  resource processed at the same time at least one worker sees the other's and
  refreshes the incident; the incident write itself is a compare-and-set.
* **Trust.** Sample findings and observe-only events live in their own namespaces:
  they make (never-actionable) incidents of their own and can neither suppress nor
  inflate an incident built from trusted findings.

Windows use event times only (``Event.time``); TTLs use the store's clock, which is
the injected ``ctx.clock`` (event time in replay).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline import metrics
from pipeline.clock import utc_from_epoch
from pipeline.config import RiposteConfig
from pipeline.context import RuntimeContext
from pipeline.errors import RetriableError
from pipeline.mitre import techniques_for_event, techniques_for_findings
from pipeline.models import (
    Event,
    EventKind,
    FindingRef,
    Incident,
    ResourceRef,
    Severity,
    SeverityLabel,
)
from pipeline.stages.correlate_config import CorrelateConfig
from pipeline.state.base import StateStore, Stored

log = logging.getLogger(__name__)

CORRELATABLE_TYPES = frozenset({"ec2.instance", "ecr.image", "lambda.function"})
WORKLOAD_TYPES = frozenset({"eks.cluster", "ecs.task", "other"})
# Inspector CLOSED/SUPPRESSED leave the index; an ARCHIVED GuardDuty finding stays on its
# incident (as a record) but no longer pairs with vulnerabilities.
CLOSED_STATUSES = frozenset({"CLOSED", "SUPPRESSED", "ARCHIVED"})
HANDLED_KINDS = frozenset({EventKind.GUARDDUTY, EventKind.INSPECTOR, EventKind.SECURITYHUB,
                           EventKind.DETECTION})
_FAMILY = {EventKind.GUARDDUTY: "gd", EventKind.INSPECTOR: "insp"}
_MAX_TAG_KEYS = 5
_MAX_RESOURCES = 8
_MAX_WALK_DEPTH = 6

_INSTANCE_RE = re.compile(r"\bi-[0-9a-f]{8,17}\b")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


# --- resource keys ------------------------------------------------------------------------------
def _ecr_key(repository: str | None, digest: str | None, tag: str | None = None) -> str | None:
    if repository and digest:
        return f"ecr.image:{repository}@{digest}"
    if repository and tag:
        return f"ecr.image:{repository}:{tag}"
    return None


def parse_image(image: str) -> str | None:
    """``[registry/]repo[:tag][@sha256:...]`` (GuardDuty container ``image``) → ECR key."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first):  # a registry host (…dkr.ecr…amazonaws.com)
        image = rest
    tag = None
    name, sep, maybe_tag = image.rpartition(":")
    if sep and "/" not in maybe_tag:
        image, tag = name, maybe_tag
    return _ecr_key(image or None, digest, tag)


def _first(details: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        value = details.get(name)
        if value:
            return value
    return None


def ecr_keys(ref: ResourceRef) -> list[str]:
    """Digest key first (what Inspector reports), then repository:tag keys (what a
    GuardDuty runtime finding may name instead)."""
    details: Mapping[str, Any] = ref.details
    nested = details.get("awsEcrContainerImage")
    if isinstance(nested, Mapping):
        details = {**details, **nested}
    repo = _first(details, "repositoryName", "repository_name", "repository")
    digest = _first(details, "imageHash", "image_digest", "imageDigest", "digest")
    if not digest and _DIGEST_RE.fullmatch(ref.id):
        digest = ref.id
    keys: list[str] = []
    if not (isinstance(repo, str) and isinstance(digest, str)):
        image = details.get("image")
        for candidate in (ref.arn, ref.id, image if isinstance(image, str) else None):
            if not candidate:
                continue
            found = _DIGEST_RE.search(candidate)
            if found and "repository/" in candidate:
                # arn:aws:ecr:region:account:repository/<repo>/sha256:<hex>
                path = candidate.split("repository/", 1)[1]
                repo = repo or path[: path.rfind("/sha256:")] or None
                digest = digest or found.group(0)
                break
            if not _DIGEST_RE.fullmatch(candidate):
                parsed = parse_image(candidate)
                if parsed:
                    keys.append(parsed)
                    break
    key = _ecr_key(repo if isinstance(repo, str) else None,
                   digest if isinstance(digest, str) else None)
    if key:
        keys.insert(0, key)
    tags = details.get("imageTags") or details.get("image_tags") or ()
    if isinstance(repo, str) and isinstance(tags, list | tuple):
        for tag in list(tags)[:_MAX_TAG_KEYS]:
            tag_key = _ecr_key(repo, None, str(tag))
            if tag_key:
                keys.append(tag_key)
    return list(dict.fromkeys(keys)) or [ref.key]


def lambda_key(ref: ResourceRef) -> str:
    """Function ARN without a version or alias qualifier (Inspector names ``:$LATEST``)."""
    arn = ref.arn if ref.arn and ":function:" in ref.arn else ref.id
    if arn.startswith("arn:") and ":function:" in arn:
        arn = ":".join(arn.split(":")[:7])
    return f"lambda.function:{arn}"


def instance_key(ref: ResourceRef) -> str:
    found = _INSTANCE_RE.search(ref.id) or (_INSTANCE_RE.search(ref.arn) if ref.arn else None)
    return f"ec2.instance:{found.group(0)}" if found else ref.key


def _walk_workload(node: Any, out: list[str], depth: int = 0) -> None:
    """Instance ids and container images named anywhere in an EKS/ECS resource block."""
    if depth > _MAX_WALK_DEPTH:
        return
    if isinstance(node, Mapping):
        for name, value in node.items():
            if isinstance(value, str):
                if name in ("instanceId", "instance_id") and _INSTANCE_RE.fullmatch(value):
                    out.append(f"ec2.instance:{value}")
                elif name in ("image", "imageUri", "image_uri"):
                    key = parse_image(value)
                    if key:
                        out.append(key)
            else:
                _walk_workload(value, out, depth + 1)
    elif isinstance(node, list):
        for value in node[:50]:
            _walk_workload(value, out, depth + 1)


def _raw_resource(event: Event) -> Any:
    raw = event.raw
    detail = raw.get("detail")
    if isinstance(detail, Mapping) and "resource" in detail:
        return detail.get("resource")
    return raw.get("resource")


def ref_key(ref: ResourceRef) -> str:
    """One resource's own canonical key (the first of its keys)."""
    if ref.type == "ec2.instance":
        return instance_key(ref)
    if ref.type == "ecr.image":
        return ecr_keys(ref)[0]
    if ref.type == "lambda.function":
        return lambda_key(ref)
    return ref.key


def resource_keys(event: Event) -> list[str]:
    """The resource keys an event touches, most specific first."""
    keys: list[str] = []
    workload = False
    for ref in event.resources:
        if ref.type == "ec2.instance":
            keys.append(instance_key(ref))
        elif ref.type == "ecr.image":
            keys.extend(ecr_keys(ref))
        elif ref.type == "lambda.function":
            keys.append(lambda_key(ref))
        elif ref.type in WORKLOAD_TYPES:
            workload = True
            _walk_workload(ref.details, keys)
    if event.kind is EventKind.GUARDDUTY and (workload or not keys):
        resource = _raw_resource(event)
        if isinstance(resource, Mapping) and resource.get("resourceType") in (
                "EKSCluster", "ECSCluster", "Container"):
            _walk_workload(resource, keys)
    unique = list(dict.fromkeys(keys))
    if unique:
        return unique
    primary = event.primary_resource
    return [primary.key if primary is not None else f"event:{event.id}"]


# --- index records ------------------------------------------------------------------------------
def namespace(event: Event) -> str:
    if event.sample:
        return "sample|"
    if event.observe_only:
        return "observe|"
    return ""


def incident_id(scope: str) -> str:
    return "inc-" + hashlib.sha256(scope.encode()).hexdigest()[:24]


def _scalar_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items()
            if isinstance(v, str | int | float | bool) or v is None}


def _small_details(details: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars and short lists of scalars (addresses, security groups): what scoring and
    containment read; nested documents stay in the event's raw payload."""
    out = _scalar_attributes(details)
    for k, v in details.items():
        if isinstance(v, list | tuple) and len(v) <= 16 and all(
                isinstance(x, str | int | float | bool) for x in v):
            out[k] = list(v)
    return out


def _resource_doc(ref: ResourceRef | None, key: str) -> dict[str, Any]:
    if ref is None:
        kind, _, rid = key.partition(":")
        return {"type": kind, "id": rid, "key": key, "tags": {}, "details": {}}
    return {"type": ref.type, "id": ref.id, "arn": ref.arn, "account": ref.account,
            "region": ref.region, "tags": dict(ref.tags),
            "details": _small_details(ref.details), "key": key}


def _status_rank(status: str | None) -> int:
    return 1 if (status or "").upper() in CLOSED_STATUSES else 0


# Free text the score never reads: kept out of the index (it is in the event's raw payload).
_DROPPED_ATTRIBUTES = frozenset({"description", "remediation"})
_MAX_TEXT = 200


def _compact_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v[:_MAX_TEXT] if isinstance(v, str) else v)
            for k, v in _small_details(attributes).items()
            if k not in _DROPPED_ATTRIBUTES}


def finding_record(event: Event, scopes: Sequence[str], keys: Sequence[str]) -> dict[str, Any]:
    """What the index keeps about one finding version (small: no raw payload)."""
    attrs = _compact_attributes(event.attributes)
    attrs["mitre"] = list(techniques_for_event(event))
    attrs["resource_key"] = keys[0]
    record: dict[str, Any] = {
        "kind": str(event.kind),
        "id": event.id,
        "home": scopes[0],
        "scopes": list(scopes),
        "time": event.time.timestamp(),
        "count": event.count,
        "status": event.status,
        "type": event.type,
        "title": event.title[:_MAX_TEXT],
        "severity": [event.severity.native, event.severity.score, str(event.severity.label)],
        "attributes": attrs,
        "account": event.account,
        "region": event.region,
        "observe_reason": event.observe_reason,
        "resources": ([_resource_doc(ref, ref_key(ref)) for ref in event.resources[:_MAX_RESOURCES]]
                      or [_resource_doc(None, keys[0])]),
    }
    digest = hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    record["rank"] = [record["time"], event.count or 0, _status_rank(event.status), digest]
    return record


def _is_open(record: Mapping[str, Any]) -> bool:
    return _status_rank(record.get("status")) == 0


def _severity_rank(record: Mapping[str, Any]) -> int:
    return SeverityLabel(record["severity"][2]).rank


def index_key(scope: str, family: str, finding_id: str) -> str:
    """``corr:<scope>#<family>#<finding id>``: one resource's findings are one key range."""
    return f"corr:{scope}#{family}#{finding_id}"


@dataclass(frozen=True, slots=True)
class _Entry:
    """One index entry as read back: its store key and the finding record."""

    key: str
    record: dict[str, Any]


# Index entries read during one event, by scope then family (dropped on a CAS retry).
_Views = dict[str, dict[str, list[_Entry]]]


# --- the stage ----------------------------------------------------------------------------------
class CorrelateStage:
    name = "correlate"

    def __init__(self, config: CorrelateConfig, store: StateStore) -> None:
        self.config = config
        self.store = store
        self.window = config.window_seconds
        self.index_ttl = config.window_seconds + config.index_margin_seconds
        self.min_standalone = config.inspector_standalone_min_severity.rank
        self._duplicate = metrics.discarded("correlate_duplicate")
        self._stale = metrics.discarded("correlate_stale")

    def accepts(self, item: Any) -> bool:
        """Findings and detections; everything else passes."""
        return isinstance(item, Event) and item.kind in HANDLED_KINDS

    async def process(self, item: Any) -> Sequence[Any]:
        if not self.accepts(item):
            return [item]
        incidents = await self.correlate(item)
        return [item, *incidents]

    async def correlate(self, event: Event) -> list[Incident]:
        keys = resource_keys(event)
        ns = namespace(event)
        base = f"{ns}{event.account or '-'}/{event.region or '-'}/"
        scopes = [base + key for key in keys]
        record = finding_record(event, scopes, keys)
        family = _FAMILY.get(event.kind, "other")
        previous: dict[str, Any] | None = None
        outcome = "changed"
        for scope in scopes:
            result, prior = await self._upsert(index_key(scope, family, event.id), record)
            if scope == scopes[0]:
                outcome, previous = result, prior
        if outcome != "changed":
            # Redelivery after a crash between the index and the incident write is
            # covered: the incident is still recomputed below, and emits only if it
            # does not already reflect the stored finding.
            (self._duplicate if outcome == "duplicate" else self._stale).inc()

        views: _Views = {}
        homes = await self._affected_homes(record, previous, family, views)
        out: list[Incident] = []
        for home in homes:
            incident = await self._refresh(home, event, views)
            if incident is not None:
                out.append(incident)
        return out

    async def _upsert(self, key: str, record: dict[str, Any]
                      ) -> tuple[str, dict[str, Any] | None]:
        """Write ``record`` unless the stored version ranks at or above it."""
        for _ in range(self.config.max_cas_attempts):
            current = await self.store.get(key)
            if current is not None:
                if current.value.get("rank") == record["rank"]:
                    return "duplicate", current.value
                if list(current.value.get("rank") or ()) > record["rank"]:
                    return "stale", current.value
            expected = 0 if current is None else current.version
            if await self.store.compare_and_set(key, expected, record,
                                                ttl=self.index_ttl) is not None:
                return "changed", None if current is None else current.value
        raise RetriableError(f"correlation index contended: {key}", reason="cas_contention",
                             component=self.name)

    async def _view(self, scope: str, views: _Views) -> dict[str, list[_Entry]]:
        """Every index entry of one resource, by family: ONE primary-key range scan."""
        view = views.get(scope)
        if view is None:
            view = {"gd": [], "insp": [], "other": []}
            for stored in await self.store.scan(f"corr:{scope}#"):
                family = stored.key[len(scope) + 6:].split("#", 1)[0]
                view.setdefault(family, []).append(_Entry(stored.key, stored.value))
            views[scope] = view
        return view

    async def _affected_homes(self, record: dict[str, Any], previous: dict[str, Any] | None,
                              family: str, views: _Views) -> list[str]:
        home: str = record["home"]
        if family != "insp":
            return [home]
        homes: list[str] = []
        standalone = _severity_rank(record) >= self.min_standalone or (
            previous is not None and _severity_rank(previous) >= self.min_standalone)
        if standalone:
            homes.append(home)
        for scope in record["scopes"]:
            for entry in (await self._view(scope, views))["gd"]:
                homes.append(entry.record["home"])
        # A low finding with no partner: only an existing incident can care.
        if not homes and await self.store.get(f"incident:{incident_id(home)}") is not None:
            homes.append(home)
        return sorted(set(homes))

    async def _members(self, home: str, views: _Views) -> tuple[dict[str, _Entry], bool]:
        """The findings an incident at ``home`` consists of, from the index alone."""
        members: dict[str, _Entry] = {}
        own = await self._view(home, views)
        threats = [e for e in own["gd"] + own["other"] if e.record["home"] == home]
        for entry in own["insp"]:
            if (entry.record["home"] == home and _is_open(entry.record)
                    and _severity_rank(entry.record) >= self.min_standalone):
                members[entry.key] = entry
        correlated = False
        for threat in threats:
            members[threat.key] = threat
            if threat.record["kind"] != EventKind.GUARDDUTY or not _is_open(threat.record):
                continue
            for scope in threat.record["scopes"]:
                for vuln in (await self._view(scope, views))["insp"]:
                    if not _is_open(vuln.record):
                        continue
                    if abs(vuln.record["time"] - threat.record["time"]) <= self.window:
                        members[vuln.key] = vuln
                        correlated = True
        return members, correlated

    async def _refresh(self, home: str, trigger: Event, views: _Views) -> Incident | None:
        """Recompute the incident at ``home``; store and return it if it changed."""
        inc_id = incident_id(home)
        key = f"incident:{inc_id}"
        for attempt in range(self.config.max_cas_attempts):
            if attempt:
                views.clear()  # another worker wrote meanwhile: read the index again
            prev = await self.store.get(key)
            members, correlated = await self._members(home, views)
            if prev is not None:
                retained = False
                for member_key, member in prev.value["members"].items():
                    if member_key in members:
                        continue
                    # Kept only if its index entry expired; closed, superseded or
                    # out-of-window findings are gone for good.
                    if await self.store.get(member_key) is None:
                        members[member_key] = _Entry(member_key, member)
                        retained = True
                # A pair whose index entries expired stays a pair.
                correlated = correlated or (retained and bool(prev.value.get("correlated"))
                                            and self._still_paired(members))
            if not members and prev is None:
                return None
            members, omitted = self._cap(members)
            signature = sorted([k, e.record["rank"]] for k, e in members.items())
            signature.append(["omitted", omitted])
            if prev is not None and prev.value.get("signature") == [*signature, correlated]:
                return None
            doc = self._document(inc_id, home, members, correlated=correlated,
                                 signature=signature, prev=prev)
            doc["omitted"] = omitted
            stored = await self.store.compare_and_set(
                key, 0 if prev is None else prev.version, doc,
                ttl=self.config.incident_ttl_seconds)
            if stored is not None:
                log.debug("incident revised", extra={
                    "incident_id": inc_id, "revision": doc["revision"],
                    "findings": len(members), "correlated": correlated,
                    "trigger": trigger.id})
                return self._incident(doc, trigger)
        log.warning("incident record contended", extra={"incident_id": inc_id})
        raise RetriableError(f"incident record contended: {key}", reason="cas_contention",
                             component=self.name)

    def _cap(self, members: dict[str, _Entry]) -> tuple[dict[str, _Entry], int]:
        """Bound the record (DynamoDB items stop at 400 KB): threats first, then the most
        severe vulnerabilities, ties by id, so the choice does not depend on arrival order."""
        limit = self.config.max_findings_per_incident
        if len(members) <= limit:
            return members, 0
        ordered = sorted(members.items(), key=lambda kv: (
            kv[1].record["kind"] == EventKind.INSPECTOR, -kv[1].record["severity"][1],
            kv[1].record["id"]))
        return dict(ordered[:limit]), len(members) - limit

    @staticmethod
    def _still_paired(members: Mapping[str, _Entry]) -> bool:
        kinds = {e.record["kind"] for e in members.values()}
        return EventKind.GUARDDUTY in kinds and EventKind.INSPECTOR in kinds

    def _document(self, inc_id: str, home: str, members: Mapping[str, _Entry], *,
                  correlated: bool, signature: list[list[Any]], prev: Stored | None
                  ) -> dict[str, Any]:
        times = [e.record["time"] for e in members.values()]
        old = prev.value if prev is not None else {}
        first = min([*times, *([old["first_seen"]] if "first_seen" in old else [])], default=0.0)
        last = max([*times, *([old["last_seen"]] if "last_seen" in old else [])], default=first)
        return {
            "id": inc_id,
            "home": home,
            "members": {k: e.record for k, e in sorted(members.items())},
            "correlated": correlated,
            "signature": [*signature, correlated],
            "revision": int(old.get("revision", 0)) + 1,
            "first_seen": first,
            "last_seen": last,
            "detected_at": old.get("detected_at", time.time()),
        }

    def _incident(self, doc: Mapping[str, Any], trigger: Event) -> Incident:
        home: str = doc["home"]
        records = sorted(doc["members"].values(), key=lambda r: (r["kind"], r["id"]))
        findings = tuple(_finding_ref(r) for r in records)
        ns = home.split("|", 1)[0] + "|" if "|" in home else ""
        account, region, resource_key = _split_scope(home[len(ns):])
        reasons = sorted({r["observe_reason"] for r in records if r.get("observe_reason")})
        return Incident(
            id=doc["id"],
            key=resource_key,
            title=_title(records, resource_key, bool(doc["correlated"]))
            + (f" (+{doc['omitted']} more findings)" if doc.get("omitted") else ""),
            account=account,
            region=region,
            resources=_resources(records, resource_key),
            findings=findings,
            first_seen=utc_from_epoch(doc["first_seen"]),
            last_seen=utc_from_epoch(doc["last_seen"]),
            correlated=bool(doc["correlated"]),
            mitre=techniques_for_findings(r["attributes"] for r in records),
            sample=ns == "sample|",
            observe_only=ns in ("sample|", "observe|"),
            observe_reason=(reasons[0] if reasons else
                            "sample finding" if ns == "sample|" else
                            "untrusted event" if ns == "observe|" else None),
            revision=int(doc["revision"]),
            trigger=trigger,
            detected_at=float(doc["detected_at"]),
        )


def _split_scope(scope: str) -> tuple[str | None, str | None, str]:
    account, region, key = scope.split("/", 2)
    return (None if account == "-" else account, None if region == "-" else region, key)


def _finding_ref(record: Mapping[str, Any]) -> FindingRef:
    native, score, label = record["severity"]
    return FindingRef(
        event_id=record["id"],
        kind=EventKind(record["kind"]),
        type=record["type"],
        severity=Severity(native=native, score=int(score), label=SeverityLabel(label)),
        time=utc_from_epoch(record["time"]),
        count=record.get("count"),
        status=record.get("status"),
        title=record.get("title") or "",
        attributes=dict(record.get("attributes") or {}),
    )


def _resources(records: Iterable[Mapping[str, Any]], home_key: str) -> tuple[ResourceRef, ...]:
    """One ResourceRef per resource key (every resource of every finding), the incident's own
    resource first; tags and scalar details merged in finding order."""
    merged: dict[str, dict[str, Any]] = {}
    for record in records:
        for doc in record["resources"]:
            key = doc.get("key") or f"{doc['type']}:{doc['id']}"
            into = merged.setdefault(key, {**doc, "tags": {}, "details": {}})
            into["tags"].update(doc.get("tags") or {})
            into["details"].update(doc.get("details") or {})
    ordered = sorted(merged.items(), key=lambda kv: (kv[0] != home_key, kv[0]))
    return tuple(ResourceRef(type=d["type"], id=d["id"], arn=d.get("arn"),
                             account=d.get("account"), region=d.get("region"),
                             tags=d["tags"], details=d["details"]) for _, d in ordered)


def _title(records: Sequence[Mapping[str, Any]], resource_key: str, correlated: bool) -> str:
    if not records:
        return f"No open findings on {resource_key}"
    top = max(records, key=lambda r: (r["severity"][1], r["kind"] != "inspector2", r["id"]))
    if not correlated:
        return str(top["title"] or top["type"])
    threats = [r for r in records if r["kind"] == EventKind.GUARDDUTY]
    vulns = sum(1 for r in records if r["kind"] == EventKind.INSPECTOR)
    lead = max(threats, key=lambda r: (r["severity"][1], r["id"])) if threats else top
    return (f"{lead['title'] or lead['type']} on {resource_key} "
            f"with {vulns} open vulnerabilit{'y' if vulns == 1 else 'ies'}")


def build(config: RiposteConfig, ctx: RuntimeContext) -> CorrelateStage:
    return CorrelateStage(config.correlate, ctx.store)
