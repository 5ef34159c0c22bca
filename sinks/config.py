"""Sink configuration: one model per sink type, a discriminated union on ``type``.

Each model only sets what its intake needs and the defaults that suit it; the
delivery policy every sink shares is in :mod:`sinks.config_base`. Tokens, API keys
and webhook URLs (which embed a secret) are ``SecretStr`` so they never appear in
a printed config or a log line.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr

from sinks.aws_config import EventBridgeSinkConfig, SecurityHubSinkConfig, SnsSinkConfig
from sinks.config_base import Batching, HttpSinkBase, RateLimit, SinkBase


class JsonLinesSinkConfig(SinkBase):
    type: Literal["jsonl"] = "jsonl"
    name: str = "jsonl"
    # "-" is standard output.
    path: str = "-"
    # fsync the file after each batch (durable on power loss, slower).
    fsync: bool = False
    # A local file is cheap to write: short linger keeps acknowledgements prompt.
    batching: Batching = Batching(max_items=500, linger=0.02)


class SplunkHecSinkConfig(HttpSinkBase):
    type: Literal["splunk_hec"] = "splunk_hec"
    name: str = "splunk_hec"
    # Base URL of the HEC endpoint, e.g. https://splunk.example.com:8088
    url: str
    token: SecretStr
    index: str | None = None
    source: str | None = "riposte"
    sourcetype: str | None = "riposte"
    host: str | None = None
    gzip: bool = False
    # Splunk's default max_content_length is 1 MB (limits.conf [http_input]).
    max_payload_bytes: int = Field(1_000_000, ge=1024, le=800 * 1024 * 1024)
    # Indexer acknowledgement: a batch counts as delivered only once Splunk says it
    # was indexed. Needs a channel id (a GUID); one is generated when not given.
    indexer_ack: bool = False
    channel: str | None = None
    ack_timeout: float = Field(30.0, gt=0, le=3600)
    ack_poll_interval: float = Field(1.0, gt=0, le=60)


class DatadogSinkConfig(HttpSinkBase):
    type: Literal["datadog"] = "datadog"
    name: str = "datadog"
    site: str = "datadoghq.com"
    api_key: SecretStr
    # Overrides for the intake (https://http-intake.logs.{site}) and the API used to
    # validate the key (https://api.{site}); tests point these at a local receiver.
    intake_url: str | None = None
    api_url: str | None = None
    ddsource: str = "riposte"
    ddtags: str = ""
    service: str = "riposte"
    # Default: this machine's host name.
    hostname: str | None = None
    gzip: bool = True
    # Datadog's documented limits (uncompressed): 5 MB per payload, 1,000 entries,
    # 1 MB per entry.
    max_payload_bytes: int = Field(5_000_000, ge=1024, le=5_000_000)
    max_entries: int = Field(1000, ge=1, le=1000)
    max_entry_bytes: int = Field(1_000_000, ge=256, le=1_000_000)
    batching: Batching = Batching(max_items=1000, max_bytes=5_000_000, linger=0.25)


WebhookFormat = Literal["slack", "teams", "discord", "dingtalk", "feishu", "wecom", "generic"]


class WebhookSinkConfig(HttpSinkBase):
    type: Literal["webhook"] = "webhook"
    name: str = "webhook"
    format: WebhookFormat = "generic"
    # Incoming-webhook URLs carry their credential in the path or query: a secret.
    url: SecretStr
    # generic: HMAC-SHA256 key for the X-Riposte-Signature header.
    # dingtalk / feishu: the bot's signing secret ("加签" / signature verification).
    secret: SecretStr | None = None
    # teams: "messagecard" (Office 365 connector) or "adaptive" (Workflows / Power Automate).
    teams_card: Literal["messagecard", "adaptive"] = "messagecard"
    # feishu: "interactive" card or rich-text "post".
    feishu_msg_type: Literal["interactive", "post"] = "interactive"
    # A link shown on every message (a runbook or a console), optional.
    link: str | None = None
    # Chat intakes want one message per item and rate-limit each webhook (Slack: ~1/s).
    batching: Batching = Batching(max_items=1, linger=0)
    rate_limit: RateLimit = RateLimit(rate=1.0, burst=5)
    concurrency: int = Field(1, ge=1, le=256)


SinkConfig = Annotated[
    JsonLinesSinkConfig
    | SplunkHecSinkConfig
    | DatadogSinkConfig
    | WebhookSinkConfig
    | SecurityHubSinkConfig
    | SnsSinkConfig
    | EventBridgeSinkConfig,
    Field(discriminator="type"),
]
