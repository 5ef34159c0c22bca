"""Every Prometheus metric Riposte exposes, created once, here.

One vocabulary everywhere (Vector's): ``received``, ``processed``, ``sent``,
``errors{stage,error_type}``, ``discarded{reason}``. Hot paths bind children
once (``COUNTER.labels(...)`` kept in an attribute or through the cached helpers
below) instead of looking labels up per event.
"""

from __future__ import annotations

from functools import cache

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_CONTAIN_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 86400)

# --- spine -----------------------------------------------------------------------------------
RECEIVED = Counter("riposte_received_messages", "Messages received from a source",
                   ["source"], registry=REGISTRY)
RECEIVED_BYTES = Counter("riposte_received_bytes", "Bytes received from a source",
                         ["source"], registry=REGISTRY)
PROCESSED = Counter("riposte_processed_messages", "Messages settled, by outcome",
                    ["source", "outcome"], registry=REGISTRY)
EVENTS = Counter("riposte_events", "Normalized events by kind", ["kind"], registry=REGISTRY)
ERRORS = Counter("riposte_errors", "Errors by the stage that raised them and their type",
                 ["stage", "error_type"], registry=REGISTRY)
DISCARDED = Counter("riposte_discarded", "Items deliberately dropped, by reason", ["reason"],
                    registry=REGISTRY)
DEAD_LETTERED = Counter("riposte_dead_lettered", "Messages dead-lettered, by reason",
                        ["source", "reason"], registry=REGISTRY)
IN_FLIGHT = Gauge("riposte_in_flight_messages", "Messages received and not yet settled",
                  registry=REGISTRY)
STAGE_LATENCY = Histogram("riposte_stage_seconds", "Time spent in a stage per item", ["stage"],
                          buckets=_LATENCY_BUCKETS, registry=REGISTRY)
END_TO_END = Histogram("riposte_message_seconds", "Receive to settle, per message", ["source"],
                       buckets=_LATENCY_BUCKETS, registry=REGISTRY)
ACKS = Counter("riposte_acks", "Acknowledgement operations (SQS deletes, checkpoints)",
               ["source", "result"], registry=REGISTRY)
SQS_MESSAGE_AGE = Histogram("riposte_sqs_message_age_seconds",
                            "Age of SQS messages when received (SentTimestamp to now)", ["source"],
                            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 21600),
                            registry=REGISTRY)
VISIBILITY_EXTENSIONS = Counter("riposte_sqs_visibility_extensions",
                                "ChangeMessageVisibility calls for messages still in flight",
                                ["source"], registry=REGISTRY)
KINESIS_BEHIND = Gauge("riposte_kinesis_millis_behind_latest", "MillisBehindLatest per shard",
                       ["source", "shard"], registry=REGISTRY)
KINESIS_CHECKPOINT = Counter("riposte_kinesis_checkpoints", "Checkpoints written per shard",
                             ["source", "shard"], registry=REGISTRY)

# --- detection, correlation, scoring ---------------------------------------------------------
DETECTIONS = Counter("riposte_detections", "Detections fired, by rule", ["rule"],
                     registry=REGISTRY)
INCIDENTS = Counter("riposte_incidents", "Incident revisions emitted, by severity label",
                    ["label", "correlated"], registry=REGISTRY)

# --- containment ------------------------------------------------------------------------------
ACTIONS = Counter("riposte_actions", "Containment decisions by action, mode and status",
                  ["action", "mode", "status"], registry=REGISTRY)
TIME_TO_CONTAIN = Histogram("riposte_time_to_contain_seconds",
                            "From the event's creation (basis=event) or arrival (basis=arrival) "
                            "to containment", ["basis"], buckets=_CONTAIN_BUCKETS,
                            registry=REGISTRY)

# Coalesced reads (pipeline/coalesce.py): calls made, and the keys they answered; keys
# per call is the batching achieved (1.0 means nothing was gained).
CONTAINMENT_READ_CALLS = Counter("riposte_containment_read_calls",
                                 "Describe calls made by containment's coalesced reads",
                                 ["operation"], registry=REGISTRY)
CONTAINMENT_READ_KEYS = Counter("riposte_containment_read_keys",
                                "Resources asked for by containment's coalesced reads",
                                ["operation"], registry=REGISTRY)

TIME_TO_DETECT = Histogram("riposte_time_to_detect_seconds",
                           "From an incident's first event's creation to Riposte receiving it "
                           "(MTTD)", buckets=_CONTAIN_BUCKETS, registry=REGISTRY)
TIME_TO_RECOVER = Histogram("riposte_time_to_recover_seconds",
                            "From containment to recovery (rollback after resolution; MTTR)",
                            buckets=_CONTAIN_BUCKETS, registry=REGISTRY)

# --- sinks ------------------------------------------------------------------------------------
SINK_SENT = Counter("riposte_sink_sent", "Items delivered", ["sink"], registry=REGISTRY)
SINK_FAILED = Counter("riposte_sink_failed", "Failed send attempts by reason",
                      ["sink", "reason"], registry=REGISTRY)
SINK_RETRIED = Counter("riposte_sink_retried", "Items retried", ["sink"], registry=REGISTRY)
SINK_REJECTED = Counter("riposte_sink_rejected", "Items permanently rejected",
                        ["sink", "reason"], registry=REGISTRY)
SINK_BATCH_SIZE = Histogram("riposte_sink_batch_items", "Items per request", ["sink"],
                            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000), registry=REGISTRY)
SINK_BATCH_BYTES = Histogram("riposte_sink_batch_bytes", "Bytes per request", ["sink"],
                             buckets=(1e3, 1e4, 1e5, 5e5, 1e6, 2e6, 5e6), registry=REGISTRY)
SINK_LATENCY = Histogram("riposte_sink_request_seconds", "Request latency", ["sink"],
                         buckets=_LATENCY_BUCKETS, registry=REGISTRY)
SINK_QUEUE_DEPTH = Gauge("riposte_sink_queue_depth", "Items waiting for a batch", ["sink"],
                         registry=REGISTRY)
RATE_LIMIT_WAITS = Counter("riposte_rate_limit_waits", "Times a token bucket made a caller wait",
                           ["limiter"], registry=REGISTRY)
RATE_LIMIT_WAIT_SECONDS = Counter("riposte_rate_limit_wait_seconds",
                                  "Total time spent waiting on a token bucket", ["limiter"],
                                  registry=REGISTRY)


@cache
def discarded(reason: str) -> Counter:
    """The bound ``discarded{reason}`` child; cached so hot paths pay one dict lookup."""
    return DISCARDED.labels(reason=reason)


@cache
def error(stage: str, error_type: str) -> Counter:
    return ERRORS.labels(stage=stage, error_type=error_type)


@cache
def events(kind: str) -> Counter:
    return EVENTS.labels(kind=kind)


def value(metric: Counter | Gauge, **labels: str) -> float:
    """Read a sample's current value (tests and the demo summary use this)."""
    name = metric._name
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name in (name, f"{name}_total") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                return float(sample.value)
    return 0.0


# --- trust checks -----------------------------------------------------------------------------
UNTRUSTED = Counter("riposte_untrusted_events",
                    "Events made observe-only by a trust check, by reason", ["reason"],
                    registry=REGISTRY)

# --- AWS sinks (Security Hub, SNS, EventBridge) -------------------------------------------------
SINK_API_CALLS = Counter("riposte_sink_api_calls",
                         "AWS API requests made by a sink, by operation and result "
                         "(ok, partial, retry, rejected)", ["sink", "operation", "result"],
                         registry=REGISTRY)
