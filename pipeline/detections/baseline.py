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
    text = view.source_ip
    if text is not None and view.ipv4 is not None:
        # The usual case, as text: a dotted quad without leading zeros is already the
        # canonical form, so its /24 is its first three octets (no address object).
        return f"{text[:text.rindex('.')]}.0/24"
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


class _Principal:
    """What the cache knows of one principal's entries in the store.

    ``first``/``refreshed``: its ``:first`` entry's first_seen and last_seen;
    ``seen``: (dimension, value) -> last_seen of that entry. One principal's entries
    are looked up together, so they are kept together: one lookup in the big table per
    event, then a small dictionary, instead of a lookup per entry.
    """

    __slots__ = ("first", "refreshed", "seen")

    def __init__(self, first: float, refreshed: float) -> None:
        self.first = first
        self.refreshed = refreshed
        self.seen: dict[tuple[str, str], float] = {}


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
        # Principal -> its entries known to exist in the store (least recently used
        # first), and how many entries that is in all. An entry refreshed less than
        # ``_refresh_after`` ago cannot have expired, so the common case (a principal
        # repeating itself) costs no store round trip. New keys always go through
        # put_if_absent, so the cache never decides whether something fires.
        self._known: OrderedDict[str, _Principal] = OrderedDict()
        self._entries = 0
        self._cache_size = config.baseline_cache_size

    def _principal(self, subject: str, now: float) -> _Principal | None:
        known = self._known.get(subject)
        if known is None or now - known.refreshed >= self._refresh_after:
            return None
        self._known.move_to_end(subject)
        return known

    def _remember_principal(self, subject: str, first: float, last: float) -> _Principal:
        known = self._known.get(subject)
        if known is None:
            known = self._known[subject] = _Principal(first, last)
            self._entries += 1
        else:
            known.first, known.refreshed = first, last
            self._known.move_to_end(subject)
        self._evict()
        return known

    def _remember(self, subject: str, known: _Principal, dim: tuple[str, str],
                  last: float) -> None:
        if self._known.get(subject) is not known:
            return  # evicted while its entry was being written: nothing to count it in
        if dim not in known.seen:
            self._entries += 1
        known.seen[dim] = last
        self._evict()

    def _evict(self) -> None:
        while self._entries > self._cache_size and self._known:
            _, gone = self._known.popitem(last=False)
            self._entries -= 1 + len(gone.seen)

    async def _touch(self, key: str, now: float) -> tuple[bool, float, float | None]:
        """Record ``key`` at event time ``now``: (created by this call, first_seen, last_seen).

        last_seen is None when the entry is not known to exist (it expired between the
        two calls), so that it is not cached. Callers look in the cache first, so the
        common case awaits nothing.
        """
        # Not known here: most such keys are new, so try to create it first (one round trip).
        created = await self._store.put_if_absent(
            key, {"first_seen": now, "last_seen": now}, ttl=self._ttl)
        if created is not None:
            return True, now, now
        current = await self._store.get(key)
        if current is None:  # expired between the two calls
            return False, now, None
        first = float(current.value.get("first_seen", now))
        last = float(current.value.get("last_seen", 0.0))
        if now - last >= self._refresh_after:
            value: dict[str, Any] = dict(current.value, last_seen=now)
            # A lost race only means someone else refreshed it: nothing to do.
            await self._store.compare_and_set(key, current.version, value, ttl=self._ttl)
            last = now
        return False, first, last

    async def evaluate(self, view: CloudTrailView) -> Hit | None:
        # Untrusted (observe-only) events neither fire nor teach: otherwise records forged
        # into the queue could pre-train the baseline so real activity later looks known.
        if view.event.observe_only or not view.succeeded or view.service_originated:
            return None
        subject = view.subject
        if not subject:
            return None
        now = view.event.time.timestamp()
        known = self._principal(subject, now)
        if known is None:
            _, first, last = await self._touch(f"{PREFIX}{subject}:first", now)
            known = (self._remember_principal(subject, first, last) if last is not None
                     else _Principal(first, now))  # not cached: see _touch
        first = known.first
        learning = now - first < self._learning
        new: list[tuple[str, str]] = []
        for dim in _dimensions(view, self._dims):
            seen = known.seen.get(dim)
            if seen is not None and now - seen < self._refresh_after:
                continue
            created, _, last = await self._touch(f"{PREFIX}{subject}:{dim[0]}:{dim[1]}", now)
            if last is not None:
                self._remember(subject, known, dim, last)
            if created and not learning:
                new.append(dim)
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
