"""Sink configuration: the union parses every type, typos fail, secrets stay masked."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.config import masked_dump, parse_config
from pipeline.errors import ConfigError
from sinks.config import (
    DatadogSinkConfig,
    JsonLinesSinkConfig,
    SplunkHecSinkConfig,
    WebhookSinkConfig,
)
from sinks.registry import SINK_MODULES, builder

SINKS: list[dict[str, Any]] = [
    {"type": "jsonl", "path": "out.jsonl"},
    {"type": "splunk_hec", "url": "https://splunk.example.test:8088", "token": "hec-SECRET",
     "index": "security", "indexer_ack": True, "gzip": True},
    {"type": "datadog", "api_key": "dd-SECRET", "site": "datadoghq.eu", "required": False,
     "ddtags": "env:prod"},
    {"type": "webhook", "name": "slack", "format": "slack",
     "url": "https://hooks.slack.com/services/T/B/hook-SECRET",
     "routing": {"kinds": ["incident"], "min_severity": "high"}},
    {"type": "webhook", "name": "generic", "url": "https://soar.example.test/in",
     "secret": "hmac-SECRET", "retry": {"max_attempts": 3, "budget": 20}},
]


def test_every_sink_type_parses() -> None:
    cfg = parse_config({"sinks": SINKS}, env={})
    kinds = [type(s) for s in cfg.sinks]
    assert kinds == [JsonLinesSinkConfig, SplunkHecSinkConfig, DatadogSinkConfig,
                     WebhookSinkConfig, WebhookSinkConfig]
    dd = cfg.sinks[2]
    assert isinstance(dd, DatadogSinkConfig)
    assert not dd.required and dd.gzip and dd.max_entries == 1000
    slack = cfg.sinks[3]
    assert isinstance(slack, WebhookSinkConfig)
    assert slack.batching.max_items == 1 and slack.rate_limit.rate == 1.0
    assert cfg.sinks[4].retry.budget == 20


def test_secrets_never_show_in_a_dump() -> None:
    cfg = parse_config({"sinks": SINKS}, env={})
    dumped = json.dumps(masked_dump(cfg))
    assert "SECRET" not in dumped
    assert "SECRET" not in repr(cfg)


@pytest.mark.parametrize(("sink", "message"), [
    ({"type": "splunk_hec", "url": "https://x", "token": "t", "indexr": "main"}, "unknown key"),
    ({"type": "datadog", "api_key": "k", "max_entries": 1001}, "max_entries"),
    ({"type": "webhook", "url": "https://x", "format": "telegram"}, "format"),
    ({"type": "kafka"}, "sinks.0"),
    ({"type": "jsonl", "retry": {"budget": 0}}, "budget"),
])
def test_bad_sink_config_fails_at_load_time(sink: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"sinks": [sink]}, env={})


def test_registry_knows_every_type_of_the_union() -> None:
    assert set(SINK_MODULES) >= {"jsonl", "splunk_hec", "datadog", "webhook", "security_hub",
                                 "sns", "eventbridge"}
    for sink_type in ("jsonl", "splunk_hec", "datadog", "webhook", "security_hub", "sns",
                      "eventbridge"):
        assert callable(builder(sink_type))
    with pytest.raises(ConfigError, match="unknown sink type"):
        builder("kafka")
