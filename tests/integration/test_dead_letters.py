"""Kinesis dead letters: retention, `riposte dead-letters list` and `redrive`.

Dead letters are produced the way production produces them, by the Kinesis
source settling records as dead letters, on moto's Kinesis and a SQLite state
file; the commands then run in-process through ``pipeline.cli.main``.

moto's PutRecords never fails a single record (it accepts every record or
fails the whole call), so the per-record failure test uses a local HTTP fake
of the Kinesis API that refuses chosen records the way AWS does: an
``ErrorCode`` on that entry of the answer and ``FailedRecordCount`` > 0.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from pipeline import cli
from pipeline.assemble import open_context
from pipeline.aws import AwsClients
from pipeline.clock import EventTimeClock
from pipeline.config import KinesisSourceConfig, load_config, parse_config
from pipeline.dead_letters import list_dead_letters, redrive_kinesis
from pipeline.errors import ConfigError
from pipeline.models import Item
from pipeline.retry import instant_retries
from pipeline.serde import dumps
from pipeline.sources.base import Message, Outcome
from pipeline.sources.kinesis import deadletter_key, deadletter_prefix
from pipeline.state.base import StateStore
from pipeline.state.sqlite import SqliteStore
from sinks._runner import Outcome as SinkOutcome
from sinks.fanout import build_runners
from tests.httpfakes import SplunkHecFake
from tests.integration.kinesis_fake import KinesisFake, serving
from tests.integration.test_kinesis_source import (
    Consumer,
    create_stream,
    make_source,
    put_many,
)
from tests.unit.test_asff import make_action, make_detection, make_incident

pytestmark = pytest.mark.integration

DAY = 86_400.0
SECRET_BODY = b'{"poison": true, "password": "hunter2"}'


async def dead_letter_all(stream: str, store: StateStore, aws: AwsClients, count: int,
                          **overrides: Any) -> list[Message]:
    """Read ``stream`` and dead-letter every record, as the chain does with poison."""
    with instant_retries():
        consumer = Consumer(make_source(stream, store, aws, **overrides),
                            lambda m: Outcome.dead_letter("invalid_json", detail="line 1"))
        await consumer.until(lambda: len(consumer.received) >= count)
        await consumer.until(lambda: all(t.drained
                                         for t in consumer.source._trackers.values()))
        await consumer.close()
    return consumer.received


def config_file(tmp_path: Path, rest: str) -> Path:
    """A config with the SQLite state store in ``tmp_path``, then ``rest``."""
    path = tmp_path / "riposte.toml"
    path.write_text(f'[state]\ntype = "sqlite"\npath = "{tmp_path / "state.db"}"\n{rest}')
    return path


def write_config(tmp_path: Path, stream: str) -> Path:
    return config_file(tmp_path, f'[[sources]]\ntype = "kinesis"\nstream_name = "{stream}"\n')


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``riposte ARGV`` in-process (it runs its own event loop, so in a thread)."""
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- retention ----------------------------------------------------------------------------------
def test_retention_is_configurable_and_must_be_positive() -> None:
    assert KinesisSourceConfig(stream_name="s").dead_letter_retention_days == 14
    assert KinesisSourceConfig(stream_name="s",
                               dead_letter_retention_days=0.5).dead_letter_retention_days == 0.5
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="dead_letter_retention_days"):
            parse_config({"sources": [{"type": "kinesis", "stream_name": "s",
                                       "dead_letter_retention_days": bad}]}, env={})


async def test_dead_letters_expire_after_the_retention(boto: Any, aws: AwsClients,
                                                       tmp_path: Path) -> None:
    stream = create_stream(boto, 1)
    put_many(boto, stream, [SECRET_BODY])
    clock = EventTimeClock(start=1_800_000_000.0)
    store = await SqliteStore.open(tmp_path / "state.db", clock=clock)
    try:
        [message] = await dead_letter_all(stream, store, aws, 1, dead_letter_retention_days=2)
        key = deadletter_key(stream, *message.handle)
        [letter] = await list_dead_letters(store, stream=stream)
        assert letter.key == key
        assert letter.expires_at == pytest.approx(clock.now() + 2 * DAY)
        clock.advance_to(clock.now() + 2 * DAY - 60)
        assert [d.key for d in await list_dead_letters(store, stream=stream)] == [key]
        clock.advance_to(clock.now() + 120)
        assert await list_dead_letters(store, stream=stream) == []
        assert await store.get(key) is None
        assert await store.purge_expired() == 1
    finally:
        await store.aclose()


