"""The fan-out's delivery semantics over in-process scripted sinks (no network).

Covers batching (count, bytes, linger) shared by concurrent ``process()`` calls,
the concurrency limit, required vs best-effort waiting, retry with backoff and
Retry-After, the retry budget releasing a message for redelivery, rejections
becoming dead-letter records, the delivery ledger, stopping a sink whose
credentials are refused, healthchecks at start-up and the flush on close.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from pipeline import metrics
from pipeline.errors import RetriableError
from pipeline.models import Item, item_id
from pipeline.retry import instant_retries
from pipeline.state.memory import MemoryStore
from sinks import reasons
from sinks._runner import Outcome, SinkRunner
from sinks.base import Rejected, SendResult
from sinks.config_base import Batching, RateLimit, RetryPolicy, Routing, SinkBase
from sinks.delivery_ledger import DeliveryLedger, dead_letter_key, delivered_key
from sinks.fanout import FanoutStage, Route, SinkHealthError
from tests.sink_items import ScriptedSink, action, detection, event, incident


def runner(sink: ScriptedSink, store: MemoryStore, **cfg: object) -> SinkRunner:
    config = SinkBase.model_validate({"name": sink.name, **cfg})
    return SinkRunner(sink, config, ledger=DeliveryLedger(store), store=store)


def retry_all(error: str = "server_error: HTTP 503", after: float | None = None):  # type: ignore[no-untyped-def]
    return lambda batch: SendResult.all_retry(batch, error, retry_after=after)


def reject_all(reason: str, response: str = "HTTP 400: bad"):  # type: ignore[no-untyped-def]
    return lambda batch: SendResult.all_rejected(batch, reason, response)


async def test_concurrent_process_calls_share_one_batch() -> None:
    store = MemoryStore()
    sink = ScriptedSink("a")
    fan = FanoutStage([runner(sink, store, batching={"max_items": 10, "linger": 0.05})])
    items = [incident(i) for i in range(25)]
    results = await asyncio.gather(*(fan.process(i) for i in items))
    assert results == [[]] * 25  # terminal stage
    assert [len(b) for b in sink.batches] == [10, 10, 5]
    assert {item_id(i) for i in sink.received} == {item_id(i) for i in items}


async def test_linger_bounds_the_wait_for_a_lone_item() -> None:
    store = MemoryStore()
    sink = ScriptedSink("a")
    fan = FanoutStage([runner(sink, store, batching={"max_items": 100, "linger": 0.05})])
    started = time.monotonic()
    await fan.process(incident(1))
    waited = time.monotonic() - started
    assert 0.04 <= waited < 1.0
    assert len(sink.batches) == 1


async def test_batches_are_cut_by_estimated_bytes() -> None:
    store = MemoryStore()
    sink = ScriptedSink("a")
    one = len(__import__("pipeline.serde", fromlist=["dumps"]).dumps(incident(1)))
    fan = FanoutStage([runner(sink, store, batching={"max_items": 1000, "max_bytes": 1024 * 4,
                                                     "linger": 0.05})])
    await asyncio.gather(*(fan.process(incident(i)) for i in range(12)))
    per_batch = max(1, -(-4096 // one))  # the item that crosses the limit closes the batch
    assert max(len(b) for b in sink.batches) <= per_batch
    assert sum(len(b) for b in sink.batches) == 12


async def test_concurrency_limit_is_respected() -> None:
    store = MemoryStore()
    sink = ScriptedSink("a")
    sink.delay = 0.02
    fan = FanoutStage([runner(sink, store, concurrency=2,
                              batching={"max_items": 1, "linger": 0})])
    await asyncio.gather(*(fan.process(incident(i)) for i in range(10)))
    assert sink.max_active == 2
    assert len(sink.batches) == 10


async def test_routing_sends_each_item_only_where_it_belongs() -> None:
    store = MemoryStore()
    everything = ScriptedSink("everything")
    high_incidents = ScriptedSink("high")
    brute_force = ScriptedSink("ssh")
    fan = FanoutStage([
        runner(everything, store, routing={"kinds": ["event", "detection", "incident",
                                                     "action"]}, batching={"linger": 0}),
        runner(high_incidents, store, routing={"kinds": ["incident"], "min_severity": "high"},
               batching={"linger": 0}),
        runner(brute_force, store, routing={"kinds": ["event", "incident"],
                                            "types": ["*SSHBruteForce"]},
               batching={"linger": 0}),
    ])
    items: list[Item] = [event(1, score=30), detection(2), incident(3, score=92),
                         incident(4, score=50, finding_types=("Recon:EC2/PortProbe",)),
                         action(5)]
    for it in items:
        await fan.process(it)
    assert [item_id(i) for i in everything.received] == [item_id(i) for i in items]
    assert [i.id for i in high_incidents.received] == ["inc-3"]
    assert [i.id for i in brute_force.received] == ["gd-1", "inc-3"]


async def test_transient_failures_are_retried_with_backoff_then_delivered() -> None:
    store = MemoryStore()
    sink = ScriptedSink("a")
    sink.answers = [retry_all(), retry_all("throttled: HTTP 429", after=7.0)]
    r = runner(sink, store, batching={"linger": 0}, retry={"base_delay": 0.5, "max_delay": 4})
    fan = FanoutStage([r])
    with instant_retries():
        await fan.process(incident(1))
    assert len(sink.batches) == 3
    delays = list(r.stats.recent_delays)
    assert 0.25 <= delays[0] <= 0.5  # full jitter over base * 2^0
    assert delays[1] == 7.0  # Retry-After beats the (shorter) backoff
    assert r.stats.retried == 2 and r.stats.delivered == 1
    assert await store.get(delivered_key("a", incident(1))) is not None


async def test_required_sink_out_of_budget_releases_the_message() -> None:
    store = MemoryStore()
    sink = ScriptedSink("splunk")
    sink.answers = [retry_all()] * 10
    released_before = metrics.value(metrics.SINK_FAILED, sink="splunk", reason="released")
    fan = FanoutStage([runner(sink, store, batching={"linger": 0},
                              retry={"max_attempts": 3})])
    with instant_retries(), pytest.raises(RetriableError) as err:
        await fan.process(incident(1))
    assert err.value.reason == "sink_unavailable"
    assert err.value.component == "splunk"
    assert len(sink.batches) == 3  # bounded by max_attempts
    assert metrics.value(metrics.SINK_FAILED, sink="splunk",
                         reason="released") == released_before + 1


async def test_retry_after_longer_than_the_budget_releases_at_once() -> None:
    store = MemoryStore()
    sink = ScriptedSink("dd")
    sink.answers = [retry_all("throttled: HTTP 429", after=600.0)]
    fan = FanoutStage([runner(sink, store, batching={"linger": 0},
                              retry={"budget": 30, "max_attempts": 10})])
    started = time.monotonic()
    with pytest.raises(RetriableError):
        await fan.process(incident(1))
    assert time.monotonic() - started < 1.0
    assert len(sink.batches) == 1


async def test_budget_bounds_process_even_when_the_sink_hangs() -> None:
    store = MemoryStore()
    sink = ScriptedSink("slow")
    sink.delay = 5.0
    fan = FanoutStage([runner(sink, store, batching={"linger": 0}, retry={"budget": 0.2})])
    fan._wait = 0.3  # the grace after the budget, shortened for the test
    started = time.monotonic()
    with pytest.raises(RetriableError):
        await fan.process(incident(1))
    assert time.monotonic() - started < 1.5
    await fan.aclose(deadline=0.1)


async def test_redelivery_skips_sinks_that_already_accepted() -> None:
    store = MemoryStore()
    good = ScriptedSink("good")
    flaky = ScriptedSink("flaky")
    flaky.answers = [retry_all()] * 2
    fan = FanoutStage([runner(good, store, batching={"linger": 0}),
                       runner(flaky, store, batching={"linger": 0},
                              retry={"max_attempts": 2})])
    item = incident(7)
    with instant_retries():
        with pytest.raises(RetriableError):
            await fan.process(item)
        await fan.process(item)  # the queue redelivers the message
    assert [i.id for i in good.received] == ["inc-7"]
    assert [i.id for i in flaky.received] == ["inc-7"] * 3
    # A newer revision of the same incident is a new delivery.
    await fan.process(incident(7, revision=2))
    assert len(good.received) == 2


async def test_rejections_are_dead_lettered_and_do_not_block_the_ack() -> None:
    store = MemoryStore()
    sink = ScriptedSink("hec")
    sink.answers = [reject_all(reasons.BAD_REQUEST, 'HTTP 400: {"text":"Incorrect index"}')]
    fan = FanoutStage([runner(sink, store, batching={"linger": 0})])
    item = incident(3)
    assert await fan.process(item) == []
    record = await store.get(dead_letter_key("hec", item))
    assert record is not None
    assert record.value["reason"] == "bad_request"
    assert "Incorrect index" in record.value["response"]
    assert record.value["item"]["id"] == "inc-3"
    assert await store.get(delivered_key("hec", item)) is None


async def test_partial_results_settle_each_item_on_its_own() -> None:
    store = MemoryStore()
    sink = ScriptedSink("mixed")

    def half(batch: Sequence[Item]) -> SendResult:
        return SendResult(delivered=batch[:1], retry=batch[1:2],
                          rejected=[Rejected(batch[2], "entry_too_large", "too big")],
                          error="server_error: partial")

    sink.answers = [half]
    fan = FanoutStage([runner(sink, store, batching={"max_items": 3, "linger": 0.05})])
    items = [incident(i) for i in range(3)]
    with instant_retries():
        await asyncio.gather(*(fan.process(i) for i in items))
    assert [len(b) for b in sink.batches] == [3, 1]
    assert sink.batches[1][0].id == "inc-1"
    assert await store.get(dead_letter_key("mixed", items[2])) is not None


async def test_unauthorized_stops_the_sink_without_a_retry_storm() -> None:
    store = MemoryStore()
    sink = ScriptedSink("dd")
    sink.answers = [reject_all(reasons.FORBIDDEN, 'HTTP 403: {"errors":["Forbidden"]}')]
    r = runner(sink, store, batching={"linger": 0})
    fan = FanoutStage([r])
    for i in range(20):
        await fan.process(incident(i))
    assert len(sink.batches) == 1  # one request, then no more
    assert fan.stopped == {"dd": 'forbidden: HTTP 403: {"errors":["Forbidden"]}'}
    later = await store.get(dead_letter_key("dd", incident(5)))
    assert later is not None and later.value["reason"] == reasons.SINK_STOPPED


async def test_best_effort_sink_never_delays_process() -> None:
    store = MemoryStore()
    required = ScriptedSink("required")
    down = ScriptedSink("best-effort")
    down.delay = 2.0
    fan = FanoutStage([runner(required, store, batching={"linger": 0}),
                       runner(down, store, required=False, batching={"linger": 0})])
    started = time.monotonic()
    for i in range(5):
        await fan.process(incident(i))
    assert time.monotonic() - started < 0.5
    assert len(required.received) == 5
    await fan.aclose(deadline=0.05)


async def test_duplicate_submissions_in_flight_share_one_send() -> None:
    store = MemoryStore()
    sink = ScriptedSink("a")
    fan = FanoutStage([runner(sink, store, batching={"linger": 0.02})])
    item = incident(1)
    await asyncio.gather(fan.process(item), fan.process(item))
    assert len(sink.received) == 1


async def test_rate_limit_spaces_requests() -> None:
    store = MemoryStore()
    sink = ScriptedSink("slack")
    fan = FanoutStage([runner(sink, store, batching={"max_items": 1, "linger": 0},
                              rate_limit={"rate": 20, "burst": 1})])
    started = time.monotonic()
    await asyncio.gather(*(fan.process(incident(i)) for i in range(5)))
    # One token at once, then four more at 20/s.
    assert time.monotonic() - started >= 0.18


async def test_shared_rate_limit_draws_from_the_store() -> None:
    store = MemoryStore()
    sink = ScriptedSink("sechub")
    fan = FanoutStage([runner(sink, store, batching={"max_items": 1, "linger": 0},
                              rate_limit={"rate": 50, "burst": 2, "shared": True})])
    await asyncio.gather(*(fan.process(incident(i)) for i in range(4)))
    assert await store.get("bucket:sink:sechub") is not None
    assert len(sink.batches) == 4


async def test_start_fails_clearly_for_a_required_sink_and_warns_for_best_effort(
        caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    bad_optional = ScriptedSink("optional")
    bad_optional.healthy = False
    fan = FanoutStage([runner(ScriptedSink("ok"), store),
                       runner(bad_optional, store, required=False)])
    await fan.start()
    assert any("best-effort sink failed its healthcheck" in r.message for r in caplog.records)
    bad_required = ScriptedSink("splunk")
    bad_required.healthy = False
    fan = FanoutStage([runner(bad_required, store)])
    with pytest.raises(SinkHealthError, match=r"splunk.*unreachable"):
        await fan.start()


async def test_aclose_flushes_pending_batches_and_closes_sinks() -> None:
    store = MemoryStore()
    sink = ScriptedSink("a")
    fan = FanoutStage([runner(sink, store, required=False,
                              batching={"max_items": 100, "linger": 30})])
    for i in range(3):
        await fan.process(incident(i))
    assert sink.batches == []  # still lingering
    await fan.aclose(deadline=1.0)
    assert len(sink.received) == 3
    assert sink.closed


async def test_best_effort_queue_is_bounded() -> None:
    store = MemoryStore()
    sink = ScriptedSink("slow")
    sink.delay = 10
    r = runner(sink, store, required=False, concurrency=1,
               batching={"max_items": 1, "linger": 0})
    fan = FanoutStage([r])
    for i in range(1100):
        await fan.process(incident(i))
    assert r.depth <= 1000
    assert r.stats.dropped >= 100
    await fan.aclose(deadline=0.05)


async def test_outcomes_of_submit() -> None:
    store = MemoryStore()
    sink = ScriptedSink("a")
    r = runner(sink, store, batching={"linger": 0})
    first = await r.submit(incident(1))
    assert await first is Outcome.DELIVERED
    again = await r.submit(incident(1))
    assert await again is Outcome.ALREADY_DELIVERED


def test_config_models_have_sane_defaults() -> None:
    base = SinkBase(name="x")
    assert base.required and base.ledger
    assert base.batching == Batching()
    assert base.rate_limit == RateLimit()
    assert base.retry == RetryPolicy()
    assert base.routing == Routing()


async def test_metrics_per_sink() -> None:
    store = MemoryStore()
    sink = ScriptedSink("metrics-probe")

    def mixed(batch: Sequence[Item]) -> SendResult:
        return SendResult(delivered=batch[:2], retry=batch[2:3],
                          rejected=[Rejected(batch[3], "bad_request", "HTTP 400")],
                          error="throttled: HTTP 429", retry_after=1.0)

    sink.answers = [mixed]
    fan = FanoutStage([runner(sink, store, batching={"max_items": 4, "linger": 0.05})])
    with instant_retries():
        await asyncio.gather(*(fan.process(incident(i)) for i in range(4)))
    labels = {"sink": "metrics-probe"}
    assert metrics.value(metrics.SINK_SENT, **labels) == 3
    assert metrics.value(metrics.SINK_RETRIED, **labels) == 1
    assert metrics.value(metrics.SINK_REJECTED, reason="bad_request", **labels) == 1
    assert metrics.value(metrics.SINK_FAILED, reason="throttled", **labels) == 1
    assert metrics.value(metrics.SINK_QUEUE_DEPTH, **labels) == 0
    counts = [s.value for fam in metrics.REGISTRY.collect() for s in fam.samples
              if s.name == "riposte_sink_batch_items_count" and s.labels == labels]
    assert counts == [2.0]  # two requests: the batch of four, then the one retried


@pytest.mark.parametrize(("routing", "item", "expected"), [
    ({}, incident(1), True),
    ({}, event(1), False),  # raw events only when asked for
    ({"kinds": ["event"]}, event(1), True),
    ({"kinds": ["detection"]}, detection(1), True),
    ({"kinds": ["incident"], "min_severity": "critical"}, incident(1, score=92), True),
    ({"kinds": ["incident"], "min_severity": "critical"}, incident(1, score=89), False),
    ({"kinds": ["event"], "min_severity": "medium"}, event(1, score=39), False),
    ({"kinds": ["action"], "min_severity": "critical"}, action(1), True),
    ({"kinds": ["action"], "types": ["ec2.*"]}, action(1), True),
    ({"kinds": ["action"], "types": ["iam.*"]}, action(1), False),
    ({"kinds": ["detection"], "types": ["ct.root_*"]}, detection(1), True),
    ({"kinds": ["incident"], "types": ["PACKAGE_VULN*"]}, incident(1), True),
    ({"kinds": ["incident"], "types": ["Recon:*", "Backdoor:*"]}, incident(1), False),
])
def test_route_table(routing: dict[str, object], item: Item, expected: bool) -> None:
    assert Route(Routing.model_validate(routing)).matches(item) is expected


class BrokenStore(MemoryStore):
    """A state store that is down: every call fails."""

    async def get(self, key: str, *, consistent: bool = True) -> None:
        raise ConnectionError("state store unreachable")

    async def put_if_absent(self, *args: object, **kwargs: object) -> None:
        raise ConnectionError("state store unreachable")

    async def put(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        raise ConnectionError("state store unreachable")


async def test_a_store_outage_costs_at_most_duplicates_never_deliveries(
        caplog: pytest.LogCaptureFixture) -> None:
    store = BrokenStore()
    sink = ScriptedSink("a")
    sink.answers = [SendResult.all_delivered, reject_all(reasons.BAD_REQUEST)]
    fan = FanoutStage([runner(sink, store, batching={"linger": 0})])
    await fan.process(incident(1))  # delivered; the ledger write fails and is logged
    await fan.process(incident(2))  # rejected; the dead-letter write fails and is logged
    assert [i.id for i in sink.received] == ["inc-1", "inc-2"]
    messages = " ".join(r.message for r in caplog.records)
    assert "delivery ledger read failed" in messages
    assert "delivery ledger write failed" in messages
    assert "could not write a sink dead-letter record" in messages
