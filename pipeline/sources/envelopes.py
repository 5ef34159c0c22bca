"""The decode stage: message bytes in, the JSON objects they carry out.

Security events reach a queue or stream wrapped in whatever delivered them:
EventBridge (the event itself), SNS (a notification whose ``Message`` is the
event as a string; raw delivery skips the wrapper), S3 event notifications
naming a gzip CloudTrail log file (or S3's EventBridge "Object Created" event for
a key under ``.../CloudTrail/``), CloudWatch Logs subscriptions (gzip,
``logEvents``), or Lambda-style batch envelopes (``Records`` of SQS / SNS /
Kinesis records). This stage peels those layers and emits one ``RawRecord`` per
innermost JSON object; the normalize stage decides what each object *is*.

What counts as an envelope is decided by a few key look-ups on the parsed
object, so the common case (an EventBridge event straight from SQS) costs one
``orjson.loads`` and three dict probes.

Every way a body can be bad has its own ``PermanentError`` reason (it becomes
the dead-letter reason), and every deliberate drop (the S3 test event, a
CloudWatch Logs control message) is counted in ``discarded{reason}``.

``RawRecord.envelope`` names the innermost shape: ``eventbridge``,
``s3-cloudtrail`` (records fetched from a log file named by an S3
notification; ``origin`` has ``s3_bucket`` and ``s3_key``), ``cloudtrail-file``
(a log file body delivered directly), ``cwlogs`` or ``raw``; the wrappers peeled
on the way (``sns``, ``lambda-sqs``, ``lambda-sns``, ``lambda-kinesis``, ``gzip``,
``eventbridge``) are listed in ``origin["via"]``.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import unquote_plus

import orjson

from pipeline import metrics
from pipeline.config import RiposteConfig
from pipeline.context import RuntimeContext
from pipeline.errors import PermanentError, RetriableError
from pipeline.models import RawRecord
from pipeline.sources.base import Message
from pipeline.sources.s3 import GZIP_MAGIC, S3ObjectFetcher, gunzip_capped

log = logging.getLogger(__name__)

COMPONENT = "decode"
# Deeper than any AWS event shape by far; a body nested deeper is an attack or a bug.
MAX_DEPTH = 64
# SNS around SQS around SNS...: real deliveries peel at most two or three layers.
MAX_ENVELOPE_LEVELS = 4
# A compressed message may inflate to at most this many times the message limit.
_INFLATE_FACTOR = 32

_LAMBDA_SOURCES = frozenset({"aws:sqs", "aws:sns", "aws:kinesis", "aws:s3"})

# (payload, envelope, origin) before the RawRecord is made.
_Out = tuple[Mapping[str, Any], str, dict[str, Any]]


class ObjectFetcher(Protocol):
    async def fetch_gunzipped(self, bucket: str, key: str, *, max_bytes: int,
                              region: str | None = None) -> bytes: ...


def _poison(message: str, reason: str) -> PermanentError:
    return PermanentError(message, reason=reason, component=COMPONENT)


def depth_exceeds(value: Any, limit: int) -> bool:
    """True when containers in ``value`` nest more than ``limit`` levels.

    Only runs when a body has more openers than ``limit`` (most events have far
    fewer); ``type() is`` checks because orjson makes exact dicts and lists.
    """
    if type(value) is not dict and type(value) is not list:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > limit:
            return True
        for child in node.values() if type(node) is dict else node:
            kind = type(child)
            if kind is dict or kind is list:
                push((child, depth + 1))
    return False


class DecodeStage:
    """Stage ``decode``: ``Message`` -> ``list[RawRecord]``; other items pass through."""

    name = "decode"

    def __init__(self, *, max_message_bytes: int, max_object_bytes: int,
                 fetcher: ObjectFetcher | None = None, max_depth: int = MAX_DEPTH) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_object_bytes = max_object_bytes
        self.max_inflated_bytes = min(max_object_bytes, max_message_bytes * _INFLATE_FACTOR)
        self.fetcher = fetcher
        self.max_depth = max_depth
        self._test_event = metrics.discarded("s3_test_event")
        self._control = metrics.discarded("cwlogs_control_message")

    async def process(self, item: Any) -> list[Any]:
        if not isinstance(item, Message):
            return [item]
        body = item.body
        if len(body) > self.max_message_bytes:
            raise _poison(f"body of {len(body)} bytes is over the limit of "
                          f"{self.max_message_bytes}", "oversized")
        origin: dict[str, Any] = {"source": item.source}
        outs = await self._decode_bytes(body, origin, (), 0)
        message_id = item.id
        received_at = item.received_at
        return [RawRecord(payload=payload, message_id=message_id, index=i, envelope=envelope,
                          origin=orig, received_at=received_at)
                for i, (payload, envelope, orig) in enumerate(outs)]

    # --- parsing ----------------------------------------------------------------------------
    def _loads(self, data: bytes | str) -> Any:
        """One ``orjson.loads`` with each failure given its own reason."""
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise self._json_error(data, exc) from None
        if isinstance(value, dict | list) and self._may_be_too_deep(data) and depth_exceeds(
                value, self.max_depth):
            raise _poison(f"JSON nested deeper than {self.max_depth} levels", "too_deep")
        return value

    def _may_be_too_deep(self, data: bytes | str) -> bool:
        """Cheap guard (C-speed counts): fewer openers than the limit cannot nest deeper."""
        if isinstance(data, bytes):
            return data.count(b"{") + data.count(b"[") > self.max_depth
        return data.count("{") + data.count("[") > self.max_depth

    @staticmethod
    def _json_error(data: bytes | str, exc: orjson.JSONDecodeError) -> PermanentError:
        text = exc.msg
        if "depth limit" in text or "recursion" in text.lower():
            return _poison(f"JSON nested too deeply: {exc}", "too_deep")
        if "UTF-8" in text:
            return _poison(f"body is not valid UTF-8: {exc}", "invalid_utf8")
        if isinstance(data, bytes):
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as err:
                return _poison(f"body is not valid UTF-8: {err}", "invalid_utf8")
        return _poison(f"invalid JSON: {exc}", "invalid_json")

    async def _decode_bytes(self, data: bytes | str, origin: dict[str, Any],
                            via: tuple[str, ...], level: int) -> list[_Out]:
        if isinstance(data, bytes) and data[:2] == GZIP_MAGIC:
            data = gunzip_capped(data, self.max_inflated_bytes, "gzip payload")
            via = (*via, "gzip")
        value = self._loads(data)
        if not isinstance(value, dict):
            raise _poison(f"expected a JSON object, got {type(value).__name__}",
                          "not_an_object")
        return await self._decode_object(value, origin, via, level)

    # --- envelopes --------------------------------------------------------------------------
    async def _decode_object(self, obj: dict[str, Any], origin: dict[str, Any],
                             via: tuple[str, ...], level: int) -> list[_Out]:
        if level > MAX_ENVELOPE_LEVELS:
            raise _poison(f"more than {MAX_ENVELOPE_LEVELS} nested envelopes",
                          "too_many_envelopes")
        if "detail-type" in obj and "source" in obj:
            if obj["source"] == "aws.s3" and _is_cloudtrail_object_created(obj):
                return await self._s3_eventbridge(obj, origin, via)
            return [(obj, "eventbridge", _with_via(origin, via))]
        if obj.get("Type") == "Notification" and "TopicArn" in obj:
            return await self._sns(obj, origin, via, level, "sns")
        records = obj.get("Records")
        if isinstance(records, list):
            return await self._records(obj, records, origin, via, level)
        if obj.get("Event") == "s3:TestEvent":
            self._test_event.inc()
            log.info("dropped the S3 test event", extra={"bucket": obj.get("Bucket")})
            return []
        if "logEvents" in obj and "messageType" in obj:
            return self._cwlogs(obj, origin, via)
        return [(obj, "raw", _with_via(origin, via))]

    async def _sns(self, note: Mapping[str, Any], origin: dict[str, Any],
                   via: tuple[str, ...], level: int, name: str) -> list[_Out]:
        inner = note.get("Message")
        if not isinstance(inner, str):
            raise _poison("SNS notification without a string Message", "sns_invalid_message")
        try:
            value = self._loads(inner)
        except PermanentError as err:
            if err.reason == "too_deep":
                raise
            raise _poison(f"SNS Message is not JSON: {err.message}",
                          "sns_invalid_message") from None
        if not isinstance(value, dict):
            raise _poison("SNS Message is not a JSON object", "sns_invalid_message")
        sub = {**origin, "sns_topic_arn": note.get("TopicArn"),
               "sns_message_id": note.get("MessageId")}
        return await self._decode_object(value, sub, (*via, name), level + 1)

    async def _records(self, obj: dict[str, Any], records: list[Any], origin: dict[str, Any],
                       via: tuple[str, ...], level: int) -> list[_Out]:
        first = records[0] if records else None
        if not isinstance(first, dict):
            if not records:
                metrics.discarded("empty_records").inc()
                return []
            return [(obj, "raw", _with_via(origin, via))]
        kind = first.get("eventSource") or first.get("EventSource")
        if kind in _LAMBDA_SOURCES:
            return await self._batch(records, origin, via, level)
        if "eventName" in first and ("eventTime" in first or "eventVersion" in first):
            return _cloudtrail_records(records, "cloudtrail-file", _with_via(origin, via))
        return [(obj, "raw", _with_via(origin, via))]

    async def _batch(self, records: list[Any], origin: dict[str, Any], via: tuple[str, ...],
                     level: int) -> list[_Out]:
        """A Lambda-style batch or an S3 notification: decode every record on its own.

        A bad record among good ones is counted and dropped so that its neighbours
        are not lost with it; when no record decodes the first error is raised, so
        a single bad inner body still dead-letters the message with its reason.
        """
        outs: list[_Out] = []
        first_error: PermanentError | None = None
        for record in records:
            try:
                outs.extend(await self._batch_record(record, origin, via, level))
            except PermanentError as err:
                if len(records) == 1:
                    raise
                first_error = first_error or err
                metrics.discarded(f"batch_record_{err.reason}").inc()
                log.warning("dropped a bad record of a batch envelope",
                            extra={"reason": err.reason, "error": err.message[:300]})
        if not outs and first_error is not None:
            raise first_error
        return outs

    async def _batch_record(self, record: Any, origin: dict[str, Any], via: tuple[str, ...],
                            level: int) -> list[_Out]:
        if not isinstance(record, dict):
            raise _poison("batch record is not an object", "invalid_batch_record")
        kind = record.get("eventSource") or record.get("EventSource")
        if kind == "aws:s3":
            return await self._s3_notification(record, origin, via)
        if kind == "aws:sqs":
            body = record.get("body")
            if not isinstance(body, str):
                raise _poison("SQS record without a string body", "invalid_batch_record")
            sub = {**origin, "batch_message_id": record.get("messageId"),
                   "event_source_arn": record.get("eventSourceARN")}
            return await self._decode_bytes(body, sub, (*via, "lambda-sqs"), level + 1)
        if kind == "aws:sns":
            note = record.get("Sns")
            if not isinstance(note, dict):
                raise _poison("SNS record without Sns", "invalid_batch_record")
            return await self._sns(note, origin, via, level, "lambda-sns")
        if kind == "aws:kinesis":
            data = (record.get("kinesis") or {}).get("data")
            if not isinstance(data, str):
                raise _poison("Kinesis record without data", "invalid_batch_record")
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _poison(f"Kinesis data is not base64: {exc}", "bad_base64") from None
            sub = {**origin, "batch_message_id": record.get("eventID"),
                   "event_source_arn": record.get("eventSourceARN")}
            return await self._decode_bytes(raw, sub, (*via, "lambda-kinesis"), level + 1)
        raise _poison(f"unknown batch record source {kind!r}", "invalid_batch_record")

    async def _s3_eventbridge(self, event: dict[str, Any], origin: dict[str, Any],
                              via: tuple[str, ...]) -> list[_Out]:
        """S3 "Object Created" through EventBridge, for a CloudTrail log file: same as a
        notification (key not URL-encoded here)."""
        detail = event["detail"]
        return await self._fetch_cloudtrail(detail["bucket"]["name"], detail["object"]["key"],
                                            event.get("region"), origin, (*via, "eventbridge"))

    async def _s3_notification(self, record: dict[str, Any], origin: dict[str, Any],
                               via: tuple[str, ...]) -> list[_Out]:
        s3: Any = record.get("s3")
        try:
            bucket = s3["bucket"]["name"]
            key = unquote_plus(s3["object"]["key"])
        except (KeyError, TypeError) as exc:
            raise _poison(f"S3 notification without bucket/key: {exc!r}",
                          "invalid_s3_notification") from None
        if not isinstance(bucket, str) or not bucket or not key:
            raise _poison("S3 notification with an empty bucket or key",
                          "invalid_s3_notification")
        event_name = str(record.get("eventName", ""))
        if not event_name.startswith("ObjectCreated"):
            metrics.discarded("s3_event_not_created").inc()
            return []
        if "/CloudTrail-Digest/" in key or key.endswith("/"):
            # Digest files prove integrity; they hold no events.
            metrics.discarded("s3_not_a_log_file").inc()
            return []
        return await self._fetch_cloudtrail(bucket, key, record.get("awsRegion"), origin, via)

    async def _fetch_cloudtrail(self, bucket: str, key: str, region: str | None,
                                origin: dict[str, Any], via: tuple[str, ...]) -> list[_Out]:
        if self.fetcher is None:
            raise RetriableError("no S3 client configured to fetch notified objects",
                                 reason="s3_unavailable", component=COMPONENT)
        data = await self.fetcher.fetch_gunzipped(
            bucket, key, max_bytes=self.max_object_bytes, region=region)
        where = f"s3://{bucket}/{key}"
        try:
            value = self._loads(data)
        except PermanentError as err:
            err.message = f"{where}: {err.message}"
            raise
        records = value.get("Records") if isinstance(value, dict) else None
        if not isinstance(records, list):
            raise _poison(f"{where} is not a CloudTrail log file (no Records list)",
                          "not_cloudtrail")
        sub = {**origin, "s3_bucket": bucket, "s3_key": key}
        if via:
            sub["via"] = list(via)
        return _cloudtrail_records(records, "s3-cloudtrail", sub)

    def _cwlogs(self, obj: dict[str, Any], origin: dict[str, Any],
                via: tuple[str, ...]) -> list[_Out]:
        kind = obj.get("messageType")
        if kind == "CONTROL_MESSAGE":
            self._control.inc()
            return []
        events = obj.get("logEvents")
        if kind != "DATA_MESSAGE" or not isinstance(events, list):
            raise _poison(f"CloudWatch Logs payload of type {kind!r}", "cwlogs_invalid")
        sub = {**origin, "log_group": obj.get("logGroup"), "log_stream": obj.get("logStream"),
               "owner": obj.get("owner")}
        if via:
            sub["via"] = list(via)
        outs: list[_Out] = []
        for event in events:
            message = event.get("message") if isinstance(event, dict) else None
            try:
                value = self._loads(message) if isinstance(message, str) else None
            except PermanentError:
                value = None
            if not isinstance(value, dict):
                metrics.discarded("cwlogs_not_json").inc()
                continue
            outs.append((value, "cwlogs", {**sub, "log_event_id": event.get("id")}))
        return outs


def _is_cloudtrail_object_created(event: dict[str, Any]) -> bool:
    """An EventBridge S3 "Object Created" event for a CloudTrail log file (not a digest)."""
    if event.get("detail-type") != "Object Created":
        return False
    detail = event.get("detail")
    if not isinstance(detail, dict):
        return False
    bucket, obj = detail.get("bucket"), detail.get("object")
    if not isinstance(bucket, dict) or not isinstance(obj, dict):
        return False
    name, key = bucket.get("name"), obj.get("key")
    return (isinstance(name, str) and bool(name) and isinstance(key, str)
            and "/CloudTrail/" in key and key.endswith(".json.gz"))


def _with_via(origin: dict[str, Any], via: tuple[str, ...]) -> dict[str, Any]:
    return {**origin, "via": list(via)} if via else origin


def _cloudtrail_records(records: list[Any], envelope: str,
                        origin: dict[str, Any]) -> list[_Out]:
    outs: list[_Out] = []
    for record in records:
        if isinstance(record, dict):
            outs.append((record, envelope, origin))
        else:
            metrics.discarded("cloudtrail_record_not_object").inc()
    return outs


def build(config: RiposteConfig, ctx: RuntimeContext) -> DecodeStage:
    service = config.service
    return DecodeStage(max_message_bytes=service.max_message_bytes,
                       max_object_bytes=service.max_object_bytes,
                       fetcher=S3ObjectFetcher(ctx.aws, region=service.region))