# --- list ---------------------------------------------------------------------------------------
async def test_list_shows_key_reason_time_and_size_but_no_payload_unless_asked(
        boto: Any, aws: AwsClients, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stream = create_stream(boto, 2)
    bodies = [SECRET_BODY, b"not json", b"\x00\xffbinary"]
    put_many(boto, stream, bodies)
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        received = await dead_letter_all(stream, store, aws, 3)
    finally:
        await store.aclose()
    keys = sorted(deadletter_key(stream, *m.handle) for m in received)
    config = str(write_config(tmp_path, stream))

    code, out, err = await run_cli(capsys, "dead-letters", "list", "-c", config)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["KEY", "REASON", "DEAD-LETTERED", "EXPIRES", "BYTES"]
    assert [line.split()[0] for line in lines[1:]] == keys
    for line in lines[1:]:
        key, reason, at, expires, size = line.split()
        assert reason == "invalid_json" and at.endswith("Z") and expires.endswith("Z")
        body = next(m.body for m in received if deadletter_key(stream, *m.handle) == key)
        assert int(size) == len(body)
    assert "hunter2" not in out + err
    assert "3 dead letter(s)" in err

    code, out, _ = await run_cli(capsys, "dead-letters", "list", "-c", config, "--json")
    listed = orjson.loads(out)
    assert [d["key"] for d in listed] == keys
    assert {d["reason"] for d in listed} == {"invalid_json"}
    assert all("payload" not in d and "data" not in d for d in listed)
    assert {d["partition_key"] for d in listed} == {"key-0", "key-1", "key-2"}
    assert "hunter2" not in out

    code, out, _ = await run_cli(capsys, "dead-letters", "list", "-c", config, "--json",
                                 "--show-payload", "--limit", "3")
    payloads = {d["payload"] for d in orjson.loads(out)}
    assert payloads == {SECRET_BODY.decode(), "not json",
                        "base64:" + base64.b64encode(b"\x00\xffbinary").decode()}
    code, out, _ = await run_cli(capsys, "dead-letters", "list", "-c", config, "--show-payload")
    assert out.count("    payload: ") == 3 and "hunter2" in out

    code, out, _ = await run_cli(capsys, "dead-letters", "list", "-c", config, "--json",
                                 "--limit", "2")
    assert [d["key"] for d in orjson.loads(out)] == keys[:2]
    # Another stream's letters are not this one's, even when its name is a prefix.
    code, out, err = await run_cli(capsys, "dead-letters", "list", "-c", config,
                                   "--stream", stream[:-1])
    assert code == 0 and out == "" and "0 dead letter(s)" in err
    code, _, err = await run_cli(capsys, "dead-letters", "list", "-c", config,
                                 "--source", "sink", "--stream", stream)
    assert code == 2 and "--stream applies to Kinesis" in err


async def test_list_sink_dead_letters(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        await store.put("deadletter:sink:splunk:item-1", {
            "sink": "splunk", "item_id": "item-1", "item_kind": "incident",
            "reason": "http_400", "response": "bad event", "at": 1_800_000_000.0,
            "item": {"id": "item-1", "secret": "hunter2"}}, ttl=30 * DAY)
        await store.put(deadletter_key("s", "shardId-0", "1"), {"stream": "s", "data": ""})
    finally:
        await store.aclose()
    config = str(write_config(tmp_path, "s"))
    code, out, _ = await run_cli(capsys, "dead-letters", "list", "-c", config,
                                 "--source", "sink", "--json")
    [letter] = orjson.loads(out)
    assert code == 0
    assert letter["key"] == "deadletter:sink:splunk:item-1"
    assert (letter["origin"], letter["reason"], letter["item_kind"]) == (
        "splunk", "http_400", "incident")
    assert letter["size"] == len(orjson.dumps({"id": "item-1", "secret": "hunter2"}))
    assert "hunter2" not in out


# --- redrive on moto ----------------------------------------------------------------------------
async def test_redrive_puts_records_back_and_deletes_their_dead_letters(
        boto: Any, aws: AwsClients, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stream = create_stream(boto, 2)
    bodies = [f"poison-{i}".encode() for i in range(5)] + [b"\x00\xffbinary"]
    put_many(boto, stream, bodies)
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        received = await dead_letter_all(stream, store, aws, len(bodies))
    finally:
        await store.aclose()
    original = {m.body: m.attributes["partition_key"] for m in received}
    config = str(write_config(tmp_path, stream))

    code, out, err = await run_cli(capsys, "dead-letters", "redrive", "-c", config,
                                   "--stream", stream, "--dry-run")
    assert code == 0, err
    assert f"dry run: 6 dead letter(s) would go back on {stream}, 0 cannot" in out
    code, out, err = await run_cli(capsys, "dead-letters", "redrive", "-c", config,
                                   "--stream", stream, "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert report["counts"] == {"redriven": 6, "failed": 0, "would_redrive": 0,
                                "put_not_deleted": 0}

    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        assert await store.scan(deadletter_prefix(stream)) == []
        # The same stream, read on from the checkpoints: only the redriven records, each
        # with the data and partition key it had when it was first read.
        again = Consumer(make_source(stream, store, aws))
        await again.until(lambda: len(again.received) >= len(bodies))
        await asyncio.sleep(0.3)
        await again.close()
    finally:
        await store.aclose()
    assert sorted(m.body for m in again.received) == sorted(bodies)
    assert {m.body: m.attributes["partition_key"] for m in again.received} == original
    assert not {m.id for m in again.received} & {m.id for m in received}, "new sequence numbers"
    new_sequences = {o["detail"] for o in report["outcomes"]}
    assert new_sequences == {m.handle[1] for m in again.received}


async def test_redrive_to_a_missing_stream_keeps_every_dead_letter(
        boto: Any, aws: AwsClients, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stream = create_stream(boto, 1)
    put_many(boto, stream, [b"one", b"two"])
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        await dead_letter_all(stream, store, aws, 2)
        before = await store.scan(deadletter_prefix(stream))
    finally:
        await store.aclose()
    boto("kinesis").delete_stream(StreamName=stream)
    config = str(write_config(tmp_path, stream))
    code, out, err = await run_cli(capsys, "dead-letters", "redrive", "-c", config,
                                   "--stream", stream)
    assert code == 1
    assert err.count("PutRecords failed: ResourceNotFoundException") == 2
    assert "0 record(s) put back" in out and "2 failed and kept" in out
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        assert await store.scan(deadletter_prefix(stream)) == before
    finally:
        await store.aclose()


# --- per-record failures, on a local fake --------------------------------------------------------
class RefusingKinesis(KinesisFake):
    """The Kinesis fake plus PutRecords into shard ``s0``, refusing records in ``refuse``
    with a per-record ``ErrorCode``, as AWS does when one shard is over its write limit."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.refuse: set[bytes] = set()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.headers.get("X-Amz-Target") != "Kinesis_20131202.PutRecords":
            return await super()._handle(request)
        body = orjson.loads(await request.read())
        if body.get("StreamName") != self.stream:
            return web.Response(status=400, content_type="application/x-amz-json-1.1",
                                body=orjson.dumps({"__type": "ResourceNotFoundException",
                                                   "message": "no such stream"}))
        results: list[dict[str, Any]] = []
        for entry in body["Records"]:
            data = base64.b64decode(entry["Data"])
            if data in self.refuse:
                results.append({"ErrorCode": "ProvisionedThroughputExceededException",
                                "ErrorMessage": "Rate exceeded for shard s0"})
            else:
                sequence = self.put("s0", data, entry["PartitionKey"])
                results.append({"SequenceNumber": sequence, "ShardId": "s0"})
        failed = sum(1 for r in results if "ErrorCode" in r)
        return web.Response(content_type="application/x-amz-json-1.1", body=orjson.dumps(
            {"FailedRecordCount": failed, "Records": results}))


@pytest_asyncio.fixture(loop_scope="function")
async def refusing(monkeypatch: pytest.MonkeyPatch
                   ) -> AsyncIterator[tuple[RefusingKinesis, AwsClients]]:
    kinesis = RefusingKinesis(f"fake-{uuid.uuid4().hex[:8]}")
    async with serving(kinesis, monkeypatch) as clients:
        yield kinesis, clients


async def test_a_record_putrecords_refuses_keeps_its_dead_letter(
        refusing: tuple[RefusingKinesis, AwsClients], tmp_path: Path) -> None:
    kinesis, aws = refusing
    kinesis.add_shard("s0")
    bodies = [b"r0", b"r1", b"r2", b"r3"]
    for i, body in enumerate(bodies):
        kinesis.put("s0", body, partition_key=f"pk-{i}")
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        received = await dead_letter_all(kinesis.stream, store, aws, 4)
        keys = {m.body: deadletter_key(kinesis.stream, *m.handle) for m in received}
        kinesis.refuse = {b"r1", b"r3"}
        client = await aws.client("kinesis")

        dry = await redrive_kinesis(store, client, kinesis.stream, dry_run=True)
        assert dry.ok and dry.count("would_redrive") == 4
        assert len(kinesis.shards["s0"].records) == 4, "a dry run puts nothing"

        report = await redrive_kinesis(store, client, kinesis.stream)
        assert not report.ok
        status = {o.key: o.status for o in report.outcomes}
        assert status == {keys[b"r0"]: "redriven", keys[b"r1"]: "failed",
                          keys[b"r2"]: "redriven", keys[b"r3"]: "failed"}
        failed = next(o for o in report.outcomes if o.key == keys[b"r1"])
        assert failed.detail == ("ProvisionedThroughputExceededException: "
                                 "Rate exceeded for shard s0")
        left = {s.key for s in await store.scan(deadletter_prefix(kinesis.stream))}
        assert left == {keys[b"r1"], keys[b"r3"]}
        # What went back is the stored data under its original partition key.
        put_back = kinesis.shards["s0"].records[4:]
        assert [(r.data, r.partition_key) for r in put_back] == [(b"r0", "pk-0"),
                                                                 (b"r2", "pk-2")]

        # Once the shard has room again, a second redrive sends just the two left.
        kinesis.refuse = set()
        second = await redrive_kinesis(store, client, kinesis.stream)
        assert second.ok and second.count("redriven") == 2
        assert await store.scan(deadletter_prefix(kinesis.stream)) == []
        assert [r.data for r in kinesis.shards["s0"].records[6:]] == [b"r1", b"r3"]
    finally:
        await store.aclose()


# --- redrive to a sink --------------------------------------------------------------------------
HEC_TOKEN = "0f5f3c52-8a8c-4b7e-9d1e-redrive"


def write_sink_config(tmp_path: Path, fake: SplunkHecFake) -> Path:
    return config_file(tmp_path, f"""
[[sinks]]
type = "splunk_hec"
name = "splunk"
url = "{fake.url}"
token = "{HEC_TOKEN}"
batching = {{ max_items = 2, linger = 0.01 }}
retry = {{ max_attempts = 2, base_delay = 0.01, budget = 2.0 }}
""")


async def test_sink_dead_letters_are_sent_again_once_the_sink_takes_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items: list[Item] = [make_incident(), make_detection(), make_action()]
    async with SplunkHecFake(HEC_TOKEN, max_content_length=200) as fake:
        path = write_sink_config(tmp_path, fake)
        config = str(path)
        # Live traffic: the intake refuses every event as too large, for good (413).
        ctx = await open_context(load_config(path))
        try:
            (runner,) = build_runners(ctx.config.sinks, ctx)
            futures = [await runner.submit(item) for item in items]
            assert [await f for f in futures] == [SinkOutcome.REJECTED] * 3
            await runner.aclose()
            letters = await list_dead_letters(ctx.store, source="sink")
        finally:
            await ctx.aclose()
        assert len(letters) == 3 and {d.origin for d in letters} == {"splunk"}

        code, out, _ = await run_cli(capsys, "dead-letters", "redrive", "-c", config,
                                     "--sink", "splunk", "--dry-run")
        assert code == 0
        assert "dry run: 3 dead letter(s) would be sent again to sink splunk, 0 cannot" in out
        assert fake.events == []

        # The cause is not fixed yet: refused again, every letter kept (with the new answer).
        code, out, _ = await run_cli(capsys, "dead-letters", "redrive", "-c", config,
                                     "--sink", "splunk", "--json")
        report = orjson.loads(out)
        assert code == 1 and report["sink"] == "splunk"
        assert report["counts"]["failed"] == 3 and report["counts"]["redriven"] == 0
        assert fake.events == []

        fake.max_content_length = 1_000_000  # fixed
        code, out, err = await run_cli(capsys, "dead-letters", "redrive", "-c", config,
                                       "--sink", "splunk")
        assert code == 0, err
        assert "redrive: 3 item(s) sent again to sink splunk, 0 failed and kept" in out
        # Each item arrives once, exactly as it was first sent.
        assert sorted((e["event"] for e in fake.events), key=lambda e: e["item_kind"]) == sorted(
            (orjson.loads(dumps(i)) for i in items), key=lambda e: e["item_kind"])

        code, out, _ = await run_cli(capsys, "dead-letters", "redrive", "-c", config,
                                     "--sink", "splunk")
        assert code == 0 and "redrive: 0 item(s)" in out and len(fake.events) == 3
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        assert await list_dead_letters(store, source="sink") == []
    finally:
        await store.aclose()


async def test_sink_redrive_refuses_an_unknown_sink_and_an_unreadable_item(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with SplunkHecFake(HEC_TOKEN) as fake:
        config = str(write_sink_config(tmp_path, fake))
        code, _, err = await run_cli(capsys, "dead-letters", "redrive", "-c", config,
                                     "--sink", "datadog")
        assert code == 2 and "no sink named 'datadog'" in err and "configured: splunk" in err
        store = await SqliteStore.open(tmp_path / "state.db")
        try:
            await store.put("deadletter:sink:splunk:x", {
                "sink": "splunk", "item_id": "x", "reason": "http_400",
                "item": {"item_kind": "incident", "id": "x"}})
        finally:
            await store.aclose()
        code, _, err = await run_cli(capsys, "dead-letters", "redrive", "-c", config,
                                     "--sink", "splunk")
        assert code == 1 and "stored item unreadable" in err and fake.events == []
        with pytest.raises(SystemExit) as exited:  # one target or the other, not both
            await run_cli(capsys, "dead-letters", "redrive", "-c", config,
                          "--sink", "splunk", "--stream", "s")
        assert exited.value.code == 2
