"""How an item reads to a person or an intake: its time, title, severity, resource, actions.

Every sink that shows items (chat webhooks) or indexes them by time (Splunk,
Datadog) asks here, so an incident has the same title and the same time
everywhere it lands.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from pipeline.models import (
    ActionRecord,
    ActionStatus,
    Event,
    Incident,
    Item,
    ResourceRef,
    item_severity,
)
from pipeline.serde import dumps

# Recently encoded items: the batcher's size estimate and every sink the item is routed
# to share one serialization. Keyed by identity and holding the item itself, so an id
# cannot be reused while its entry lives; bounded, oldest evicted first. An OrderedDict:
# evicting a plain dict's first key with ``next(iter(d))`` rescans the slots already
# emptied at its front, which grows with every eviction until the dict is rebuilt.
_ENCODED: OrderedDict[int, tuple[Item, bytes]] = OrderedDict()
_ENCODED_MAX = 2048

# Shown for actions whose rollback hint is empty.
ROLLBACK_COMMAND = "riposte rollback {action_id}"


def encoded(item: Item) -> bytes:
    """``serde.dumps(item)``, computed once per item however many sinks want it."""
    key = id(item)
    hit = _ENCODED.get(key)
    if hit is not None and hit[0] is item:
        return hit[1]
    data = dumps(item)
    if len(_ENCODED) >= _ENCODED_MAX:
        _ENCODED.popitem(last=False)
    _ENCODED[key] = (item, data)
    return data


def item_time(item: Item) -> datetime | None:
    """The event time of an item: when it happened, not when Riposte saw it."""
    if isinstance(item, Event):
        return item.time
    if isinstance(item, Incident):
        return item.last_seen
    return item.applied_at or item.planned_at


def item_epoch(item: Item, default: float) -> float:
    when = item_time(item)
    return when.timestamp() if when is not None else default


def item_title(item: Item) -> str:
    if isinstance(item, Event):
        return item.title or item.type
    if isinstance(item, Incident):
        return item.title
    return f"{item.kind} on {item.resource.type} {item.resource.id}: {item.status}"


def item_resource(item: Item) -> ResourceRef | None:
    if isinstance(item, Event):
        return item.primary_resource
    if isinstance(item, Incident):
        return item.resources[0] if item.resources else None
    return item.resource


def describe_resource(ref: ResourceRef | None) -> str:
    if ref is None:
        return "-"
    where = "/".join(p for p in (ref.account, ref.region) if p)
    return f"{ref.type} {ref.id}" + (f" ({where})" if where else "")


@dataclass(frozen=True, slots=True)
class ActionLine:
    action_id: str
    kind: str
    status: str
    mode: str
    reason: str
    rollback: str | None  # the command that undoes it, when it changed something


@dataclass(frozen=True, slots=True)
class Summary:
    """The fields a chat message shows, whatever the platform."""

    kind: str
    title: str
    severity: str
    resource: str
    account: str | None
    region: str | None
    score: int | None
    reasons: tuple[str, ...]
    actions: tuple[ActionLine, ...]
    mitre: tuple[str, ...]
    item_id: str
    time: datetime | None

    @property
    def awaiting_approval(self) -> tuple[ActionLine, ...]:
        return tuple(a for a in self.actions if a.status == ActionStatus.AWAITING_APPROVAL)

    @property
    def taken(self) -> tuple[ActionLine, ...]:
        return tuple(a for a in self.actions if a.status != ActionStatus.AWAITING_APPROVAL)


_UNDOABLE = frozenset({ActionStatus.APPLIED, ActionStatus.VERIFIED})


def action_line(action: ActionRecord) -> ActionLine:
    rollback = None
    if action.status in _UNDOABLE:
        rollback = action.rollback_hint or ROLLBACK_COMMAND.format(action_id=action.id)
    return ActionLine(action.id, action.kind, str(action.status), str(action.mode),
                      action.reason, rollback)


def summarize(item: Item) -> Summary:
    score: int | None = None
    reasons: tuple[str, ...] = ()
    actions: tuple[ActionLine, ...] = ()
    mitre: tuple[str, ...] = ()
    account = region = None
    if isinstance(item, Incident):
        if item.score is not None:
            score = item.score.value
            reasons = tuple(f"{r.factor} (+{r.points:g}): {r.detail}" for r in item.score.reasons)
        actions = tuple(action_line(a) for a in item.actions)
        mitre = item.mitre
        account, region = item.account, item.region
    elif isinstance(item, Event):
        score = item.severity.score
        mitre = item.mitre or (item.detection.mitre if item.detection else ())
        account, region = item.account, item.region
        if item.detection is not None and item.detection.description:
            reasons = (item.detection.description,)
    else:
        actions = (action_line(item),)
        account, region = item.resource.account, item.resource.region
        if item.reason:
            reasons = (item.reason,)
    return Summary(
        kind=item.item_kind,
        title=item_title(item),
        severity=str(item_severity(item)) if not isinstance(item, ActionRecord) else "-",
        resource=describe_resource(item_resource(item)),
        account=account,
        region=region,
        score=score,
        reasons=reasons,
        actions=actions,
        mitre=mitre,
        item_id=item.id,
        time=item_time(item),
    )
