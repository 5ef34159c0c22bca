"""The SQS source against moto's server with the real aiobotocore client.

moto shows receive/visibility/delete semantics, redrive to a dead-letter queue and
S3 objects faithfully; it has no throttling, so receive errors are shown with a
queue that does not exist yet. Queue depths stay in the tens (moto's SQS is slow
and scans the whole queue per receive).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from pipeline import metrics
from pipeline.aws import AwsClients
from pipeline.chain import Chain
from pipeline.config import SqsSourceConfig
from pipeline.models import RawRecord
from pipeline.sources.base import InFlightBudget, Message, Outcome
from pipeline.sources.envelopes import DecodeStage
from pipeline.sources.s3 import S3ObjectFetcher
from pipeline.sources.sqs import (
    ATTR_DETAIL,
    ATTR_REASON,
    ATTR_RECEIVE_COUNT,
    ATTR_SOURCE_MESSAGE_ID,
    DETAIL_CHARS,
    SqsSource,
)
from pipeline.worker import Runner
from tests.conftest import FIXTURES

pytestmark = pytest.mark.integration

Boto = Callable[..., Any]

CT_RECORDS = [
    {"eventVersion": "1.08", "eventSource": "iam.amazonaws.com", "eventName": name,
     "eventTime": "2022-02-21T10:15:00Z", "awsRegion": "eu-west-2",
     "recipientAccountId": "111111111111", "eventID": str(uuid.uuid4())}
    for name in ("CreateUser", "AttachUserPolicy", "CreateAccessKey")
]


def new_queue(boto: Boto, *, attributes: dict[str, str] | None = None) -> str:
    name = f"riposte-{uuid.uuid4().hex[:12]}"
    url: str = boto("sqs").create_queue(QueueName=name, Attributes=attributes or {})["QueueUrl"]
    return url


def queue_arn(boto: Boto, url: str) -> str:
    arn: str = boto("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return arn


def depth(boto: Boto, url: str) -> tuple[int, int]:
    attrs = boto("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return (int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]))


def send(boto: Boto, url: str, bodies: list[str], **extra: Any) -> None:
    client = boto("sqs")
    for i in range(0, len(bodies), 10):
        client.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(j), "MessageBody": body, **extra}
            for j, body in enumerate(bodies[i:i + 10])])


def receive_all(boto: Boto, url: str, *, wait: int = 1, visibility: int = 30
                ) -> list[dict[str, Any]]:
    response = boto("sqs").receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait, VisibilityTimeout=visibility,
        MessageAttributeNames=["All"], MessageSystemAttributeNames=["All"])
    messages: list[dict[str, Any]] = response.get("Messages", [])
    return messages


async def collect(source: SqsSource, n: int, within: float) -> list[Message]:
    """Up to ``n`` messages, or fewer when ``within`` seconds run out."""
    got: list[Message] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            async for message in source.messages():
                got.append(message)
                if len(got) >= n:
                    break
    return got


def config(url: str, **overrides: Any) -> SqsSourceConfig:
    settings: dict[str, Any] = {"queue_url": url, "name": f"sqs-{uuid.uuid4().hex[:6]}",
                                "wait_time_seconds": 2, "visibility_timeout": 30,
                                "delete_batch_linger": 0.02, "retry_base_delay": 1.0}
    settings.update(overrides)
    return SqsSourceConfig(**settings)


@contextlib.asynccontextmanager
async def running(cfg: SqsSourceConfig, aws: AwsClients, limit: int = 100
                  ) -> AsyncIterator[SqsSource]:
    source = SqsSource(cfg, aws, InFlightBudget(limit))
    try:
        yield source
    finally:
        await source.aclose()


# --- receiving and acknowledging -------------------------------------------------------------
async def test_messages_arrive_and_are_deleted_only_after_ack(boto: Boto, aws: AwsClients
                                                              ) -> None:
    url = new_queue(boto)
    bodies = [json.dumps({"n": i}) for i in range(25)]
    send(boto, url, bodies)
    cfg = config(url)
    deleted_before = metrics.value(metrics.ACKS, source=cfg.name, result="deleted")
    async with running(cfg, aws) as source:
        got = await collect(source, 25, within=8)
        assert sorted(m.body.decode() for m in got) == sorted(bodies)
        assert all(m.receive_count == 1 and m.sent_at for m in got)
        # Held: the 25 unsettled plus the slots of the receives now under way.
        assert source.in_flight == 25
        assert 25 <= source.budget.in_use <= 25 + cfg.pollers * cfg.max_messages
        await asyncio.sleep(0.2)
        assert depth(boto, url) == (0, 25)  # received, invisible, not deleted
        for m in got:
            await source.settle(m, Outcome.ack())
        assert source.in_flight == 0
    assert source.budget.in_use == 0
    assert depth(boto, url) == (0, 0)
    assert metrics.value(metrics.ACKS, source=cfg.name, result="deleted") == deleted_before + 25
    assert metrics.value(metrics.RECEIVED, source=cfg.name) == 25


async def test_the_budget_stops_receiving(boto: Boto, aws: AwsClients) -> None:
    url = new_queue(boto)
    send(boto, url, [f"{{\"n\": {i}}}" for i in range(12)])
    async with running(config(url, pollers=3), aws, limit=5) as source:
        first = await collect(source, 5, within=4)
        assert len(first) == 5
        assert await collect(source, 1, within=1) == []  # budget spent: nothing more
        await source.settle(first[0], Outcome.ack())
        more = await collect(source, 1, within=3)
        assert len(more) == 1
        for m in (*first[1:], *more):
            await source.settle(m, Outcome.ack())
        rest = await collect(source, 5, within=4)
        assert len(rest) == 5
        for m in rest:
            await source.settle(m, Outcome.ack())
        last = await collect(source, 1, within=3)
        assert len(last) == 1
        await source.settle(last[0], Outcome.ack())
    assert depth(boto, url) == (0, 0)


async def test_retry_makes_the_message_reappear_after_the_delay(boto: Boto, aws: AwsClients
                                                                ) -> None:
    url = new_queue(boto)
    send(boto, url, ['{"slow": true}'])
    async with running(config(url, wait_time_seconds=1), aws) as source:
        (first,) = await collect(source, 1, within=4)
        settled_at = time.monotonic()
        await source.settle(first, Outcome.retry("sink_down", delay=2))
        (again,) = await collect(source, 1, within=6)
        waited = time.monotonic() - settled_at
        assert again.id == first.id and again.receive_count == 2
        assert 1.5 <= waited < 5.5
        await source.settle(again, Outcome.ack())
    assert depth(boto, url) == (0, 0)


async def test_build_from_the_runtime_context(boto: Boto, aws: AwsClients) -> None:
    from pipeline.config import parse_config
    from pipeline.context import RuntimeContext
    from pipeline.sources import sqs
    from pipeline.state.memory import MemoryStore

    url = new_queue(boto)
    config = parse_config({"sources": [{"type": "sqs", "queue_url": url, "name": "built",
                                        "wait_time_seconds": 1}]}, env={})
    source_config = config.sources[0]
    assert isinstance(source_config, SqsSourceConfig)
    ctx = RuntimeContext(config=config, store=MemoryStore(), aws=aws)
    source = sqs.build(source_config, ctx, InFlightBudget(10))
    send(boto, url, ['{"built": true}'])
    try:
        (message,) = await collect(source, 1, within=4)
        assert (source.name, message.source, message.body) == ("built", "built",
                                                               b'{"built": true}')
        await source.settle(message, Outcome.ack())
    finally:
        await source.aclose()
    assert depth(boto, url) == (0, 0)


# --- dead-lettering ---------------------------------------------------------------------------
async def test_permanent_failure_lands_in_the_dlq_with_its_reason(boto: Boto, aws: AwsClients
                                                                  ) -> None:
    url, dlq = new_queue(boto), new_queue(boto)
    send(boto, url, ['{"poison": true}'], MessageAttributes={
        "producer": {"DataType": "String", "StringValue": "unit-test"}})
    cfg = config(url, dead_letter_queue_url=dlq)
    before = metrics.value(metrics.DEAD_LETTERED, source=cfg.name, reason="decode:invalid_json")
    async with running(cfg, aws) as source:
        (message,) = await collect(source, 1, within=5)
        await source.settle(message, Outcome.dead_letter("decode:invalid_json",
                                                         detail="x" * 5000))
    assert depth(boto, url) == (0, 0)
    (dead,) = receive_all(boto, dlq)
    attrs = dead["MessageAttributes"]
    assert dead["Body"] == '{"poison": true}'
    assert attrs[ATTR_REASON]["StringValue"] == "decode:invalid_json"
    assert attrs[ATTR_DETAIL]["StringValue"] == "x" * DETAIL_CHARS
    assert attrs[ATTR_SOURCE_MESSAGE_ID]["StringValue"] == message.id
    assert attrs[ATTR_RECEIVE_COUNT]["StringValue"] == "1"
    assert attrs["producer"]["StringValue"] == "unit-test"
    assert metrics.value(metrics.DEAD_LETTERED, source=cfg.name,
                         reason="decode:invalid_json") == before + 1


async def test_retries_exhausted_are_dead_lettered(boto: Boto, aws: AwsClients) -> None:
    url, dlq = new_queue(boto), new_queue(boto)
    send(boto, url, ['{"flaky": true}'])
    cfg = config(url, dead_letter_queue_url=dlq, max_receive_count=2, wait_time_seconds=1)
    async with running(cfg, aws) as source:
        (first,) = await collect(source, 1, within=4)
        await source.settle(first, Outcome.retry("sink_down", delay=0.5))
        (second,) = await collect(source, 1, within=5)
        assert second.receive_count == 2
        await source.settle(second, Outcome.retry("sink_down"))
    (dead,) = receive_all(boto, dlq)
    assert dead["MessageAttributes"][ATTR_REASON]["StringValue"] == "retries_exhausted:sink_down"
    assert dead["MessageAttributes"][ATTR_RECEIVE_COUNT]["StringValue"] == "2"
    assert depth(boto, url) == (0, 0)


async def test_without_a_dlq_url_the_redrive_policy_moves_poison(boto: Boto, aws: AwsClients
                                                                 ) -> None:
    dlq = new_queue(boto)
    url = new_queue(boto, attributes={"RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": queue_arn(boto, dlq), "maxReceiveCount": "1"})})
    send(boto, url, ['{"poison": true}'])
    async with running(config(url, wait_time_seconds=1), aws) as source:
        (message,) = await collect(source, 1, within=4)
        await source.settle(message, Outcome.dead_letter("decode:invalid_json"))
        # Made visible at once; the pollers' next receive makes SQS move it.
        dead: list[dict[str, Any]] = []
        for _ in range(10):
            dead = await asyncio.to_thread(receive_all, boto, dlq)
            if dead:
                break
        assert [d["Body"] for d in dead] == ['{"poison": true}']
        assert await collect(source, 1, within=1) == []
    assert depth(boto, url) == (0, 0)


# --- visibility ------------------------------------------------------------------------------
async def test_heartbeat_keeps_a_slow_message_invisible(boto: Boto, aws: AwsClients) -> None:
    url = new_queue(boto)
    send(boto, url, ['{"slow": true}'])
    # Extended about every second, two seconds before it would expire: margin for a busy CI.
    cfg = config(url, visibility_timeout=3, heartbeat_fraction=0.34, wait_time_seconds=1)
    async with running(cfg, aws) as source:
        (message,) = await collect(source, 1, within=4)
        # A competing consumer polls for 5 s (1.7 visibility timeouts) and must see nothing;
        # nor may this source hand the message out a second time.
        stolen, duplicates = await asyncio.gather(
            asyncio.to_thread(lambda: [m for _ in range(5) for m in receive_all(boto, url,
                                                                                   wait=1)]),
            collect(source, 1, within=5))
        assert stolen == [] and duplicates == []
        assert metrics.value(metrics.VISIBILITY_EXTENSIONS, source=cfg.name) >= 3
        await source.settle(message, Outcome.ack())
    assert depth(boto, url) == (0, 0)


async def test_a_redelivery_while_in_flight_is_not_processed_twice(boto: Boto,
                                                                   aws: AwsClients) -> None:
    url = new_queue(boto)
    send(boto, url, ['{"slow": true}'])
    cfg = config(url, wait_time_seconds=1)
    before = metrics.value(metrics.DISCARDED, reason="sqs_redelivered_while_in_flight")
    async with running(cfg, aws) as source:
        (message,) = await collect(source, 1, within=4)
        # As if the visibility timeout had lapsed: the message is up for grabs again.
        boto("sqs").change_message_visibility(QueueUrl=url, ReceiptHandle=message.handle,
                                              VisibilityTimeout=0)
        assert await collect(source, 1, within=2.5) == []
        assert metrics.value(metrics.DISCARDED,
                             reason="sqs_redelivered_while_in_flight") == before + 1
        assert message.receive_count == 2 and source.in_flight == 1
        await source.settle(message, Outcome.ack())  # deletes with the newest handle
    assert depth(boto, url) == (0, 0)


async def test_failed_delete_entries_are_retried_once_then_counted(boto: Boto,
                                                                   aws: AwsClients) -> None:
    url = new_queue(boto)
    send(boto, url, ['{"n": 1}', '{"n": 2}'])
    cfg = config(url)
    async with running(cfg, aws) as source:
        good, bad = await collect(source, 2, within=4)
        # White-box: a receipt handle SQS no longer accepts (ReceiptHandleIsInvalid).
        source._inflight[bad.id].receipt = "not-a-valid-receipt-handle"
        await source.settle(good, Outcome.ack())
        await source.settle(bad, Outcome.ack())
    assert metrics.value(metrics.ACKS, source=cfg.name, result="deleted") == 1
    assert metrics.value(metrics.ACKS, source=cfg.name, result="retried") == 1
    assert metrics.value(metrics.ACKS, source=cfg.name, result="failed") == 1
    assert depth(boto, url) == (0, 1)  # the undeleted one comes back after its timeout


async def test_stop_is_prompt_and_aclose_releases_unsettled(boto: Boto, aws: AwsClients
                                                            ) -> None:
    url = new_queue(boto)
    send(boto, url, [f'{{"n": {i}}}' for i in range(3)])
    source = SqsSource(config(url, wait_time_seconds=20, visibility_timeout=300), aws,
                       InFlightBudget(10))
    got = await collect(source, 3, within=5)
    assert len(got) == 3
    await asyncio.sleep(0.3)  # the pollers are now inside a 20 s long poll
    started = time.monotonic()
    await source.stop()
    assert time.monotonic() - started < 1.0
    await source.aclose()
    assert time.monotonic() - started < 2.0
    assert source.budget.in_use == 0 and source.in_flight == 0
    again = receive_all(boto, url)  # visible at once, not after 300 s
    assert sorted(m["MessageId"] for m in again) == sorted(m.id for m in got)
    assert {m["Attributes"]["ApproximateReceiveCount"] for m in again} == {"2"}


async def test_receive_errors_back_off_and_recover(boto: Boto, aws: AwsClients) -> None:
    name = f"riposte-late-{uuid.uuid4().hex[:8]}"
    url = new_queue(boto)
    late_url = url.rsplit("/", 1)[0] + "/" + name
    async with running(config(late_url, wait_time_seconds=1, pollers=1), aws) as source:
        assert await collect(source, 1, within=1.5) == []  # QueueDoesNotExist, logged
        assert all(not p.done() for p in source._pollers)
        assert boto("sqs").create_queue(QueueName=name)["QueueUrl"] == late_url
        send(boto, late_url, ['{"late": true}'])
        (message,) = await collect(source, 1, within=6)
        await source.settle(message, Outcome.ack())


# --- end to end: S3 notifications through the runner and the decode stage -------------------
class SettleCounter(SqsSource):
    """The real source, telling the test when ``target`` messages have been settled."""

    def __init__(self, cfg: SqsSourceConfig, aws: AwsClients, budget: InFlightBudget,
                 target: int) -> None:
        super().__init__(cfg, aws, budget)
        self.target = target
        self.settled = 0
        self.all_settled = asyncio.Event()

    async def settle(self, message: Message, outcome: Outcome) -> None:
        await super().settle(message, outcome)
        self.settled += 1
        if self.settled >= self.target:
            self.all_settled.set()


class Recorder:
    name = "record"

    def __init__(self) -> None:
        self.records: list[RawRecord] = []

    async def process(self, item: Any) -> list[Any]:
        self.records.append(item)
        return [item]


async def test_s3_notifications_through_the_runner(boto: Boto, aws: AwsClients) -> None:
    bucket = f"trail-{uuid.uuid4().hex[:10]}"
    key = "AWSLogs/111111111111/CloudTrail/eu-west-2/2022/02/21/file.json.gz"
    s3 = boto("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(orjson.dumps(
        {"Records": CT_RECORDS})), ContentType="application/x-gzip")
    s3.put_object(Bucket=bucket, Key="AWSLogs/not-gzip.json.gz", Body=b'{"Records": []}')

    template = (FIXTURES / "envelopes" /
                "sekoia-sqs-body-s3-notification-cloudtrail-object.json").read_text()

    def notification(object_key: str) -> str:
        note = json.loads(template)
        note["Records"][0]["s3"]["bucket"]["name"] = bucket
        note["Records"][0]["s3"]["object"]["key"] = object_key
        return json.dumps(note)

    url, dlq = new_queue(boto), new_queue(boto)
    send(boto, url, [
        notification(key),
        notification("AWSLogs/111111111111/CloudTrail/missing.json.gz"),
        notification("AWSLogs/not-gzip.json.gz"),
        (FIXTURES / "envelopes" / "sekoia-sqs-body-s3-testevent.json").read_text(),
        "not json",
    ])
    cfg = config(url, dead_letter_queue_url=dlq, wait_time_seconds=1)
    recorder = Recorder()
    decode = DecodeStage(max_message_bytes=1 << 20, max_object_bytes=1 << 24,
                         fetcher=S3ObjectFetcher(aws))
    source = SettleCounter(cfg, aws, InFlightBudget(50), target=5)
    runner = Runner([source], Chain([decode, recorder], []), shutdown_deadline=5)
    task = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(8):
            await source.all_settled.wait()
    finally:
        runner.stop()
        stats = await task
    assert [r.payload["eventName"] for r in recorder.records] == [
        "CreateUser", "AttachUserPolicy", "CreateAccessKey"]
    assert {r.origin["s3_key"] for r in recorder.records} == {key}
    assert stats.outcomes == {"ack": 2, "dead_letter": 3}
    dead = receive_all(boto, dlq)
    reasons = sorted(d["MessageAttributes"][ATTR_REASON]["StringValue"] for d in dead)
    assert reasons == ["decode:bad_gzip", "decode:invalid_json", "decode:s3_object_missing"]
    assert depth(boto, url) == (0, 0)


async def test_many_messages_through_the_runner_arrive_exactly_once(boto: Boto,
                                                                     aws: AwsClients) -> None:
    url = new_queue(boto)
    event = json.loads((FIXTURES / "envelopes" / "powertools-eventBridgeEvent.json").read_text())
    bodies = [json.dumps({**event, "id": f"evt-{i}"}) for i in range(150)]
    send(boto, url, bodies)
    cfg = config(url, pollers=4, wait_time_seconds=1)
    recorder = Recorder()
    decode = DecodeStage(max_message_bytes=1 << 20, max_object_bytes=1 << 24)
    source = SettleCounter(cfg, aws, InFlightBudget(40), target=150)
    runner = Runner([source], Chain([decode, recorder], []), concurrency=16, shutdown_deadline=5)
    task = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(9):
            await source.all_settled.wait()
    finally:
        runner.stop()
        stats = await task
    ids = [r.payload["id"] for r in recorder.records]
    assert sorted(ids) == sorted(f"evt-{i}" for i in range(150))  # each exactly once
    assert stats.outcomes == {"ack": 150}
    assert depth(boto, url) == (0, 0)
    assert source.budget.in_use == 0
