"""The decode stage over real envelope shapes and every kind of bad body.

Envelope fixtures are the published powertools (MIT-0) and SEKOIA (MIT) samples in
tests/fixtures/envelopes (see PROVENANCE.md). S3 objects come from an in-memory
``ObjectFetcher`` here; the integration tests fetch them from a moto bucket.
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import metrics
from pipeline.errors import PermanentError, RiposteError
from pipeline.models import RawRecord
from pipeline.sources.base import Message
from pipeline.sources.envelopes import MAX_DEPTH, DecodeStage, depth_exceeds
from pipeline.sources.s3 import classify_client_error, gunzip_capped
from tests.conftest import FIXTURES, shared_samples_or_skip

ENVELOPES = FIXTURES / "envelopes"
MAX_MESSAGE = 64 * 1024
MAX_OBJECT = 256 * 1024

CT_RECORD_A = {"eventVersion": "1.08", "eventSource": "iam.amazonaws.com",
               "eventName": "CreateUser", "eventTime": "2022-02-21T10:15:00Z",
               "awsRegion": "eu-west-2", "recipientAccountId": "111111111111"}
CT_RECORD_B = {**CT_RECORD_A, "eventName": "AttachUserPolicy"}


class MemoryObjects:
    """An ``ObjectFetcher`` over a dict, with the real inflate-and-cap code path."""

    def __init__(self, objects: dict[tuple[str, str], bytes]) -> None:
        self.objects = objects
        self.fetched: list[tuple[str, str, str | None]] = []

    async def fetch_gunzipped(self, bucket: str, key: str, *, max_bytes: int,
                              region: str | None = None) -> bytes:
        self.fetched.append((bucket, key, region))
        if (bucket, key) not in self.objects:
            raise PermanentError(f"s3://{bucket}/{key} missing", reason="s3_object_missing")
        return gunzip_capped(self.objects[bucket, key], max_bytes, f"s3://{bucket}/{key}")


def fixture(name: str) -> bytes:
    return (ENVELOPES / name).read_bytes()


def message(body: bytes | str, mid: str = "m-1") -> Message:
    data = body.encode() if isinstance(body, str) else body
    return Message(id=mid, body=data, source="test", received_at=1_700_000_000.0)


def stage(objects: dict[tuple[str, str], bytes] | None = None) -> DecodeStage:
    return DecodeStage(max_message_bytes=MAX_MESSAGE, max_object_bytes=MAX_OBJECT,
                       fetcher=MemoryObjects(objects or {}))


def sns(inner: Any, *, raw_message: str | None = None) -> bytes:
    """A notification as SNS delivers it to SQS with raw delivery off."""
    return orjson.dumps({
        "Type": "Notification",
        "MessageId": "95df01b4-ee98-5cb9-9903-4c221d41eb5e",
        "TopicArn": "arn:aws:sns:us-east-2:123456789012:security",
        "Message": raw_message if raw_message is not None else orjson.dumps(inner).decode(),
        "Timestamp": "2019-01-02T12:45:07.000Z",
        "SignatureVersion": "1",
    })


def s3_notification(bucket: str, key: str, event_name: str = "ObjectCreated:Put") -> bytes:
    note = json.loads(fixture("sekoia-sqs-body-s3-notification-cloudtrail-object.json"))
    record = note["Records"][0]
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["object"]["key"] = key
    record["eventName"] = event_name
    return orjson.dumps(note)


def cwlogs(message_type: str, messages: list[str]) -> bytes:
    payload = {"messageType": message_type, "owner": "123456789012",
               "logGroup": "aws-cloudtrail-logs", "logStream": "123456789012_CloudTrail_us-east-1",
               "subscriptionFilters": ["riposte"],
               "logEvents": [{"id": str(i), "timestamp": 1_700_000_000_000, "message": m}
                             for i, m in enumerate(messages)]}
    return gzip.compress(orjson.dumps(payload))


def nested(depth: int) -> bytes:
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


async def decode(body: bytes | str, objects: dict[tuple[str, str], bytes] | None = None
                 ) -> list[RawRecord]:
    out = await stage(objects).process(message(body))
    records = [r for r in out if isinstance(r, RawRecord)]
    assert records == out
    return records


def discarded(reason: str) -> float:
    return metrics.value(metrics.DISCARDED, reason=reason)


# --- the published envelope samples ----------------------------------------------------------
async def test_eventbridge_event_is_one_record_with_the_whole_event() -> None:
    body = fixture("powertools-eventBridgeEvent.json")
    (record,) = await decode(body)
    assert record.envelope == "eventbridge"
    assert record.payload == json.loads(body)
    assert record.payload["detail-type"] == "EC2 Instance State-change Notification"
    assert record.message_id == "m-1" and record.index == 0
    assert record.received_at == 1_700_000_000.0
    assert record.origin["source"] == "test"


async def test_lambda_sqs_batch_keeps_json_bodies_and_counts_the_text_one() -> None:
    before = discarded("batch_record_invalid_json")
    records = await decode(fixture("powertools-sqsEvent.json"))
    assert [r.payload for r in records] == [{"message": "foo1"}]
    assert records[0].envelope == "raw"
    assert records[0].origin["via"] == ["lambda-sqs"]
    assert records[0].origin["batch_message_id"] == "2e1424d4-f796-459a-8184-9c92662be6da"
    assert discarded("batch_record_invalid_json") == before + 1


async def test_lambda_kinesis_batch_decodes_base64_data() -> None:
    (record,) = await decode(fixture("powertools-kinesisStreamEventOneRecord.json"))
    assert record.payload == {"message": "test message", "username": "test"}
    assert record.origin["via"] == ["lambda-kinesis"]
    assert record.origin["event_source_arn"].endswith(":stream/lambda-stream")


async def test_lambda_sns_batch_around_plain_text_is_poison() -> None:
    with pytest.raises(PermanentError) as info:
        await decode(fixture("powertools-snsEvent.json"))
    assert info.value.reason == "sns_invalid_message"


async def test_s3_test_event_is_dropped_and_counted() -> None:
    before = discarded("s3_test_event")
    assert await decode(fixture("sekoia-sqs-body-s3-testevent.json")) == []
    assert discarded("s3_test_event") == before + 1


async def test_s3_notification_fetches_the_cloudtrail_file() -> None:
    note = json.loads(fixture("sekoia-sqs-body-s3-notification-cloudtrail-object.json"))
    bucket = note["Records"][0]["s3"]["bucket"]["name"]
    key = note["Records"][0]["s3"]["object"]["key"]
    objects = {(bucket, key): gzip.compress(orjson.dumps({"Records": [CT_RECORD_A,
                                                                      CT_RECORD_B]}))}
    fetcher = MemoryObjects(objects)
    s = DecodeStage(max_message_bytes=MAX_MESSAGE, max_object_bytes=MAX_OBJECT, fetcher=fetcher)
    records = await s.process(message(fixture(
        "sekoia-sqs-body-s3-notification-cloudtrail-object.json")))
    assert [r.payload["eventName"] for r in records] == ["CreateUser", "AttachUserPolicy"]
    assert [r.index for r in records] == [0, 1]
    assert {r.envelope for r in records} == {"s3-cloudtrail"}
    assert records[0].origin["s3_bucket"] == bucket and records[0].origin["s3_key"] == key
    assert fetcher.fetched == [(bucket, key, "eu-west-2")]


async def test_s3_notification_key_is_url_decoded() -> None:
    key = "AWSLogs/1/CloudTrail/eu-west-2/2022/a b+c.json.gz"
    objects = {("bkt", key): gzip.compress(orjson.dumps({"Records": [CT_RECORD_A]}))}
    records = await decode(s3_notification("bkt", "AWSLogs/1/CloudTrail/eu-west-2/2022/"
                                           "a+b%2Bc.json.gz"), objects)
    assert records[0].origin["s3_key"] == key


@pytest.mark.parametrize(("event_name", "key", "reason"), [
    ("ObjectRemoved:Delete", "AWSLogs/1/CloudTrail/x.json.gz", "s3_event_not_created"),
    ("ObjectCreated:Put", "AWSLogs/1/CloudTrail-Digest/eu-west-2/x.json.gz",
     "s3_not_a_log_file"),
    ("ObjectCreated:Put", "AWSLogs/1/CloudTrail/", "s3_not_a_log_file"),
])
async def test_s3_notifications_without_a_log_file_are_dropped(event_name: str, key: str,
                                                               reason: str) -> None:
    before = discarded(reason)
    assert await decode(s3_notification("bkt", key, event_name)) == []
    assert discarded(reason) == before + 1


async def test_sns_around_an_eventbridge_event() -> None:
    event = json.loads(fixture("powertools-eventBridgeEvent.json"))
    (record,) = await decode(sns(event))
    assert record.envelope == "eventbridge"
    assert record.payload == event
    assert record.origin["via"] == ["sns"]
    assert record.origin["sns_topic_arn"] == "arn:aws:sns:us-east-2:123456789012:security"


async def test_sns_around_an_s3_notification() -> None:
    objects = {("bkt", "k.json.gz"): gzip.compress(orjson.dumps({"Records": [CT_RECORD_A]}))}
    inner = json.loads(s3_notification("bkt", "k.json.gz"))
    (record,) = await decode(sns(inner), objects)
    assert record.envelope == "s3-cloudtrail"
    assert record.origin["via"] == ["sns"]


def s3_object_created(bucket: str, key: str) -> bytes:
    """S3's "Object Created" event as EventBridge delivers it (shape from the S3 docs)."""
    return orjson.dumps({
        "version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": "Object Created", "source": "aws.s3", "account": "111122223333",
        "time": "2021-11-12T00:00:00Z", "region": "ca-central-1",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {"version": "0", "bucket": {"name": bucket},
                   "object": {"key": key, "size": 5, "etag": "b1946ac92492d2347c6235b4d2611184",
                              "sequencer": "00617F08299329D189"},
                   "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012",
                   "source-ip-address": "1.2.3.4", "reason": "PutObject"},
    })


