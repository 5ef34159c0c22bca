"""The Kinesis source against moto's server and, where moto falls short, a local fake.

moto (server mode, real aiobotocore) shows volume across shards, exactly-once in
normal operation, per-shard order, restarts from checkpoints, the three start
positions and dead-lettering. moto cannot show resharding end to end (a closed
parent keeps returning a NextShardIterator and never ChildShards, and new records
keep landing in the old shards), iterator expiry or throttling, so those tests
run against ``kinesis_fake.KinesisFake``, a local HTTP fake of the real JSON 1.1
API whose shard states the test drives.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from pipeline import metrics
from pipeline.aws import AwsClients
from pipeline.config import KinesisSourceConfig, RiposteConfig
from pipeline.context import RuntimeContext
from pipeline.errors import ConfigError
from pipeline.retry import instant_retries
from pipeline.sources.base import InFlightBudget, Message, Outcome, Source
from pipeline.sources.checkpoints import SHARD_END, CheckpointStore
from pipeline.sources.kinesis import KinesisSource, build, deadletter_key
from pipeline.sources.leases import lease_key, lease_prefix
from pipeline.state.base import StateStore, Stored
from pipeline.state.memory import MemoryStore
from tests.integration.kinesis_fake import KinesisFake, serving

pytestmark = pytest.mark.integration

Decide = Callable[[Message], Outcome | None]


class Consumer:
    """Iterates a source like the runner does and settles each message as ``decide`` says
    (None = hold it unsettled until the test settles it)."""

    def __init__(self, source: KinesisSource, decide: Decide | None = None) -> None:
        self.source = source
        self.decide: Decide = decide or (lambda m: Outcome.ack())
        self.received: list[Message] = []
        self.held: list[Message] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for message in self.source.messages():
            self.received.append(message)
            outcome = self.decide(message)
            if outcome is None:
                self.held.append(message)
            else:
                await self.source.settle(message, outcome)

    async def until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        for _ in range(int(within / 0.02)):
            if predicate():
                return
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.02)
        raise AssertionError(f"condition not met in {within}s "
                             f"(received {len(self.received)})")

    async def close(self) -> None:
        await self.source.stop()
        await asyncio.wait_for(self._task, 5)
        await self.source.aclose()

    def ids(self) -> list[str]:
        return [m.id for m in self.received]


def make_source(stream: str, store: StateStore, aws: AwsClients, *,
                budget: InFlightBudget | None = None, close_timeout: float = 0.5,
                **overrides: Any) -> KinesisSource:
    settings: dict[str, Any] = {"stream_name": stream, "idle_poll_interval": 0.05,
                                "polls_per_second": 5, "checkpoint_interval": 0.0,
                                "shard_discovery_interval": 1.0}
    settings.update(overrides)
    ctx = RuntimeContext(config=RiposteConfig(), store=store, aws=aws)
    return KinesisSource(KinesisSourceConfig(**settings), ctx, budget or InFlightBudget(10_000),
                         close_timeout=close_timeout)


# --- moto ---------------------------------------------------------------------------------------
def create_stream(boto: Any, shards: int) -> str:
    name = f"riposte-test-{uuid.uuid4().hex[:10]}"
    boto("kinesis").create_stream(StreamName=name, ShardCount=shards)
    return name


def put_many(boto: Any, stream: str, payloads: list[bytes]) -> None:
    client = boto("kinesis")
    for i in range(0, len(payloads), 500):
        chunk = payloads[i:i + 500]
        response = client.put_records(StreamName=stream, Records=[
            {"Data": p, "PartitionKey": f"key-{i + j}"} for j, p in enumerate(chunk)])
        assert response["FailedRecordCount"] == 0


def assert_shard_order(messages: list[Message]) -> None:
    last: dict[str, int] = {}
    for m in messages:
        shard, seq = m.handle
        assert int(seq) > last.get(shard, -1), f"{m.id} out of order"
        last[shard] = int(seq)


async def test_multi_shard_stream_is_consumed_exactly_once_in_shard_order(
        boto: Any, aws: AwsClients) -> None:
    stream = create_stream(boto, 4)
    payloads = [f'{{"n": {i}}}'.encode() for i in range(3000)]
    put_many(boto, stream, payloads)
    store = MemoryStore()
    received_before = metrics.value(metrics.RECEIVED, source="kinesis")
    ctx = RuntimeContext(config=RiposteConfig(), store=store, aws=aws)
    source = build(KinesisSourceConfig(stream_name=stream, checkpoint_interval=0.2,
                                       idle_poll_interval=0.05), ctx, InFlightBudget(1000))
    assert isinstance(source, Source)
    consumer = Consumer(source)
    await consumer.until(lambda: len(consumer.received) >= 3000)
    await asyncio.sleep(0.3)  # anything extra would show up now
    await consumer.close()

    ids = consumer.ids()
    assert len(ids) == len(set(ids)) == 3000
    assert sorted(m.body for m in consumer.received) == sorted(payloads)
    assert len({m.partition for m in consumer.received}) == 4
    assert_shard_order(consumer.received)
    first = consumer.received[0]
    assert first.sent_at is not None and abs(first.sent_at - time.time()) < 120
    assert first.attributes["partition_key"].startswith("key-")
    assert metrics.value(metrics.RECEIVED, source="kinesis") - received_before == 3000
    # Every shard's checkpoint reached its last record.
    stored = await CheckpointStore(store, stream).all()
    last = {}
    for m in consumer.received:
        last[m.handle[0]] = m.handle[1]
    assert {s: c.position for s, c in stored.items()} == last


async def test_restart_resumes_from_checkpoints_without_loss(boto: Any, aws: AwsClients) -> None:
    stream = create_stream(boto, 2)
    first_batch = [f"a{i}".encode() for i in range(400)]
    put_many(boto, stream, first_batch)
    store = MemoryStore()
    # Run 1: acknowledge only the first 150 messages handed out, hold the rest, stop.
    count = 0

    def first_150(m: Message) -> Outcome | None:
        nonlocal count
        count += 1
        return Outcome.ack() if count <= 150 else None

    run1 = Consumer(make_source(stream, store, aws), first_150)
    await run1.until(lambda: len(run1.received) >= 200)
    await run1.close()
    acked = {m.id for m in run1.received[:150]}

    second_batch = [f"b{i}".encode() for i in range(100)]
    put_many(boto, stream, second_batch)
    run2 = Consumer(make_source(stream, store, aws))
    await run2.until(lambda: len(run2.received) >= 500 - 150)
    await asyncio.sleep(0.3)
    await run2.close()

    again = set(run2.ids())
    assert not again & acked, "a record acknowledged before the restart came back"
    assert len(again) == len(run2.ids()) == 350
    assert {m.body for m in run2.received} | {m.body for m in run1.received[:150]} == set(
        first_batch + second_batch)


@pytest.mark.parametrize("start", ["TRIM_HORIZON", "AT_TIMESTAMP", "LATEST"])
async def test_start_positions(boto: Any, aws: AwsClients, start: str) -> None:
    stream = create_stream(boto, 1)
    put_many(boto, stream, [b"old-1", b"old-2"])
    await asyncio.sleep(0.05)
    boundary = time.time()
    await asyncio.sleep(0.05)
    put_many(boto, stream, [b"mid-1"])
    consumer = Consumer(make_source(stream, MemoryStore(), aws, start=start,
                                    start_timestamp=boundary if start == "AT_TIMESTAMP"
                                    else None))
    await consumer.until(lambda: bool(consumer.source.polled_shards))  # past its start
    put_many(boto, stream, [b"new-1"])
    expected = {"TRIM_HORIZON": [b"old-1", b"old-2", b"mid-1", b"new-1"],
                "AT_TIMESTAMP": [b"mid-1", b"new-1"],
                "LATEST": [b"new-1"]}[start]
    await consumer.until(lambda: len(consumer.received) >= len(expected))
    await asyncio.sleep(0.3)
    await consumer.close()
    assert [m.body for m in consumer.received] == expected


async def test_retry_then_dead_letter_keeps_the_record(boto: Any, aws: AwsClients) -> None:
    stream = create_stream(boto, 1)
    put_many(boto, stream, [b"ok-1", b"flaky", b"poison", b"ok-2"])
    store = MemoryStore()
    attempts: list[int] = []

    def decide(m: Message) -> Outcome:
        if m.body == b"flaky":
            attempts.append(m.receive_count)
            return Outcome.retry("sink_down", detail="503 from the sink")
        if m.body == b"poison":
            return Outcome.dead_letter("invalid_json", detail="line 1")
        return Outcome.ack()

    dead_before = metrics.value(metrics.DEAD_LETTERED, source="kinesis",
                                reason="retries_exhausted")
    with instant_retries():
        consumer = Consumer(make_source(stream, store, aws, max_attempts=3), decide)
        await consumer.until(lambda: len(attempts) >= 3 and len(consumer.received) >= 6)
        await consumer.until(lambda: consumer.source._trackers["shardId-000000000000"].drained)
        await consumer.close()

    assert attempts == [1, 2, 3]
    flaky = next(m for m in consumer.received if m.body == b"flaky")
    assert consumer.received.count(flaky) == 3  # the same Message object, handed out again
    shard, seq = flaky.handle
    letter = await store.get(deadletter_key(stream, shard, seq))
    assert letter is not None
    assert base64.b64decode(letter.value["data"]) == b"flaky"
    assert letter.value["reason"] == "sink_down"
    assert letter.value["cause"] == "retries_exhausted"
    assert letter.value["attempts"] == 3
    poison = next(m for m in consumer.received if m.body == b"poison")
    poison_letter = await store.get(deadletter_key(stream, *poison.handle))
    assert poison_letter is not None and poison_letter.value["reason"] == "invalid_json"
    assert metrics.value(metrics.DEAD_LETTERED, source="kinesis",
                         reason="retries_exhausted") - dead_before == 1
    # Both dead letters count as finished: the checkpoint passed them to the last record.
    last = next(m for m in consumer.received if m.body == b"ok-2")
    checkpoint = await CheckpointStore(store, stream).get(shard)
    assert checkpoint is not None and checkpoint.position == last.handle[1]


# --- local fake of the Kinesis API -------------------------------------------------------------
@pytest_asyncio.fixture(loop_scope="function")
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[KinesisFake, AwsClients]]:
    kinesis = KinesisFake(f"fake-{uuid.uuid4().hex[:8]}", page_size=2)
    async with serving(kinesis, monkeypatch) as clients:
        yield kinesis, clients


@pytest.mark.parametrize("end_style", ["null", "children"])
async def test_children_wait_until_parents_are_finished(
        fake: tuple[KinesisFake, AwsClients], end_style: str) -> None:
    kinesis, aws = fake
    kinesis.end_style = end_style
    # A split (p0 -> c1, c2) and a merge (c1 + c2 -> m3), and an unrelated open shard.
    for shard in ("p0", "other"):
        kinesis.add_shard(shard)
    parent_seqs = [kinesis.put("p0", f"p{i}".encode()) for i in range(5)]
    kinesis.add_shard("c1", parent="p0")
    kinesis.add_shard("c2", parent="p0")
    kinesis.close("p0", ["c1", "c2"])
    kinesis.put("c1", b"c1-a")
    kinesis.put("c2", b"c2-a")
    kinesis.add_shard("m3", parent="c1", adjacent_parent="c2")
    kinesis.close("c1", ["m3"])
    kinesis.close("c2", ["m3"])
    kinesis.put("m3", b"m3-a")
    kinesis.put("other", b"o-a")

    store = MemoryStore()
    hold_last_parent = True

    def decide(m: Message) -> Outcome | None:
        if hold_last_parent and m.handle == ("p0", parent_seqs[-1]):
            return None
        return Outcome.ack()

    consumer = Consumer(make_source(kinesis.stream, store, aws), decide)
    await consumer.until(lambda: len(consumer.received) >= 6)
    await asyncio.sleep(0.6)
    # p0 reached its end, but one of its records is unsettled: no child has been read.
    assert {m.partition for m in consumer.received} == {"p0", "other"}
    assert not kinesis.iterator_requests("c1") and not kinesis.iterator_requests("c2")
    p0 = await CheckpointStore(store, kinesis.stream).get("p0")
    assert p0 is not None and p0.position == parent_seqs[-2]

    hold_last_parent = False
    released_at = time.monotonic()
    await consumer.source.settle(consumer.held.pop(), Outcome.ack())
    await consumer.until(lambda: len(consumer.received) >= 9)
    await asyncio.sleep(0.3)
    await consumer.close()

    order = [str(m.partition) for m in consumer.received]
    assert sorted(order) == ["c1", "c2", "m3", "other", "p0", "p0", "p0", "p0", "p0"]
    assert max(order.index(s) for s in ("c1", "c2")) < order.index("m3")
    child_starts = [c.at for c in kinesis.calls
                    if c.op == "GetShardIterator" and c.shard in ("c1", "c2", "m3")]
    assert child_starts and min(child_starts) > released_at
    checkpoints = await CheckpointStore(store, kinesis.stream).all()
    assert {s for s, c in checkpoints.items() if c.position == SHARD_END} == {"p0", "c1", "c2"}
    # Children start at their beginning (a parent was read), never at LATEST.
    assert kinesis.iterator_requests("m3")[0]["ShardIteratorType"] == "TRIM_HORIZON"

    # A restart reads no finished shard again and resumes the open ones after the checkpoint.
    kinesis.calls.clear()
    kinesis.put("m3", b"m3-b")
    restart = Consumer(make_source(kinesis.stream, store, aws))
    await restart.until(lambda: len(restart.received) >= 1)
    await asyncio.sleep(0.3)
    await restart.close()
    assert [m.body for m in restart.received] == [b"m3-b"]
    assert {c.shard for c in kinesis.calls if c.op == "GetRecords"} == {"m3", "other"}


async def test_latest_skips_closed_shards_but_reads_children_created_later(
        fake: tuple[KinesisFake, AwsClients]) -> None:
    kinesis, aws = fake
    kinesis.add_shard("old")
    kinesis.put("old", b"history")
    kinesis.add_shard("live", parent="old")
    kinesis.close("old", ["live"])
    kinesis.put("live", b"before-start")
    store = MemoryStore()
    consumer = Consumer(make_source(kinesis.stream, store, aws, start="LATEST"))
    await consumer.until(lambda: "live" in consumer.source.polled_shards)
    kinesis.put("live", b"after-start")
    # Reshard while running: the child of a shard we read must start at TRIM_HORIZON.
    kinesis.add_shard("next", parent="live")
    kinesis.close("live", ["next"])
    kinesis.put("next", b"child-1")
    await consumer.until(lambda: len(consumer.received) >= 2)
    await asyncio.sleep(0.3)
    await consumer.close()
    assert [m.body for m in consumer.received] == [b"after-start", b"child-1"]
    assert not kinesis.get_records_calls("old")
    old = await CheckpointStore(store, kinesis.stream).get("old")
    assert old is not None and old.finished and old.skipped


async def test_getrecords_rate_per_shard_stays_under_the_limit(
        fake: tuple[KinesisFake, AwsClients]) -> None:
    kinesis, aws = fake
    for shard in ("s0", "s1", "s2"):
        kinesis.add_shard(shard)
        for i in range(400):
            kinesis.put(shard, f"{shard}-{i}".encode())
    # Ten records per call and no idle sleep: only the rate limit paces the readers. The
    # default 4 calls/s leaves headroom under AWS's 5 for other consumers and for jitter.
    consumer = Consumer(make_source(kinesis.stream, MemoryStore(), aws, max_records=10,
                                    idle_poll_interval=0, polls_per_second=4))
    await consumer.until(lambda: all(kinesis.get_records_calls(s) for s in ("s0", "s1", "s2")))
    await asyncio.sleep(2.0)
    await consumer.close()
    for shard in ("s0", "s1", "s2"):
        calls = kinesis.get_records_calls(shard)  # as the fake received them
        assert len(calls) >= 6, "the reader should keep polling while records are there"
        # AWS's limit: 5 calls per second per shard. No 1-second window holds 6 calls.
        windows = [calls[i + 5] - calls[i] for i in range(len(calls) - 5)]
        assert min(windows) > 1.0, windows
        # And on average the configured 4 calls/s (5% for timer jitter).
        assert (len(calls) - 1) / (calls[-1] - calls[0]) <= 4 * 1.05


async def test_expired_iterator_resumes_after_the_last_record(
        fake: tuple[KinesisFake, AwsClients]) -> None:
    kinesis, aws = fake
    kinesis.add_shard("s0")
    for i in range(6):
        kinesis.put("s0", f"r{i}".encode())
    consumer = Consumer(make_source(kinesis.stream, MemoryStore(), aws, max_records=3,
                                    idle_poll_interval=0.05))
    await consumer.until(lambda: len(consumer.received) >= 3)
    kinesis.expire_next.add("s0")
    await consumer.until(lambda: len(consumer.received) >= 6)
    kinesis.put("s0", b"r6")
    await consumer.until(lambda: len(consumer.received) >= 7)
    await asyncio.sleep(0.2)
    await consumer.close()
    assert [m.body for m in consumer.received] == [f"r{i}".encode() for i in range(7)]
    again = kinesis.iterator_requests("s0")[1:]
    assert again and again[0]["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER"


async def test_throttling_backs_off_and_loses_nothing(
        fake: tuple[KinesisFake, AwsClients]) -> None:
    kinesis, aws = fake
    kinesis.add_shard("s0")
    for i in range(5):
        kinesis.put("s0", f"r{i}".encode())
    # botocore itself retries ProvisionedThroughputExceededException (with real sleeps) before
    # the source sees it; KMSThrottlingException, which GetRecords also returns for encrypted
    # streams, reaches the source at once, so the source's own backoff is what is tested here.
    kinesis.throttle_code = "KMSThrottlingException"
    kinesis.throttle_next["s0"] = 3
    errors_before = metrics.value(metrics.ERRORS, stage="source:kinesis",
                                  error_type="KMSThrottlingException")
    with instant_retries():
        consumer = Consumer(make_source(kinesis.stream, MemoryStore(), aws))
        await consumer.until(lambda: len(consumer.received) >= 5)
        await consumer.close()
    assert [m.body for m in consumer.received] == [f"r{i}".encode() for i in range(5)]
    assert metrics.value(metrics.ERRORS, stage="source:kinesis",
                         error_type="KMSThrottlingException") - errors_before == 3
    assert len(kinesis.get_records_calls("s0")) >= 4


async def test_full_budget_stops_polling(fake: tuple[KinesisFake, AwsClients]) -> None:
    kinesis, aws = fake
    kinesis.add_shard("s0")
    for i in range(50):
        kinesis.put("s0", f"r{i}".encode())
    budget = InFlightBudget(5)
    consumer = Consumer(make_source(kinesis.stream, MemoryStore(), aws, budget=budget,
                                    max_records=10), lambda m: None)
    await consumer.until(lambda: len(consumer.received) >= 5)
    await asyncio.sleep(0.6)
    calls = len(kinesis.get_records_calls("s0"))
    await asyncio.sleep(0.6)
    assert len(consumer.received) == 5 and budget.in_use == 5
    assert len(kinesis.get_records_calls("s0")) == calls == 1  # waiting on the budget
    for m in list(consumer.held):
        await consumer.source.settle(m, Outcome.ack())
    consumer.held.clear()
    await consumer.until(lambda: len(consumer.received) >= 10)
    await consumer.close()
    assert budget.in_use == 0  # unsettled records gave their slots back on close


async def test_out_of_order_settles_checkpoint_only_the_contiguous_prefix(
        fake: tuple[KinesisFake, AwsClients]) -> None:
    kinesis, aws = fake
    kinesis.add_shard("s0")
    seqs = [kinesis.put("s0", f"r{i}".encode()) for i in range(5)]
    store = MemoryStore()
    checkpoints = CheckpointStore(store, kinesis.stream)
    consumer = Consumer(make_source(kinesis.stream, store, aws), lambda m: None)
    await consumer.until(lambda: len(consumer.held) >= 5)
    by_seq = {m.handle[1]: m for m in consumer.held}

    async def settle(i: int) -> str | None:
        await consumer.source.settle(by_seq[seqs[i]], Outcome.ack())
        checkpoint = await checkpoints.get("s0")
        return None if checkpoint is None else checkpoint.position

    assert await settle(1) is None
    assert await settle(3) is None
    assert await settle(0) == seqs[1]
    assert await settle(4) == seqs[1]
    assert await settle(2) == seqs[4]
    await consumer.close()


async def test_shutdown_writes_the_final_checkpoint(
        fake: tuple[KinesisFake, AwsClients]) -> None:
    kinesis, aws = fake
    kinesis.add_shard("s0")
    seqs = [kinesis.put("s0", f"r{i}".encode()) for i in range(3)]
    store = MemoryStore()
    # A long interval: nothing is written while running, the final write happens on close.
    consumer = Consumer(make_source(kinesis.stream, store, aws, checkpoint_interval=3600))
    await consumer.until(lambda: len(consumer.received) >= 3)
    await asyncio.sleep(0.1)
    checkpoints = CheckpointStore(store, kinesis.stream)
    first = await checkpoints.get("s0")
    assert first is not None and first.position == seqs[0]  # the very first write is at once
    await consumer.close()
    final = await checkpoints.get("s0")
    assert final is not None and final.position == seqs[-1]


# --- a fleet: leases ------------------------------------------------------------------------------
@pytest.mark.parametrize("state", ["memory", "dynamodb"])
async def test_two_workers_split_the_shards_and_one_takes_over_when_the_other_dies(
        boto: Any, aws: AwsClients, state: str) -> None:
    stream = create_stream(boto, 4)
    store: StateStore = MemoryStore()
    if state == "dynamodb":  # the fleet's shared table (moto's DynamoDB)
        from pipeline.state.dynamodb import DynamoDbStore

        store = await DynamoDbStore.open(f"riposte-{uuid.uuid4().hex[:8]}", aws,
                                         create_if_missing=True)

    def worker(name: str) -> Consumer:
        return Consumer(make_source(stream, store, aws, name=f"kinesis-{name}", leases=True,
                                    lease_duration=2.0, worker_id=name,
                                    checkpoint_interval=0.2))

    w1, w2 = worker("w1"), worker("w2")
    await w1.until(lambda: len(w1.source.reading) == len(w2.source.reading) == 2
                   and not w1.source.reading & w2.source.reading)
    payloads = [f"r{i}".encode() for i in range(1000)]
    put_many(boto, stream, payloads)
    await w1.until(lambda: len(w1.received) + len(w2.received) >= 1000)
    assert {m.partition for m in w1.received}.isdisjoint({m.partition for m in w2.received})
    assert sorted(m.body for m in w1.received + w2.received) == sorted(payloads)

    # w1 dies: it stops without giving its leases back. w2 takes its shards once they expire.
    await w1.source.stop()
    died_at = time.monotonic()
    at_death = await CheckpointStore(store, stream).all()
    later = [f"late{i}".encode() for i in range(200)]
    put_many(boto, stream, later)
    await w2.until(lambda: len(w2.source.reading) == 4, within=8)
    assert time.monotonic() - died_at >= 1.0  # not before the leases could have expired
    await w2.until(lambda: sum(m.body.startswith(b"late") for m in w2.received) >= 200)
    await asyncio.sleep(0.3)
    await w2.close()
    await w1.close()
    # A graceful close gives every lease back; the dead worker's stale ones were taken over.
    leases = await store.scan(lease_prefix(stream))
    assert len(leases) == 4 and all(lease.value["owner"] is None for lease in leases)
    everything = [m.body for m in w1.received + w2.received]
    assert set(everything) == set(payloads + later)  # nothing lost
    # Read twice: only what w1 finished after its last checkpoint write (at most one
    # checkpoint interval of work), which w2 reads again from that checkpoint.
    flushed = {shard: int(c.position) for shard, c in at_death.items()}
    unflushed = {m.body for m in w1.received if int(m.handle[1]) > flushed.get(m.handle[0], -1)}
    twice = {b for b in everything if everything.count(b) > 1}
    assert twice <= unflushed
    assert len(everything) == len(payloads) + len(later) + len(twice)
    assert_shard_order(w2.received)


async def test_restart_on_a_sqlite_file_rereads_only_what_was_not_finished(
        fake: tuple[KinesisFake, AwsClients], tmp_path: Any) -> None:
    from pipeline.state.sqlite import SqliteStore

    kinesis, aws = fake
    kinesis.add_shard("s0")
    bodies = [f"r{i}".encode() for i in range(20)]
    for body in bodies:
        kinesis.put("s0", body)
    path = tmp_path / "state.db"
    # Run 1: r0..r7 and r10 finish; r8 and r9 are still in the chain when the process stops.
    store = await SqliteStore.open(path)
    finished = {f"r{i}".encode() for i in (*range(8), 10)}
    run1 = Consumer(make_source(kinesis.stream, store, aws),
                    lambda m: Outcome.ack() if m.body in finished else None)
    await run1.until(lambda: len(run1.received) >= 20)
    await run1.close()
    await store.aclose()

    store = await SqliteStore.open(path)
    try:
        checkpoint = await CheckpointStore(store, kinesis.stream).get("s0")
        assert checkpoint is not None
        assert checkpoint.position == run1.received[7].handle[1]  # the contiguous prefix only
        run2 = Consumer(make_source(kinesis.stream, store, aws))
        await run2.until(lambda: len(run2.received) >= 12)
        await asyncio.sleep(0.2)
        await run2.close()
    finally:
        await store.aclose()
    # Read again: everything after the checkpoint. r10 comes twice (it had finished after an
    # unfinished record): duplicates never exceed what was in flight, and nothing is lost.
    assert [m.body for m in run2.received] == bodies[8:]


async def test_a_missing_stream_is_a_config_error_at_start(
        fake: tuple[KinesisFake, AwsClients]) -> None:
    _, aws = fake
    source = make_source("no-such-stream", MemoryStore(), aws)
    with pytest.raises(ConfigError, match="no-such-stream"):
        async for _ in source.messages():
            pass
    await source.aclose()


async def test_resharding_on_moto_loses_nothing_and_keeps_shard_order(
        boto: Any, aws: AwsClients) -> None:
    """What moto can show of a reshard: nothing lost or duplicated, per-shard order kept.

    moto's UpdateShardCount creates children with ParentShardId, but new records keep
    landing in the old shards and a closed parent never reports its end, so parents are
    read on and children stay waiting; parent-before-child and end-of-shard handling are
    tested against the local fake above.
    """
    stream = create_stream(boto, 2)
    consumer = Consumer(make_source(stream, MemoryStore(), aws))
    before = [f"before-{i}".encode() for i in range(300)]
    put_many(boto, stream, before)
    await consumer.until(lambda: len(consumer.received) >= 300)
    boto("kinesis").update_shard_count(StreamName=stream, TargetShardCount=4,
                                       ScalingType="UNIFORM_SCALING")
    after = [f"after-{i}".encode() for i in range(300)]
    put_many(boto, stream, after)
    await consumer.until(lambda: len(consumer.received) >= 600)
    await asyncio.sleep(0.3)
    await consumer.close()
    assert sorted(m.body for m in consumer.received) == sorted(before + after)
    assert len(set(consumer.ids())) == 600
    assert_shard_order(consumer.received)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_settle_order_checkpoints_the_prefix_and_restart_reads_the_rest(
        fake: tuple[KinesisFake, AwsClients], seed: int) -> None:
    import random

    rng = random.Random(seed)
    kinesis, aws = fake
    kinesis.add_shard("s0")
    bodies = [f"r{i}".encode() for i in range(30)]
    seqs = [kinesis.put("s0", body) for body in bodies]
    # Each record is acknowledged, retried once then acknowledged, dead-lettered, or never
    # settled (still in the chain when the process stops); settles land in random order.
    fate = {b: rng.choice(["ack", "ack", "ack", "retry", "dead", "hold"]) for b in bodies}
    store = MemoryStore()
    source = make_source(kinesis.stream, store, aws)
    pending: set[asyncio.Task[None]] = set()

    async def settle_later(m: Message, outcome: Outcome) -> None:
        await asyncio.sleep(rng.uniform(0, 0.05))
        await source.settle(m, outcome)

    def decide(m: Message) -> None:
        kind = fate[m.body]
        outcome = {"ack": Outcome.ack(), "dead": Outcome.dead_letter("bad"),
                   "retry": Outcome.retry("flaky") if m.receive_count == 1 else Outcome.ack(),
                   "hold": None}[kind]
        if outcome is not None:
            task = asyncio.create_task(settle_later(m, outcome))
            pending.add(task)
            task.add_done_callback(pending.discard)

    with instant_retries():
        consumer = Consumer(source, decide)
        settled = sum(1 for f in fate.values() if f != "hold")
        await consumer.until(lambda: len(consumer.received) >= 30 + sum(
            1 for f in fate.values() if f == "retry"))
        await consumer.until(lambda: not pending and source._trackers["s0"].pending ==
                             30 - settled)
        await consumer.close()

    held = [i for i, b in enumerate(bodies) if fate[b] == "hold"]
    checkpoint = await CheckpointStore(store, kinesis.stream).get("s0")
    expected = seqs[held[0] - 1] if held else seqs[-1]
    if held and held[0] == 0:
        assert checkpoint is None
    else:
        assert checkpoint is not None and checkpoint.position == expected
    for i, body in enumerate(bodies):
        letter = await store.get(deadletter_key(kinesis.stream, "s0", seqs[i]))
        assert (letter is not None) == (fate[body] == "dead")

    restart = Consumer(make_source(kinesis.stream, store, aws))
    expected_again = bodies[held[0]:] if held else []
    if expected_again:
        await restart.until(lambda: len(restart.received) >= len(expected_again))
    await asyncio.sleep(0.2)
    await restart.close()
    assert [m.body for m in restart.received] == expected_again


class SlowLeaseStore(MemoryStore):
    """A lease write that lands in the store, then takes a while to be answered."""

    def __init__(self) -> None:
        super().__init__()
        self.claimed = asyncio.Event()

    async def put_if_absent(self, key: str, value: dict[str, Any], *,
                            ttl: float | None = None) -> Stored | None:
        stored = await super().put_if_absent(key, value, ttl=ttl)
        if key.startswith("kinesis:lease:"):
            self.claimed.set()
            await asyncio.sleep(0.3)
        return stored


async def test_stopping_during_a_lease_claim_still_releases_the_lease(
        fake: tuple[KinesisFake, AwsClients]) -> None:
    kinesis, aws = fake
    kinesis.add_shard("s0")
    store = SlowLeaseStore()
    source = make_source(kinesis.stream, store, aws, leases=True, worker_id="w1")
    consumer = Consumer(source)
    await asyncio.wait_for(store.claimed.wait(), 5)
    # The runner's shutdown: stop the source, cancel what iterates it, then close it.
    await source.stop()
    consumer._task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer._task
    await source.aclose()
    lease = await store.get(lease_key(kinesis.stream, "s0"))
    assert lease is not None and lease.value["owner"] is None, "the claim was not released"
    assert not source.reading
    assert not kinesis.get_records_calls("s0")  # stopped before any reader started
