"""The fan-out against local intakes that behave like Splunk HEC, Datadog and webhooks.

The receivers (tests/httpfakes.py) check auth headers, enforce the documented size
limits, and can be scripted to answer 503, 429 with Retry-After, slowly, or by
resetting the connection; they record what they got so these tests assert what
actually arrived, how often, and how many requests a failure cost.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from pipeline.aws import AwsClients
from pipeline.config import RiposteConfig, parse_config
from pipeline.context import RuntimeContext
from pipeline.errors import RetriableError
from pipeline.models import Item
from pipeline.retry import instant_retries
from pipeline.state.memory import MemoryStore
from sinks import reasons
from sinks.delivery_ledger import dead_letter_key
from sinks.fanout import FanoutStage, SinkHealthError, build
from tests.httpfakes import DatadogFake, Fault, SplunkHecFake, WebhookFake, self_signed
from tests.sink_items import event, incident

pytestmark = pytest.mark.integration

Maker = Callable[..., "Harness"]
HEC_TOKEN = "0f5f3c52-8a8c-4b7e-9d1e-hec-token"
DD_KEY = "dd-api-key-0123456789abcdef"


@pytest.fixture
async def splunk() -> AsyncIterator[SplunkHecFake]:
    async with SplunkHecFake(HEC_TOKEN) as fake:
        yield fake


@pytest.fixture
async def datadog() -> AsyncIterator[DatadogFake]:
    async with DatadogFake(DD_KEY) as fake:
        yield fake


def splunk_cfg(fake: SplunkHecFake, **kw: Any) -> dict[str, Any]:
    return {"type": "splunk_hec", "url": fake.url, "token": HEC_TOKEN,
            "batching": {"max_items": 50, "linger": 0.01},
            "retry": {"max_attempts": 4, "base_delay": 0.01}, **kw}


def datadog_cfg(fake: DatadogFake, **kw: Any) -> dict[str, Any]:
    return {"type": "datadog", "api_key": DD_KEY, "intake_url": fake.url, "api_url": fake.url,
            "batching": {"max_items": 100, "linger": 0.01},
            "retry": {"max_attempts": 4, "base_delay": 0.01}, **kw}


@pytest.fixture
async def make() -> AsyncIterator[Maker]:
    """Harness factory; every fan-out it built is closed at teardown, even on failure."""
    built: list[Harness] = []

    def factory(*sinks: dict[str, Any]) -> Harness:
        built.append(Harness(*sinks))
        return built[-1]

    yield factory
    for h in built:
        await h.fan.aclose(deadline=0.1)


class Harness:
    def __init__(self, *sinks: dict[str, Any]) -> None:
        self.config: RiposteConfig = parse_config({"sinks": list(sinks)}, env={})
        self.store = MemoryStore()
        self.ctx = RuntimeContext(config=self.config, store=self.store, aws=AwsClients())
        self.fan: FanoutStage = build(self.config, self.ctx)

    async def deliver(self, items: Sequence[Item], *, rounds: int = 20,
                      between: Callable[[int], None] | None = None) -> int:
        """Process ``items`` like a queue would: redeliver what raised RetriableError.

        Returns how many redelivery rounds were needed.
        """
        pending = list(items)
        for round_ in range(rounds):
            results = await asyncio.gather(*(self.fan.process(i) for i in pending),
                                           return_exceptions=True)
            failed = []
            for item, res in zip(pending, results, strict=True):
                if isinstance(res, RetriableError):
                    failed.append(item)
                elif isinstance(res, BaseException):
                    raise res
            if not failed:
                return round_
            pending = failed
            if between is not None:
                between(round_)
        raise AssertionError(f"{len(pending)} items never delivered")


def hec_ids(fake: SplunkHecFake) -> Counter[str]:
    return Counter(e["event"]["id"] for e in fake.events)


def dd_ids(fake: DatadogFake) -> Counter[str]:
    return Counter(e["riposte"]["id"] for e in fake.entries)


async def test_end_to_end_every_item_once_with_the_intakes_own_auth(make: Maker,
        splunk: SplunkHecFake, datadog: DatadogFake) -> None:
    h = make(splunk_cfg(splunk, index="security"), datadog_cfg(datadog, ddtags="env:test"))
    await h.fan.start()
    items = [incident(i) for i in range(120)]
    assert await h.deliver(items) == 0
    await h.fan.aclose()
    assert hec_ids(splunk) == Counter({f"inc-{i}": 1 for i in range(120)})
    assert dd_ids(datadog) == Counter({f"inc-{i}": 1 for i in range(120)})
    posts = splunk.requests_to("/services/collector/event")
    assert all(r.headers["Authorization"] == f"Splunk {HEC_TOKEN}" for r in posts)
    assert {e["index"] for e in splunk.events} == {"security"}
    logs = datadog.requests_to("/api/v2/logs")
    assert all(r.headers["DD-API-KEY"] == DD_KEY for r in logs)
    assert all(r.headers["Content-Encoding"] == "gzip" for r in logs)
    assert {e["ddtags"] for e in datadog.entries} == {"env:test"}
    assert not datadog.violations


async def test_sink_down_then_back_every_item_arrives_and_none_twice(make: Maker,
        splunk: SplunkHecFake, datadog: DatadogFake) -> None:
    h = make(splunk_cfg(splunk), datadog_cfg(datadog))
    splunk.down = True  # every request to Splunk is reset

    def heal(round_: int) -> None:
        if round_ == 1:
            splunk.down = False

    items = [incident(i) for i in range(40)]
    with instant_retries():
        rounds = await h.deliver(items, between=heal)
    await h.fan.aclose()
    assert rounds == 2  # two redeliveries while Splunk was down
    assert hec_ids(splunk) == Counter({f"inc-{i}": 1 for i in range(40)})
    # Datadog accepted everything the first time; redeliveries were not resent there.
    assert dd_ids(datadog) == Counter({f"inc-{i}": 1 for i in range(40)})
    assert len(datadog.requests_to("/api/v2/logs")) <= 2


async def test_transient_answers_are_retried_in_place(make: Maker,
        splunk: SplunkHecFake) -> None:
    h = make(splunk_cfg(splunk, timeout=0.3, batching={"max_items": 10, "linger": 0.01}))
    splunk.fail_next(1, 503, body='{"text":"Server is busy","code":9}')
    splunk.reset_next(1)
    splunk.faults.append(Fault(status=200, delay=1.0))  # slower than the client's timeout
    with instant_retries():
        assert await h.deliver([incident(i) for i in range(10)]) == 0
    await h.fan.aclose()
    assert hec_ids(splunk) == Counter({f"inc-{i}": 1 for i in range(10)})
    assert len(splunk.requests) == 4
    assert h.fan.runner("splunk_hec").stats.retried == 30


@pytest.mark.parametrize("failure", ["slow", "reset", "refused", "503"])
async def test_best_effort_sink_that_is_down_never_delays_process(
        make: Maker, splunk: SplunkHecFake, datadog: DatadogFake, failure: str) -> None:
    h = make(splunk_cfg(splunk, batching={"max_items": 1, "linger": 0}),
             datadog_cfg(datadog, required=False, timeout=5,
                         batching={"max_items": 1, "linger": 0},
                         retry={"base_delay": 0.5, "budget": 30}))
    if failure == "slow":
        datadog.delay = 1.5  # each of the ten items would wait this long if it were awaited
    elif failure == "reset":
        datadog.down = True
    elif failure == "refused":
        await datadog.stop()  # nothing listens on the port any more
    else:
        datadog.fail_next(1000, 503, body='{"errors":["Service Unavailable"]}')
    started = time.monotonic()
    for i in range(10):
        await h.fan.process(incident(i))
    elapsed = time.monotonic() - started
    assert elapsed < 1.0
    assert len(hec_ids(splunk)) == 10
    assert dd_ids(datadog) == Counter()
    await h.fan.aclose(deadline=0.1)


async def test_datadog_limits_1001_entries_and_oversize(make: Maker, datadog: DatadogFake) -> None:
    h = make(datadog_cfg(datadog, routing={"kinds": ["event"]},
                         batching={"max_items": 2000, "max_bytes": 64_000_000, "linger": 0.05}))
    items: list[Item] = [event(i) for i in range(1001)]
    oversize = event(5000, attributes={"pad": "x" * 1_000_100})
    await asyncio.gather(*(h.fan.process(i) for i in [*items, oversize]))
    await h.fan.aclose()
    sizes = [len(json.loads(r.body)) for r in datadog.requests_to("/api/v2/logs")]
    assert sorted(sizes) == [1, 1000]
    assert not datadog.violations
    assert "gd-5000" not in dd_ids(datadog)
    record = await h.store.get(dead_letter_key("datadog", oversize))
    assert record is not None and record.value["reason"] == reasons.ENTRY_TOO_LARGE


async def test_datadog_5mb_payload_is_accepted_and_split_beyond(make: Maker,
                                                                datadog: DatadogFake) -> None:
    h = make(datadog_cfg(datadog, gzip=False,
                            routing={"kinds": ["event"]},
                            batching={"max_items": 100, "max_bytes": 64_000_000,
                                      "linger": 0.05}))
    sink = h.fan.runners[0].sink
    base = len(sink.encode(event(0, attributes={"pad": ""}), 0.0))  # type: ignore[attr-defined]
    items = [event(i, attributes={"pad": "x" * (999_999 - base)}) for i in range(4)]
    items.append(event(4, attributes={"pad": "x" * (999_998 - base)}))
    items.append(event(5))
    await asyncio.gather(*(h.fan.process(i) for i in items))
    await h.fan.aclose()
    assert sorted(datadog.payload_sizes)[-1] == 5_000_000
    assert len(datadog.payload_sizes) == 2
    assert not datadog.violations
    assert len(dd_ids(datadog)) == 6


@pytest.mark.parametrize(("header", "value"), [("Retry-After", "3"),
                                               ("X-RateLimit-Reset", "4")])
async def test_429_rate_limit_headers_are_honoured(make: Maker, datadog: DatadogFake, header: str,
                                                   value: str) -> None:
    h = make(datadog_cfg(datadog, retry={"base_delay": 0.01, "max_delay": 0.05}))
    datadog.fail_next(1, 429, body='{"errors":["Too many requests"]}',
                      headers={header: value})
    with instant_retries():
        await h.fan.process(incident(1))
    await h.fan.aclose()
    assert list(h.fan.runner("datadog").stats.recent_delays) == [float(value)]
    assert dd_ids(datadog) == Counter({"inc-1": 1})


@pytest.mark.parametrize("kind", ["splunk", "datadog"])
async def test_bad_token_fails_start_with_a_clear_error(make: Maker, splunk: SplunkHecFake,
                                                        datadog: DatadogFake,
                                                        kind: str) -> None:
    if kind == "splunk":
        h = make(splunk_cfg(splunk, token="wrong-token"))
        expected = r"refused the token.*403.*Invalid token"
    else:
        h = make(datadog_cfg(datadog, api_key="wrong-key"))
        expected = r"refused the API key.*403"
    with pytest.raises(SinkHealthError, match=expected):
        await h.fan.start()
    await h.fan.aclose()


@pytest.mark.parametrize("kind", ["splunk", "datadog"])
async def test_bad_token_at_run_time_stops_the_sink_after_a_bounded_number_of_requests(make: Maker,
        splunk: SplunkHecFake, datadog: DatadogFake, kind: str) -> None:
    if kind == "splunk":
        h = make(splunk_cfg(splunk, token="rotated", concurrency=2,
                               batching={"max_items": 5, "linger": 0}))
        fake: SplunkHecFake | DatadogFake = splunk
    else:
        h = make(datadog_cfg(datadog, api_key="revoked", concurrency=2,
                                batching={"max_items": 5, "linger": 0}))
        fake = datadog
    items = [incident(i) for i in range(200)]
    with instant_retries():
        for chunk in range(0, 200, 20):
            await asyncio.gather(*(h.fan.process(i) for i in items[chunk:chunk + 20]))
    await h.fan.aclose()
    name = h.fan.runners[0].name
    assert name in h.fan.stopped
    assert "403" in h.fan.stopped[name]
    assert len(fake.requests) <= 2  # at most the requests already in flight
    dead = await h.store.scan(f"deadletter:sink:{name}:")
    assert len(dead) == 200


async def test_splunk_indexer_ack(make: Maker) -> None:
    async with SplunkHecFake(HEC_TOKEN, ack=True) as fake:
        fake.ack_after_polls = 2
        h = make(splunk_cfg(fake, indexer_ack=True, ack_poll_interval=0.01, ack_timeout=2))
        await h.fan.start()
        await h.deliver([incident(i) for i in range(5)])
        await h.fan.aclose()
        assert len(hec_ids(fake)) == 5
        acks = fake.requests_to("/services/collector/ack")
        assert len(acks) >= 3
        channel = h.fan.runners[0].sink.channel  # type: ignore[attr-defined]
        assert all(r.headers["X-Splunk-Request-Channel"] == channel
                   for r in fake.requests_to("/services/collector/event"))


async def test_splunk_ack_never_comes_releases_the_message(make: Maker) -> None:
    async with SplunkHecFake(HEC_TOKEN, ack=True) as fake:
        fake.ack_after_polls = None
        h = make(splunk_cfg(fake, indexer_ack=True, ack_poll_interval=0.01,
                               ack_timeout=0.05, retry={"max_attempts": 2}))
        with instant_retries(), pytest.raises(RetriableError, match="retry budget"):
            await h.fan.process(incident(1))
        await h.fan.aclose()
        assert len(fake.requests_to("/services/collector/event")) == 2
        assert h.fan.runners[0].stats.released == 1


async def test_generic_webhook_hmac_is_verified_by_the_receiver(make: Maker) -> None:
    async with WebhookFake(secret="hook-secret") as fake:
        h = make({"type": "webhook", "url": f"{fake.url}/riposte", "secret": "hook-secret",
                     "rate_limit": {"rate": 0}})
        await h.fan.start()
        await h.deliver([incident(i) for i in range(3)])
        await h.fan.aclose()
        assert fake.bad_signatures == 0
        assert sorted(m["item"]["id"] for m in fake.messages) == ["inc-0", "inc-1", "inc-2"]


async def test_webhook_with_the_wrong_secret_is_refused_and_stopped(make: Maker) -> None:
    async with WebhookFake(secret="hook-secret") as fake:
        h = make({"type": "webhook", "url": f"{fake.url}/riposte", "secret": "guess",
                     "rate_limit": {"rate": 0}})
        for i in range(5):
            await h.fan.process(incident(i))
        await h.fan.aclose()
        assert fake.bad_signatures == 1
        assert len(fake.requests) == 1
        assert "unauthorized" in h.fan.stopped["webhook"]


async def test_slack_429_retry_after_and_one_message_per_item(make: Maker) -> None:
    async with WebhookFake() as fake:
        h = make({"type": "webhook", "format": "slack", "url": f"{fake.url}/services/T/B/x",
                     "rate_limit": {"rate": 100, "burst": 10}})
        fake.fail_next(1, 429, body="rate_limited", headers={"Retry-After": "30"})
        with instant_retries():
            await h.deliver([incident(i) for i in range(3)])
        await h.fan.aclose()
        assert 30.0 in h.fan.runners[0].stats.recent_delays
        assert len(fake.messages) == 3
        assert all("blocks" in m for m in fake.messages)


@pytest.mark.parametrize(("fmt", "answer", "outcome"), [
    ("dingtalk", '{"errcode":0,"errmsg":"ok"}', "delivered"),
    ("dingtalk", '{"errcode":130101,"errmsg":"send too fast"}', "retried"),
    ("dingtalk", '{"errcode":310000,"errmsg":"sign not match"}', "stopped"),
    ("dingtalk", '{"errcode":40035,"errmsg":"invalid param"}', "rejected"),
    ("wecom", '{"errcode":0,"errmsg":"ok"}', "delivered"),
    ("wecom", '{"errcode":45009,"errmsg":"api freq out of limit"}', "retried"),
    ("wecom", '{"errcode":93000,"errmsg":"invalid webhook url"}', "stopped"),
    ("feishu", '{"code":0,"msg":"success","data":{}}', "delivered"),
    ("feishu", '{"code":9499,"msg":"too many request"}', "retried"),
    ("feishu", '{"code":19021,"msg":"sign match fail or timestamp is not within one hour"}',
     "stopped"),
    ("feishu", '{"code":19002,"msg":"params error"}', "rejected"),
    ("teams", "1", "delivered"),
    ("teams", "Webhook message delivery failed with error: Microsoft Teams endpoint returned "
              "HTTP error 429 with ContextId ...", "retried"),
    ("slack", "ok", "delivered"),
    ("discord", "", "delivered"),
])
async def test_platform_answers_are_read_beyond_the_status(make: Maker, fmt: str, answer: str,
                                                           outcome: str) -> None:
    async with WebhookFake(answer=answer) as fake:
        h = make({"type": "webhook", "format": fmt,
                  "url": f"{fake.url}/robot/send?access_token=abc", "secret": "SEC1",
                  "rate_limit": {"rate": 0}, "retry": {"max_attempts": 2, "budget": 120}})
        with instant_retries():
            try:
                await h.fan.process(incident(1))
            except RetriableError:
                assert outcome == "retried"
        await h.fan.aclose()
        runner = h.fan.runners[0]
        assert fake.requests[0].query["access_token"] == "abc"
        if fmt == "dingtalk":
            assert "sign" in fake.requests[0].query
        if fmt == "feishu":
            assert "sign" in fake.messages[0] and "timestamp" in fake.messages[0]
        if outcome == "delivered":
            assert runner.stats.delivered == 1
        elif outcome == "retried":
            assert runner.stats.retried == 1 and runner.stats.released == 1
            assert runner.stats.recent_delays[0] == 60.0
        elif outcome == "stopped":
            assert "webhook" in h.fan.stopped
        else:
            assert runner.stats.rejected == 1 and not h.fan.stopped


async def test_splunk_busy_health_fails_start_as_unhealthy(make: Maker,
                                                           splunk: SplunkHecFake) -> None:
    splunk.fail_next(1, 503, body='{"text":"Server is busy","code":9}')
    h = make(splunk_cfg(splunk))
    with pytest.raises(SinkHealthError, match=r"not healthy.*503"):
        await h.fan.start()


async def test_tls_is_verified_by_default_and_a_ca_bundle_is_honoured(
        make: Maker, tmp_path: Path) -> None:
    fake = SplunkHecFake(HEC_TOKEN)
    fake.ssl_context, cert = self_signed(tmp_path)
    async with fake:
        default = make(splunk_cfg(fake))
        with pytest.raises(SinkHealthError, match=r"unreachable.*(?i:certificate)"):
            await default.fan.start()
        with instant_retries(), pytest.raises(RetriableError):
            await default.fan.process(incident(1))
        assert fake.events == []  # a TLS failure never reaches the handler
        trusted = make(splunk_cfg(fake, ca_bundle=str(cert)))
        await trusted.fan.start()
        await trusted.fan.process(incident(2))
        insecure = make(splunk_cfg(fake, verify_tls=False))
        await insecure.fan.process(incident(3))
        assert sorted(hec_ids(fake)) == ["inc-2", "inc-3"]