async def test_eventbridge_object_created_for_a_cloudtrail_file_is_fetched() -> None:
    key = "AWSLogs/111122223333/CloudTrail/ca-central-1/2021/11/12/f.json.gz"
    objects = {("trail", key): gzip.compress(orjson.dumps({"Records": [CT_RECORD_A]}))}
    (record,) = await decode(s3_object_created("trail", key), objects)
    assert record.envelope == "s3-cloudtrail" and record.payload == CT_RECORD_A
    assert record.origin["via"] == ["eventbridge"]
    # Any other object stays an ordinary EventBridge event for normalize.
    (other,) = await decode(s3_object_created("trail", "uploads/photo.jpg"), objects)
    assert other.envelope == "eventbridge"


async def test_cloudtrail_file_body_splits_into_records() -> None:
    records = await decode(orjson.dumps({"Records": [CT_RECORD_A, CT_RECORD_B]}))
    assert [r.envelope for r in records] == ["cloudtrail-file"] * 2
    assert records[1].payload == CT_RECORD_B


async def test_cloudwatch_logs_data_message() -> None:
    before = discarded("cwlogs_not_json")
    records = await decode(cwlogs("DATA_MESSAGE", [orjson.dumps(CT_RECORD_A).decode(),
                                                   "not json at all",
                                                   orjson.dumps(CT_RECORD_B).decode()]))
    assert [r.payload for r in records] == [CT_RECORD_A, CT_RECORD_B]
    assert {r.envelope for r in records} == {"cwlogs"}
    assert records[1].origin["log_event_id"] == "2"
    assert records[0].origin["log_group"] == "aws-cloudtrail-logs"
    assert records[0].origin["via"] == ["gzip"]
    assert discarded("cwlogs_not_json") == before + 1


