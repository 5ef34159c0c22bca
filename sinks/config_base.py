"""What every sink config shares: a name, required or best-effort, routing and delivery policy.

Delivery policy (batching, concurrency, rate limit, retries) lives here rather than
in each sink so the fan-out applies it the same way to every intake; a sink type
only changes the defaults that suit its intake (a chat webhook sends one message
per item, Security Hub takes 100 findings per call).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config_base import Strict


class Routing(Strict):
    """What a sink receives."""

    kinds: list[Literal["event", "detection", "incident", "action"]] = [
        "detection", "incident", "action"]
    min_severity: Literal["informational", "low", "medium", "high", "critical"] = "informational"
    # fnmatch patterns over event types, an incident's finding types and action kinds;
    # empty = all.
    types: list[str] = []


class Batching(Strict):
    """A batch is sent when it holds ``max_items`` or ``max_bytes``, or ``linger`` has passed."""

    max_items: int = Field(100, ge=1, le=10_000)
    # Estimated from each item's JSON size; sinks still split to their intake's exact limit.
    max_bytes: int = Field(1_000_000, ge=1024, le=64 * 1024 * 1024)
    # Seconds the first item of a batch waits for company; 0 sends at once.
    linger: float = Field(0.2, ge=0, le=60)


class RateLimit(Strict):
    """Requests per second to the intake; ``rate = 0`` disables the limit."""

    rate: float = Field(0.0, ge=0)
    burst: float = Field(10.0, ge=1)
    # Draw from a bucket in the state store shared by every worker (a fleet-wide API limit)
    # instead of a bucket in this process.
    shared: bool = False


class RetryPolicy(Strict):
    """Transient failures are retried with exponential backoff and full jitter.

    ``budget`` bounds how long a message may wait on this sink: when it runs out
    (or ``max_attempts`` is reached) the items are released, and for a required
    sink the message goes back to the queue for redelivery instead of holding a
    worker while the intake is down.
    """

    max_attempts: int = Field(6, ge=1, le=100)
    base_delay: float = Field(0.5, ge=0)
    max_delay: float = Field(30.0, ge=0)
    budget: float = Field(60.0, gt=0, le=3600)


class SinkBase(Strict):
    name: str
    # Required: a message is acknowledged only after this sink delivered or rejected it.
    # Best-effort: never holds an acknowledgement back; failures are counted.
    required: bool = True
    routing: Routing = Routing()
    batching: Batching = Batching()
    # Requests in flight at once to this sink.
    concurrency: int = Field(4, ge=1, le=256)
    rate_limit: RateLimit = RateLimit()
    retry: RetryPolicy = RetryPolicy()
    # Record deliveries in the state store so a redelivered message is not sent twice.
    ledger: bool = True
    ledger_ttl: float = Field(7 * 86400.0, gt=0)


class HttpSinkBase(SinkBase):
    """Sinks that talk HTTP: timeouts and TLS (verification is on unless turned off)."""

    timeout: float = Field(10.0, gt=0, le=300)
    verify_tls: bool = True
    # A PEM bundle of CAs to trust instead of the system's (a private Splunk, a proxy).
    ca_bundle: str | None = None
