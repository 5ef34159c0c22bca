"""Payload building for Splunk HEC and Datadog: limits, splitting, fields (no network)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from pipeline.models import Event
from sinks import reasons
from sinks.config import DatadogSinkConfig, SplunkHecSinkConfig
from sinks.datadog import DatadogLogsSink
from sinks.splunk_hec import SplunkHecSink
from tests.sink_items import T0, event, incident


def dd(**kw: Any) -> DatadogLogsSink:
    return DatadogLogsSink(DatadogSinkConfig(api_key=SecretStr("k"), **kw))


def hec(**kw: Any) -> SplunkHecSink:
    return SplunkHecSink(SplunkHecSinkConfig(url="http://127.0.0.1:1", token=SecretStr("t"),
                                             **kw))


def padded(n: int, pad: int) -> Event:
    return event(n, attributes={"pad": "x" * pad})


def entry_size(sink: DatadogLogsSink, item: Event) -> int:
    return len(sink.encode(item, 0.0))


def test_datadog_entry_fields() -> None:
    sink = dd(ddtags="env:prod,team:sec", hostname="riposte-1", service="riposte")
    entry = json.loads(sink.encode(incident(1), 0.0))
    assert entry["ddsource"] == "riposte"
    assert entry["ddtags"] == "env:prod,team:sec"
    assert entry["hostname"] == "riposte-1"
    assert entry["service"] == "riposte"
    assert entry["status"] == "critical"
    assert entry["timestamp"] == int(T0.timestamp() * 1000)
    assert entry["message"].startswith("Brute force")
    assert entry["riposte"]["id"] == "inc-1"


def test_datadog_splits_1001_entries_into_1000_and_1() -> None:
    chunks, rejected = dd()._chunks([event(i) for i in range(1001)])
    assert not rejected
    assert [len(items) for items, _ in chunks] == [1000, 1]
    assert all(len(json.loads(body)) == len(items) for items, body in chunks)


def test_datadog_5mb_boundary_is_inclusive() -> None:
    sink = dd()
    base = entry_size(sink, padded(0, 0))
    big = 999_999
    four = [padded(i, big - base) for i in range(4)]
    each = entry_size(sink, four[0])
    assert each == big
    remainder = 5_000_000 - 2 - 4 - 4 * each  # brackets and four commas
    last = padded(4, remainder - base)
    assert entry_size(sink, last) == remainder
    chunks, rejected = sink._chunks([*four, last])
    assert not rejected
    assert len(chunks) == 1 and len(chunks[0][1]) == 5_000_000
    one_more = padded(4, remainder - base + 1)
    chunks, _ = sink._chunks([*four, one_more])
    assert [len(items) for items, _ in chunks] == [4, 1]
    assert all(len(body) <= 5_000_000 for _, body in chunks)


def test_datadog_rejects_an_entry_over_1mb_with_a_reason() -> None:
    sink = dd()
    base = entry_size(sink, padded(0, 0))
    at_limit = padded(1, 1_000_000 - base)
    over = padded(2, 1_000_000 - base + 1)
    chunks, rejected = sink._chunks([at_limit, over, event(3)])
    assert [r.item.id for r in rejected] == ["gd-2"]
    assert rejected[0].reason == reasons.ENTRY_TOO_LARGE
    assert "1000001" in rejected[0].response
    assert [i.id for items, _ in chunks for i in items] == ["gd-1", "gd-3"]


def test_splunk_event_envelope() -> None:
    sink = hec(index="security", sourcetype="riposte:incident", host="riposte-1")
    encoded = json.loads(sink.encode(incident(1), 0.0))
    assert encoded["time"] == T0.timestamp()
    assert encoded["index"] == "security"
    assert encoded["sourcetype"] == "riposte:incident"
    assert encoded["source"] == "riposte"
    assert encoded["host"] == "riposte-1"
    assert encoded["event"]["id"] == "inc-1"


@pytest.mark.parametrize("limit", [4096, 20_000, 100_000])
def test_splunk_payloads_stay_under_the_limit(limit: int) -> None:
    sink = hec(max_payload_bytes=limit)
    items = [padded(i, 300 * (i % 7)) for i in range(200)]
    chunks, rejected = sink._chunks(items)
    assert not rejected
    assert all(len(body) <= limit for _, body in chunks)
    assert [i.id for items_, _ in chunks for i in items_] == [i.id for i in items]


def test_splunk_rejects_an_event_larger_than_a_payload() -> None:
    sink = hec(max_payload_bytes=4096)
    chunks, rejected = sink._chunks([padded(1, 5000), event(2)])
    assert [r.item.id for r in rejected] == ["gd-1"]
    assert rejected[0].reason == reasons.ENTRY_TOO_LARGE
    assert [i.id for items, _ in chunks for i in items] == ["gd-2"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pads=st.lists(st.integers(min_value=0, max_value=6000), min_size=1, max_size=60),
       max_entries=st.integers(min_value=1, max_value=20))
def test_datadog_chunks_respect_every_limit(pads: list[int], max_entries: int) -> None:
    sink = dd(max_payload_bytes=20_000, max_entries=max_entries, max_entry_bytes=5_000)
    items = [padded(i, pad) for i, pad in enumerate(pads)]
    chunks, rejected = sink._chunks(items)
    for chunk_items, body in chunks:
        assert len(body) <= 20_000
        assert 1 <= len(chunk_items) <= max_entries
        entries = json.loads(body)
        assert len(entries) == len(chunk_items)
        assert all(len(sink.encode(i, 0.0)) <= 5_000 for i in chunk_items)
    assert all(len(sink.encode(r.item, 0.0)) > 5_000 for r in rejected)
    sent = [i.id for chunk_items, _ in chunks for i in chunk_items]
    assert sorted(sent + [r.item.id for r in rejected]) == sorted(i.id for i in items)
    assert sent == [i.id for i in items if i.id in set(sent)]  # order kept


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pads=st.lists(st.integers(min_value=0, max_value=6000), min_size=1, max_size=60))
def test_splunk_chunks_respect_the_payload_limit(pads: list[int]) -> None:
    sink = hec(max_payload_bytes=8_192)
    items = [padded(i, pad) for i, pad in enumerate(pads)]
    chunks, rejected = sink._chunks(items)
    assert all(len(body) <= 8_192 for _, body in chunks)
    assert all(len(sink.encode(r.item, 0.0)) > 8_192 for r in rejected)
    sent = [i.id for chunk_items, _ in chunks for i in chunk_items]
    assert len(sent) + len(rejected) == len(items)
