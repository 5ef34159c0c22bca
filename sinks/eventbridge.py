"""EventBridge sink: each item put on an event bus with ``PutEvents``.

Other automation subscribes with rules on ``source`` (``riposte`` by default) and
``detail-type`` (one per item kind: "Riposte Incident", "Riposte Detection",
"Riposte Containment Action", "Riposte Event"); ``detail`` is the item as every
sink serializes it. Requests hold at most 10 entries and 256 KB, counted the way
EventBridge counts them (time, source, detail-type, detail and resource ARNs);
an entry over 256 KB alone is rejected as ``entry_too_large``. ``PutEvents``
answers per entry, in request order, so failures are sorted entry by entry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pipeline.aws import AwsClients
from pipeline.context import RuntimeContext
from pipeline.models import ActionRecord, Item
from sinks import reasons
from sinks._aws_errors import (
    CallCounters,
    classify_code,
    healthcheck_error,
)
from sinks._items import encoded, item_time
from sinks._packing import Answer, pack, request_failed, send_packed
from sinks.aws_config import EventBridgeSinkConfig
from sinks.base import Rejected, SendResult

log = logging.getLogger(__name__)

OPERATION = "PutEvents"
MAX_ENTRIES = 10
MAX_REQUEST_BYTES = 256 * 1024
# EventBridge counts a Time field as 14 bytes whatever its value.
_TIME_BYTES = 14

DEFAULT_DETAIL_TYPES = {
    "incident": "Riposte Incident",
    "detection": "Riposte Detection",
    "action": "Riposte Containment Action",
    "event": "Riposte Event",
}


def resource_arns(item: Item) -> list[str]:
    if isinstance(item, ActionRecord):
        refs: Sequence[Any] = (item.resource,)
    else:
        refs = item.resources
    return [r.arn for r in refs if r.arn and r.arn.startswith("arn:")]


def entry_size(entry: dict[str, Any]) -> int:
    """The size EventBridge charges against the 256 KB request limit."""
    size = _TIME_BYTES if "Time" in entry else 0
    for key in ("Source", "DetailType", "Detail"):
        size += len(str(entry.get(key, "")).encode())
    size += sum(len(r.encode()) for r in entry.get("Resources", ()))
    return size


class EventBridgeSink:
    max_batch_items = MAX_ENTRIES

    def __init__(self, config: EventBridgeSinkConfig, aws: AwsClients) -> None:
        self.name = config.name
        self.config = config
        self.aws = aws
        self.region = config.region or aws.region
        self.detail_types: dict[str, str] = dict(DEFAULT_DETAIL_TYPES)
        for kind, detail_type in config.detail_types.items():
            self.detail_types[kind] = detail_type
        self._calls = CallCounters(self.name, OPERATION)

    def entry(self, item: Item) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "Source": self.config.source,
            "DetailType": self.detail_types[item.item_kind],
            "Detail": encoded(item).decode(),
            "EventBusName": self.config.event_bus,
        }
        when = item_time(item)
        if when is not None:
            entry["Time"] = when
        arns = resource_arns(item)
        if arns:
            entry["Resources"] = arns
        return entry

    async def send(self, batch: Sequence[Item]) -> SendResult:
        sized = []
        for item in batch:
            entry = self.entry(item)
            sized.append((item, entry, entry_size(entry)))
        requests, rejected = pack(sized, max_entries=MAX_ENTRIES, max_bytes=MAX_REQUEST_BYTES,
                                  sink=self.name, unit="request")
        return await send_packed(requests, rejected, self._put)

    async def _put(self, request: Sequence[tuple[Item, dict[str, Any]]]
                   ) -> tuple[list[Item], list[Item], list[Rejected], str]:
        client = await self.aws.client("events", region=self.region)
        items = [i for i, _ in request]
        try:
            response = await client.put_events(Entries=[e for _, e in request])
        except Exception as exc:
            return request_failed(exc, items, self._calls, sink=self.name,
                                  operation="PutEvents")
        results = list(response.get("Entries") or ())
        failed_count = int(response.get("FailedEntryCount") or 0)
        if len(results) != len(items):
            # Answers are matched to entries by position; a short answer cannot be matched,
            # and re-sending is safe for subscribers that key on the item id.
            self._calls.count("retry")
            log.warning("PutEvents answered %d entries for %d sent", len(results), len(items),
                        extra={"sink": self.name, "reason": "entries_mismatch"})
            return [], items, [], (f"{reasons.SERVER_ERROR}: PutEvents answered "
                                   f"{len(results)} entries for {len(items)}")
        self._calls.count("partial" if failed_count else "ok")
        answer = Answer()
        for item, result in zip(items, results, strict=True):
            code = result.get("ErrorCode")
            if not code and result.get("EventId"):
                answer.accepted([item])
                continue
            failure = classify_code(code, message=result.get("ErrorMessage", ""))
            log.warning("EventBridge entry failed", extra={
                "sink": self.name, "reason": failure.reason, "retry": failure.retry})
            answer.failed([item], failure)
        return answer.result()

    async def healthcheck(self) -> None:
        """DescribeEventBus: the bus exists and these credentials may see it."""
        try:
            client = await self.aws.client("events", region=self.region)
            await client.describe_event_bus(Name=self.config.event_bus)
        except Exception as exc:
            raise healthcheck_error(
                self.name, f"EventBridge bus {self.config.event_bus!r}", exc) from exc

    async def aclose(self) -> None:
        """Nothing to close: the AWS clients belong to the runtime context."""


def build(config: EventBridgeSinkConfig, ctx: RuntimeContext) -> EventBridgeSink:
    return EventBridgeSink(config, ctx.aws)
