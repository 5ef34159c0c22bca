"""AWS sink configs: Security Hub, SNS and EventBridge.

Each model changes the shared delivery defaults (:mod:`sinks.config_base`) to
what its API takes in one call, so the fan-out builds batches the API accepts
without knowing the API: 100 findings for ``BatchImportFindings``, 10 entries for
``PublishBatch`` and ``PutEvents``. The sinks still split larger batches
themselves (by count and by bytes), so a smaller or larger fan-out batch is
never an error.

Security Hub's API rate (10 requests/s with a burst of 30 per account and
region) is enforced by the sink around each ``BatchImportFindings`` call, not by
the fan-out's per-``send`` ``rate_limit``: one ``send`` may become several calls.
``rate_limit`` is therefore left off for these sinks.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from sinks.config_base import Batching, Routing, SinkBase

_ACCOUNT = re.compile(r"^\d{12}$")
_PRODUCT_ARN = re.compile(r"^arn:aws[a-z-]*:securityhub:[a-z0-9-]+:\d{0,12}:product/[^/]+/[^/]+$")
_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")


class SecurityHubSinkConfig(SinkBase):
    type: Literal["security_hub"] = "security_hub"
    name: str = "security_hub"
    # Region of the hub; default: the service region (``[service] region`` / AWS_REGION).
    region: str | None = None
    # The account that calls BatchImportFindings (with the default product ARN it must be
    # the finding's AwsAccountId). Default: asked of STS once at start-up.
    account_id: str | None = None
    # A partner product ARN instead of the custom-integration default
    # ``arn:aws:securityhub:{region}:{account}:product/{account}/default``.
    product_arn: str | None = None
    # A runbook or console link shown as the finding's remediation URL.
    recommendation_url: str | None = None
    # BatchImportFindings requests per second and burst (AWS: 10/s, burst 30 per account
    # and region). Lower them when other tools import findings in the same account.
    api_rate: float = Field(10.0, gt=0, le=1000)
    api_burst: float = Field(30.0, ge=1, le=1000)
    # Draw from one bucket in the state store shared by every worker of the fleet, so N
    # workers together stay within the account's API rate.
    shared_rate_limit: bool = False
    # Incidents carry their containment actions in the finding's remediation text, so
    # actions are not sent as findings of their own unless routed here explicitly.
    routing: Routing = Routing(kinds=["detection", "incident"])
    batching: Batching = Batching(max_items=100, max_bytes=6_000_000, linger=1.0)

    @field_validator("account_id")
    @classmethod
    def _account(cls, value: str | None) -> str | None:
        if value is not None and not _ACCOUNT.match(value):
            raise ValueError("account_id must be 12 digits")
        return value

    @field_validator("product_arn")
    @classmethod
    def _product(cls, value: str | None) -> str | None:
        if value is not None and not _PRODUCT_ARN.match(value):
            raise ValueError(f"not a Security Hub product ARN: {value!r}")
        return value


class SnsSinkConfig(SinkBase):
    type: Literal["sns"] = "sns"
    name: str = "sns"
    # Standard or FIFO (name ending in .fifo) topic. FIFO messages are grouped by
    # incident / resource and deduplicated by item revision.
    topic_arn: str
    region: str | None = None
    # Subject line prefix (email subscribers see it); the rest is severity, kind and title.
    subject_prefix: str = Field("Riposte", max_length=40)
    batching: Batching = Batching(max_items=10, max_bytes=256 * 1024, linger=0.2)

    @field_validator("topic_arn")
    @classmethod
    def _topic(cls, value: str) -> str:
        if not _TOPIC_ARN.match(value):
            raise ValueError(f"not an SNS topic ARN: {value!r}")
        return value


class EventBridgeSinkConfig(SinkBase):
    type: Literal["eventbridge"] = "eventbridge"
    name: str = "eventbridge"
    # A custom event bus (name or ARN) so other automation subscribes to Riposte's events
    # with rules on ``source`` and ``detail-type`` without seeing the account's default bus.
    event_bus: str = "default"
    region: str | None = None
    source: str = Field("riposte", min_length=1, max_length=256)
    # detail-type per item kind; missing kinds use the defaults ("Riposte Incident",
    # "Riposte Detection", "Riposte Containment Action", "Riposte Event").
    detail_types: dict[Literal["incident", "detection", "action", "event"], str] = {}
    batching: Batching = Batching(max_items=10, max_bytes=256 * 1024, linger=0.2)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if value.startswith("aws."):
            raise ValueError("source may not start with 'aws.' (reserved for AWS services)")
        return value