async def test_cloudwatch_logs_control_message_is_dropped_and_counted() -> None:
    before = discarded("cwlogs_control_message")
    assert await decode(cwlogs("CONTROL_MESSAGE", ["CWL CONTROL MESSAGE: Checking health"])) == []
    assert discarded("cwlogs_control_message") == before + 1


async def test_unknown_object_passes_through_as_raw() -> None:
    (record,) = await decode(b'{"hello": "world"}')
    assert record.envelope == "raw" and record.payload == {"hello": "world"}


async def test_other_items_pass_through() -> None:
    item = RawRecord(payload={}, message_id="x")
    assert await stage().process(item) == [item]


async def test_nesting_up_to_the_limit_is_fine() -> None:
    (record,) = await decode(nested(MAX_DEPTH))
    assert "a" in record.payload


# --- bad input: each case has its own reason -------------------------------------------------
BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("invalid JSON", b'{"detail-type": ', "invalid_json"),
    ("empty body", b"", "invalid_json"),
    ("invalid UTF-8", b'{"detail": "\xff\xfe"}', "invalid_utf8"),
    ("oversized", b'{"a": "' + b"x" * MAX_MESSAGE + b'"}', "oversized"),
    ("deeper than orjson allows", b"[" * 2000 + b"]" * 2000, "too_deep"),
    ("deeper than the limit", nested(MAX_DEPTH + 1), "too_deep"),
    ("a JSON array", b"[1, 2]", "not_an_object"),
    ("a JSON string", b'"hello"', "not_an_object"),
    ("SNS around garbage", sns(None, raw_message="<html>oops</html>"), "sns_invalid_message"),
    ("SNS around a JSON list", sns([1, 2]), "sns_invalid_message"),
    ("SNS without Message", b'{"Type": "Notification", "TopicArn": "arn:x"}',
     "sns_invalid_message"),
    ("SNS around a too-deep message", sns(None, raw_message=nested(MAX_DEPTH + 1).decode()),
     "too_deep"),
    ("SNS six times over", sns(json.loads(sns(json.loads(sns(json.loads(sns(json.loads(sns(
        json.loads(sns({"a": 1}))))))))))), "too_many_envelopes"),
    ("S3 notification for a missing object", s3_notification("bkt", "missing.json.gz"),
     "s3_object_missing"),
    ("S3 notification without a key", b'{"Records": [{"eventSource": "aws:s3", '
     b'"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}}}]}',
     "invalid_s3_notification"),
    ("Kinesis record that is not base64", b'{"Records": [{"eventSource": "aws:kinesis", '
     b'"kinesis": {"data": "%%%not-base64"}}]}', "bad_base64"),
    ("Lambda record of an unknown source", b'{"Records": [{"eventSource": "aws:sqs"}, '
     b'{"eventSource": "aws:sqs", "body": 5}]}', "invalid_batch_record"),
    ("gzip body that is truncated", gzip.compress(b'{"a": 1}')[:-6], "bad_gzip"),
    ("gzip magic then garbage", b"\x1f\x8bgarbage-not-deflate", "bad_gzip"),
    ("CloudWatch Logs payload of an unknown type", cwlogs("NOPE", []), "cwlogs_invalid"),
]


