"""SNS sink: each item published to a topic with ``PublishBatch``.

The message body is the item as every sink serializes it (:func:`pipeline.serde.dumps`);
message attributes carry its kind, severity and incident so subscribers filter
with a subscription filter policy instead of parsing bodies. Requests hold at
most 10 entries and 256 KiB of messages and attributes (SNS counts both); an
entry that alone exceeds 256 KiB is rejected as ``entry_too_large``. FIFO topics
get a ``MessageGroupId`` per incident (or resource), keeping an incident's
revisions in order, and the item revision as ``MessageDeduplicationId``, so a
redelivered message is dropped by SNS itself within its five-minute window.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from typing import Any

from pipeline.aws import AwsClients
from pipeline.context import RuntimeContext
from pipeline.models import ActionRecord, Event, Incident, Item, item_id, item_severity
from sinks._aws_errors import (
    CallCounters,
    classify_code,
    healthcheck_error,
)
from sinks._items import encoded
from sinks._packing import Answer, pack, request_failed, send_packed
from sinks.aws_config import SnsSinkConfig
from sinks.base import Rejected, SendResult

log = logging.getLogger(__name__)

OPERATION = "PublishBatch"
MAX_ENTRIES = 10
MAX_REQUEST_BYTES = 256 * 1024
MAX_SUBJECT = 100
_FIFO_ID = re.compile(r"^[A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}$")
_PRINTABLE = re.compile(r"[^\x20-\x7e]+")


def fifo_id(value: str) -> str:
    """A valid FIFO group / deduplication id: the value itself or, if it cannot be, a hash."""
    if _FIFO_ID.match(value):
        return value
    return hashlib.sha256(value.encode()).hexdigest()


def subject_for(item: Item, prefix: str) -> str:
    """ASCII, one line, at most 100 characters, starting with a printable character."""
    if isinstance(item, Incident | Event):
        title = item.title
    else:
        title = f"{item.kind} on {item.resource.id} ({item.status.value})"
    text = f"{prefix} {item_severity(item).value.upper()} {item.item_kind}: {title}"
    text = _PRINTABLE.sub(" ", text).strip()
    if len(text) > MAX_SUBJECT:
        text = text[: MAX_SUBJECT - 3].rstrip() + "..."
    return text or "Riposte"


def attributes_for(item: Item) -> dict[str, str]:
    attrs = {
        "riposte.kind": item.item_kind,
        "riposte.severity": item_severity(item).value,
        "riposte.item_id": item_id(item),
    }
    if isinstance(item, Incident):
        attrs["riposte.incident_id"] = item.id
        if item.resources:
            attrs["riposte.resource"] = item.resources[0].key
    elif isinstance(item, ActionRecord):
        attrs["riposte.incident_id"] = item.incident_id
        attrs["riposte.resource"] = item.resource.key
        attrs["riposte.action_status"] = item.status.value
    elif item.primary_resource is not None:
        attrs["riposte.resource"] = item.primary_resource.key
    return {k: v for k, v in attrs.items() if v}


def group_key(item: Item) -> str:
    if isinstance(item, Incident):
        return item.id
    if isinstance(item, ActionRecord):
        return item.incident_id
    return item.lane_key


class SnsSink:
    max_batch_items = MAX_ENTRIES

    def __init__(self, config: SnsSinkConfig, aws: AwsClients) -> None:
        self.name = config.name
        self.config = config
        self.aws = aws
        self.topic_arn = config.topic_arn
        self.region = config.region or config.topic_arn.split(":")[3]
        self.fifo = config.topic_arn.endswith(".fifo")
        self._calls = CallCounters(self.name, OPERATION)

    def entry(self, item: Item, index: int) -> tuple[dict[str, Any], int]:
        """The PublishBatch entry and the bytes SNS counts for it (message + attributes)."""
        message = encoded(item).decode()
        attrs = attributes_for(item)
        size = len(message.encode()) + sum(
            len(k.encode()) + len("String") + len(v.encode()) for k, v in attrs.items())
        entry: dict[str, Any] = {
            "Id": f"m{index}",
            "Message": message,
            "Subject": subject_for(item, self.config.subject_prefix),
            "MessageAttributes": {k: {"DataType": "String", "StringValue": v}
                                  for k, v in attrs.items()},
        }
        if self.fifo:
            entry["MessageGroupId"] = fifo_id(group_key(item))
            entry["MessageDeduplicationId"] = fifo_id(item_id(item))
        return entry, size

    async def send(self, batch: Sequence[Item]) -> SendResult:
        sized = [(item, *self.entry(item, index)) for index, item in enumerate(batch)]
        requests, rejected = pack(sized, max_entries=MAX_ENTRIES, max_bytes=MAX_REQUEST_BYTES,
                                  sink=self.name, unit="message")
        return await send_packed(requests, rejected, self._publish)

    async def _publish(self, request: Sequence[tuple[Item, dict[str, Any]]]
                       ) -> tuple[list[Item], list[Item], list[Rejected], str]:
        client = await self.aws.client("sns", region=self.region)
        try:
            response = await client.publish_batch(
                TopicArn=self.topic_arn, PublishBatchRequestEntries=[e for _, e in request])
        except Exception as exc:
            return request_failed(exc, [i for i, _ in request], self._calls, sink=self.name,
                                  operation="PublishBatch")
        failed = {f.get("Id"): f for f in response.get("Failed") or ()}
        self._calls.count("partial" if failed else "ok")
        answer = Answer()
        for item, entry in request:
            fail = failed.get(entry["Id"])
            if fail is None:
                answer.accepted([item])
                continue
            failure = classify_code(fail.get("Code"), sender_fault=fail.get("SenderFault"),
                                    message=fail.get("Message", ""))
            log.warning("SNS entry failed", extra={
                "sink": self.name, "reason": failure.reason, "retry": failure.retry})
            answer.failed([item], failure)
        return answer.result()

    async def healthcheck(self) -> None:
        """GetTopicAttributes: the topic exists and these credentials may see it."""
        try:
            client = await self.aws.client("sns", region=self.region)
            await client.get_topic_attributes(TopicArn=self.topic_arn)
        except Exception as exc:
            raise healthcheck_error(self.name, f"SNS topic {self.topic_arn}", exc) from exc

    async def aclose(self) -> None:
        """Nothing to close: the AWS clients belong to the runtime context."""


def build(config: SnsSinkConfig, ctx: RuntimeContext) -> SnsSink:
    return SnsSink(config, ctx.aws)
