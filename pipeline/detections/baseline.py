"""First-seen baseline: a principal doing something it has never done before.

For each principal (the role behind an assumed-role session, else the user or
root ARN, else the access key) the rule remembers which APIs it called, from
which regions and from which networks (the source /24 for IPv4, /48 for IPv6, or
the ASN when normalize provides ``source_asn``). After a learning period, measured
in *event* time from the principal's first sighting, a value never seen before
fires once.

State lives in the state store under ``baseline:<principal>:first`` and
``baseline:<principal>:<dimension>:<value>``, written with ``put_if_absent`` so two
workers seeing the same first call cannot both fire, and with a TTL so a principal
idle for longer than ``baseline_ttl_seconds`` is relearnt. Entries are refreshed
(rewritten with a new TTL) at most every tenth of the TTL, which bounds the writes
per principal. Event time (not wall time) drives learning and refreshes, so a replay
of an archive reaches the same verdicts. Observe-only (untrusted) events are ignored.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.clock import utc_from_epoch
from pipeline.detections._cloudtrail import CloudTrailView
from pipeline.detections.config import DetectionsConfig
from pipeline.detections.registry import CloudTrailRule, Hit, register
from pipeline.models import SeverityLabel

if TYPE_CHECKING:
    from pipeline.context import RuntimeContext

PREFIX = "baseline:"


def network_of(view: CloudTrailView) -> str | None:
    """The network a call came from: ``asn:<n>`` if known, else the /24 or /48 prefix."""
    asn = view.attrs.get("source_asn")
    if asn not in (None, ""):
        return f"asn:{asn}"
    addr = view.ip
    if addr is None:
        return None
    if addr.version == 4:
        n = int(addr)
        return f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.0/24"
    return str(ipaddress.IPv6Network((int(addr) >> 80 << 80, 48)))


def _dimensions(view: CloudTrailView, wanted: Sequence[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for dim in wanted:
        if dim == "api" and view.event_name:
            api = f"{view.event_source or '?'}/{view.event_name}"
            out.append(("api", api))
        elif dim == "region" and view.region:
            out.append(("region", view.region))
        elif dim == "network":
            net = network_of(view)
            if net is not None:
                out.append(("network", net))
    return out


@register(
    "first_seen_activity",
    title="Principal did something it has never done before",
    severity=SeverityLabel.LOW,
    mitre=("T1078.004",),
    description="After its learning period, a principal called an API, used a region or came "
                "from a network (IP /24 or ASN) not seen for it before.",
    config=("baseline_learning_seconds", "baseline_ttl_seconds", "baseline_dimensions",
            "baseline_cache_size"),
)
class FirstSeenActivity(CloudTrailRule):
    def __init__(self, config: DetectionsConfig, ctx: RuntimeContext) -> None:
        super().__init__(config, ctx)
        self._store = ctx.store
        self._learning = config.baseline_learning_seconds
        self._ttl = config.baseline_ttl_seconds
        self._refresh_after = config.baseline_ttl_seconds / 10
        self._dims: tuple[str, ...] = tuple(config.baseline_dimensions)
        # key -> (first_seen, last_seen) of entries known to exist in the store. An entry
        # refreshed less than ``_refresh_after`` ago cannot have expired, so the common
        # case (a principal repeating itself) costs no store round trip. New keys always
        # go through put_if_absent, so the cache never decides whether something fires.
        self._known: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._cache_size = config.baseline_cache_size

    def _cached(self, key: str, now: float) -> tuple[float, float] | None:
        entry = self._known.get(key)
        if entry is None or now - entry[1] >= self._refresh_after:
            return None
        self._known.move_to_end(key)
        return entry

    def _cache(self, key: str, first: float, last: float) -> None:
        self._known[key] = (first, last)
        self._known.move_to_end(key)
        if len(self._known) > self._cache_size:
            self._known.popitem(last=False)

    async def _touch(self, key: str, now: float) -> tuple[bool, float]:
        """Record ``key`` at event time ``now``: (created by this call, first_seen).

        Callers look in the cache first (``_cached``), so the common case awaits nothing.
        """
        # Not known here: most such keys are new, so try to create it first (one round trip).
        created = await self._store.put_if_absent(
            key, {"first_seen": now, "last_seen": now}, ttl=self._ttl)
        if created is not None:
            self._cache(key, now, now)
            return True, now
        current = await self._store.get(key)
        if current is None:  # expired between the two calls
            return False, now
        first = float(current.value.get("first_seen", now))
        last = float(current.value.get("last_seen", 0.0))
        if now - last >= self._refresh_after:
            value: dict[str, Any] = dict(current.value, last_seen=now)
            # A lost race only means someone else refreshed it: nothing to do.
            await self._store.compare_and_set(key, current.version, value, ttl=self._ttl)
            last = now
        self._cache(key, first, last)
        return False, first

    async def evaluate(self, view: CloudTrailView) -> Hit | None:
        # Untrusted (observe-only) events neither fire nor teach: otherwise records forged
        # into the queue could pre-train the baseline so real activity later looks known.
        if view.event.observe_only or not view.succeeded or view.service_originated:
            return None
        subject = view.subject
        if not subject:
            return None
        now = view.event.time.timestamp()
        key = f"{PREFIX}{subject}:first"
        cached = self._cached(key, now)
        first = cached[0] if cached is not None else (await self._touch(key, now))[1]
        learning = now - first < self._learning
        new: list[tuple[str, str]] = []
        for dim, val in _dimensions(view, self._dims):
            key = f"{PREFIX}{subject}:{dim}:{val}"
            if self._cached(key, now) is not None:
                continue
            created, _ = await self._touch(key, now)
            if created and not learning:
                new.append((dim, val))
        if learning or not new:
            return None
        return Hit(facts={
            "subject": subject,
            "new": {dim: val for dim, val in new},
            "principal_first_seen": utc_from_epoch(first).isoformat(),
            "learning_seconds": self._learning,
            "event_name": view.event_name,
            "source_ip": view.source_ip,
            "region": view.region,
            "why": "first time this principal was seen with "
                   + ", ".join(f"{dim} {val}" for dim, val in new),
        })