@pytest.mark.parametrize(("body", "reason"), [(b, r) for _, b, r in BAD_BODIES],
                         ids=[name for name, _, _ in BAD_BODIES])
async def test_bad_bodies_are_poison_with_their_reason(body: bytes, reason: str) -> None:
    with pytest.raises(PermanentError) as info:
        await decode(body)
    assert info.value.reason == reason
    assert info.value.component in {"decode", None}


BAD_OBJECTS: list[tuple[str, bytes, str]] = [
    ("not gzip", orjson.dumps({"Records": [CT_RECORD_A]}), "bad_gzip"),
    ("truncated gzip", gzip.compress(orjson.dumps({"Records": [CT_RECORD_A]}))[:-10],
     "bad_gzip"),
    ("empty object", b"", "bad_gzip"),
    ("gzip of a non-CloudTrail object", gzip.compress(b'{"foo": 1}'), "not_cloudtrail"),
    ("gzip of a JSON list", gzip.compress(b"[]"), "not_cloudtrail"),
    ("gzip of invalid JSON", gzip.compress(b'{"Records": ['), "invalid_json"),
    ("gzip of a too-deep file", gzip.compress(b'{"Records": [' + nested(MAX_DEPTH) + b"]}"),
     "too_deep"),
    ("inflates past the object limit", gzip.compress(b" " * (MAX_OBJECT + 1)),
     "object_too_large"),
]


@pytest.mark.parametrize(("obj", "reason"), [(o, r) for _, o, r in BAD_OBJECTS],
                         ids=[name for name, _, _ in BAD_OBJECTS])
async def test_bad_cloudtrail_objects_are_poison_with_their_reason(obj: bytes,
                                                                   reason: str) -> None:
    with pytest.raises(PermanentError) as info:
        await decode(s3_notification("bkt", "f.json.gz"), {("bkt", "f.json.gz"): obj})
    assert info.value.reason == reason


async def test_concatenated_gzip_members_are_read() -> None:
    data = gzip.compress(b'{"Records": [') + gzip.compress(orjson.dumps(CT_RECORD_A) + b"]}")
    records = await decode(s3_notification("bkt", "f.json.gz"), {("bkt", "f.json.gz"): data})
    assert [r.payload for r in records] == [CT_RECORD_A]


@pytest.mark.parametrize(("code", "status", "reason", "retriable"), [
    ("NoSuchKey", 404, "s3_object_missing", False),
    ("NoSuchBucket", 404, "s3_object_missing", False),
    ("AccessDenied", 403, "s3_access_denied", False),
    ("SlowDown", 503, "s3_unavailable", True),
    ("InternalError", 500, "s3_unavailable", True),
    ("InvalidRange", 416, "s3_error", False),
])
def test_s3_errors_are_classified(code: str, status: int, reason: str, retriable: bool) -> None:
    from botocore.exceptions import ClientError

    response: Any = {"Error": {"Code": code, "Message": "x"},
                     "ResponseMetadata": {"HTTPStatusCode": status}}
    err = ClientError(response, "GetObject")
    mapped = classify_client_error(err, "b", "k")
    assert (mapped.reason, mapped.retriable) == (reason, retriable)
    assert classify_client_error(TimeoutError("read"), "b", "k").retriable


def test_depth_check_counts_containers_only() -> None:
    assert not depth_exceeds({"a": [{"b": "x" * 100}]}, 3)
    assert depth_exceeds({"a": [{"b": []}]}, 3)


# --- the shared sample set: every event file decodes to records of the right envelope -------
def _shared_files() -> list[Path]:
    root = shared_samples_or_skip()
    return sorted(p for kind in ("guardduty", "cloudtrail", "securityhub", "inspector2",
                                 "envelopes") for p in (root / kind).glob("*.json"))


async def test_every_shared_sample_decodes() -> None:
    root = shared_samples_or_skip()
    manifest = json.loads((root / "manifest.json").read_bytes())
    shapes = {entry["file"]: entry["shape"] for entry in manifest["files"]}
    note = json.loads(fixture("sekoia-sqs-body-s3-notification-cloudtrail-object.json"))
    s3 = note["Records"][0]["s3"]
    objects = {(s3["bucket"]["name"], s3["object"]["key"]):
               gzip.compress(orjson.dumps({"Records": [CT_RECORD_A]}))}
    checked = 0
    for path in _shared_files():
        rel = f"{path.parent.name}/{path.name}"
        shape = shapes[rel]
        try:
            records = await decode(path.read_bytes(), objects)
        except PermanentError as err:
            # The one published SNS sample carries plain text, not an event.
            assert rel == "envelopes/powertools-snsEvent.json", (rel, err.reason)
            continue
        if shape == "eventbridge":
            assert [r.envelope for r in records] == ["eventbridge"], rel
        elif shape.startswith("raw"):
            assert [r.envelope for r in records] == ["raw"], rel
            assert records[0].payload == json.loads(path.read_bytes()), rel
        checked += 1
    assert checked >= 20


# --- property: nothing but a PermanentError ever escapes, whatever the bytes ----------------
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=512),
    st.recursive(st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.sampled_from(["Records", "Type", "Message", "TopicArn",
                                                    "detail-type", "source", "eventSource",
                                                    "body", "s3", "logEvents", "messageType",
                                                    "x"]), inner, max_size=5),
                 max_leaves=30).map(orjson.dumps),
))
async def test_arbitrary_bodies_never_crash(body: bytes) -> None:
    try:
        records = await stage().process(message(body))
    except RiposteError as err:
        assert isinstance(err, PermanentError), err
        assert err.reason
        return
    assert all(isinstance(r, RawRecord) and isinstance(r.payload, dict) for r in records)


async def test_kinesis_batch_with_gzip_cloudwatch_logs_data() -> None:
    data = base64.b64encode(cwlogs("DATA_MESSAGE", [orjson.dumps(CT_RECORD_A).decode()]))
    body = orjson.dumps({"Records": [{"eventSource": "aws:kinesis",
                                      "kinesis": {"data": data.decode()}}]})
    (record,) = await decode(body)
    assert record.envelope == "cwlogs"
    assert record.payload == CT_RECORD_A
    assert record.origin["via"] == ["lambda-kinesis", "gzip"]


async def test_build_takes_the_limits_from_the_service_config() -> None:
    from pipeline.aws import AwsClients
    from pipeline.config import parse_config
    from pipeline.context import RuntimeContext
    from pipeline.sources import envelopes
    from pipeline.state.memory import MemoryStore

    config = parse_config({"service": {"max_message_bytes": 2048, "max_object_bytes": 4096}},
                          env={})
    aws = AwsClients("us-east-1")
    try:
        built = envelopes.build(config, RuntimeContext(config=config, store=MemoryStore(),
                                                       aws=aws))
        assert (built.name, built.max_message_bytes, built.max_object_bytes) == (
            "decode", 2048, 4096)
        with pytest.raises(PermanentError) as info:
            await built.process(message(b'{"a": "' + b"x" * 2048 + b'"}'))
        assert info.value.reason == "oversized"
    finally:
        await aws.aclose()
