"""Configuration: one TOML file plus environment overrides, validated at start-up.

Models are frozen with ``extra="forbid"``, so a misspelt key is an error naming
the key and the file, found before anything is consumed. Pluggable parts
(sources, sinks, state stores) are discriminated unions on a ``type`` field.

Environment overrides use ``RIPOSTE__SECTION__KEY=value`` (double underscores
nest; values are parsed as JSON when they parse, else taken as strings), so a
container can change one setting without shipping a new file.

Secrets are ``SecretStr``. A secret's value may be given literally, as
``env:NAME`` (read from the environment at start-up) or as
``secretsmanager:SECRET_ID`` / ``secretsmanager:SECRET_ID#json_key`` (fetched from
Secrets Manager at start-up); it is masked wherever the config is printed.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator

from pipeline.actions.config import ContainmentConfig
from pipeline.config_base import Strict
from pipeline.detections.config import DetectionsConfig
from pipeline.errors import ConfigError
from pipeline.gctune import GcPolicy
from pipeline.stages.correlate_config import CorrelateConfig
from pipeline.stages.score_config import ScoreConfig
from sinks.config import SinkConfig

ENV_PREFIX = "RIPOSTE__"


# --- sources ----------------------------------------------------------------------------------
class SqsSourceConfig(Strict):
    type: Literal["sqs"] = "sqs"
    # Names the source in metrics, logs and dead-letter reasons.
    name: str = "sqs"
    # The queue EventBridge (or SNS, or S3 notifications) delivers to.
    queue_url: str
    # Where poison messages go, with their reason as message attributes. Without it,
    # a poison message is left for the queue's own redrive policy to move.
    dead_letter_queue_url: str | None = None
    # Defaults to service.region, then the standard AWS region settings.
    region: str | None = None
    # Concurrent long-pollers.
    pollers: int = Field(2, ge=1, le=64)
    # Long-poll wait per ReceiveMessage (20 is the AWS maximum and the cheapest).
    wait_time_seconds: int = Field(20, ge=0, le=20)
    # Messages per ReceiveMessage (10 is the AWS maximum).
    max_messages: int = Field(10, ge=1, le=10)
    # Visibility given to received messages; extended by the heartbeat while work goes on.
    visibility_timeout: int = Field(60, ge=1, le=43200)
    # Extend visibility of messages still in flight this often (fraction of the timeout).
    heartbeat_fraction: float = Field(0.5, gt=0.05, lt=0.95)
    # Receive count after which a retriable failure is dead-lettered with its reason.
    max_receive_count: int = Field(5, ge=1, le=1000)
    # Backoff before a retriable failure is redelivered: base * 2^(receive count - 1).
    retry_base_delay: float = Field(2.0, ge=0)
    # Upper bound of that backoff, seconds.
    retry_max_delay: float = Field(300.0, ge=0, le=43200)
    # How long an acknowledgement waits to share a DeleteMessageBatch call.
    delete_batch_linger: float = Field(0.05, ge=0, le=5)


class KinesisSourceConfig(Strict):
    type: Literal["kinesis"] = "kinesis"
    # Names the source in metrics, logs and checkpoints.
    name: str = "kinesis"
    stream_name: str
    region: str | None = None
    # Where a shard with no checkpoint starts.
    start: Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"] = "TRIM_HORIZON"
    # Epoch seconds, for start = "AT_TIMESTAMP".
    start_timestamp: float | None = None
    # Records per GetRecords call (AWS maximum 10,000).
    max_records: int = Field(1000, ge=1, le=10000)
    # GetRecords is limited to 5 calls/s per shard by AWS.
    polls_per_second: float = Field(4.0, gt=0, le=5)
    # Pause after an empty GetRecords.
    idle_poll_interval: float = Field(1.0, ge=0)
    # How often ListShards runs to find new (child) shards.
    shard_discovery_interval: float = Field(30.0, ge=1)
    # Seconds between checkpoint writes per shard (and always at shard end and shutdown).
    checkpoint_interval: float = Field(1.0, ge=0)
    # Attempts at a record that fails retriably before it is dead-lettered to the state store.
    max_attempts: int = Field(5, ge=1, le=100)
    retry_base_delay: float = Field(0.5, ge=0)
    # Days a dead-lettered record is kept in the state store before it expires; list and
    # redrive them with `riposte dead-letters`.
    dead_letter_retention_days: float = Field(14.0, gt=0)
    # Fleet mode (leases in the state store); off = this process reads every shard.
    leases: bool = False
    # A lease not renewed for this long is taken over by another worker.
    lease_duration: float = Field(15.0, ge=2)
    # Defaults to host name + process id.
    worker_id: str | None = None


class FilesSourceConfig(Strict):
    """Local files or directories (JSON, JSON lines, .gz): used by replay and tests."""

    type: Literal["files"] = "files"
    name: str = "files"
    # Files or directories of JSON, JSON lines, .gz, CloudTrail log files or SQS dumps.
    paths: list[str]


SourceConfig = Annotated[
    SqsSourceConfig | KinesisSourceConfig | FilesSourceConfig, Field(discriminator="type")
]


# --- state ------------------------------------------------------------------------------------
class SqliteStateConfig(Strict):
    type: Literal["sqlite"] = "sqlite"
    # The database file (WAL mode; processes on one host may share it).
    path: str = "riposte-state.db"
    # Seconds between deletions of expired entries.
    purge_interval: float = Field(300.0, ge=1)


class DynamoDbStateConfig(Strict):
    type: Literal["dynamodb"] = "dynamodb"
    # The table (partition key pk, sort key sk, TTL attribute exp): `riposte init-state`.
    table: str = "riposte-state"
    region: str | None = None
    # Create the table at start-up if it does not exist (needs dynamodb:CreateTable).
    create_if_missing: bool = False


StateConfig = Annotated[SqliteStateConfig | DynamoDbStateConfig, Field(discriminator="type")]


# --- service ----------------------------------------------------------------------------------
class ServiceConfig(Strict):
    name: str = "riposte"
    # Default region for every AWS client (else AWS_REGION / the profile's region).
    region: str | None = None
    # Messages received but not settled, across all sources: the backpressure limit.
    in_flight_limit: int = Field(1000, ge=1, le=100_000)
    # Messages worked on concurrently. A message holds its worker until every required
    # sink accepted its items, so this bounds throughput at concurrency / sink linger
    # (1,000 / 1 s for Security Hub's default batching): keep it near in_flight_limit.
    concurrency: int = Field(1000, ge=1, le=10_000)
    # Larger message bodies are dead-lettered as "oversized" (SQS allows 1 MiB).
    max_message_bytes: int = Field(1024 * 1024, ge=1024, le=16 * 1024 * 1024)
    # A CloudTrail log file named by an S3 notification may be large; cap what we fetch.
    max_object_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    # Seconds from SIGTERM to exit: in-flight work finishes or is released for redelivery.
    shutdown_deadline: float = Field(25.0, gt=0, le=3600)
    # Python's cyclic garbage collector (see pipeline/gctune.py): allocations between
    # young-generation passes (Python's own default, 700, cost ~40% of the CPU under load);
    # 0 keeps Python's thresholds.
    gc_young_threshold: int = Field(50_000, ge=0, le=10_000_000)
    # Freeze what start-up allocated (SDK models, clients) so collections never rescan it.
    gc_freeze: bool = True

    def gc_policy(self) -> GcPolicy:
        return GcPolicy(young_threshold=self.gc_young_threshold, freeze=self.gc_freeze)


class MetricsConfig(Strict):
    # Serve /metrics, /healthz and /readyz.
    enabled: bool = True
    # Use "0.0.0.0" in containers so probes and scrapers can reach it.
    host: str = "127.0.0.1"
    port: int = Field(9400, ge=0, le=65535)


class LoggingConfig(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # JSON lines on stderr, or plain text for a terminal.
    format: Literal["json", "text"] = "json"


class TrustConfig(Strict):
    """Allowlists that decide which events are believed. Empty = not restricted.

    When a list is set it fails closed: an event whose value is missing or not in
    the list is observe-only and never actionable.
    """

    accounts: list[str] = []
    regions: list[str] = []
    sources: list[str] = []
    detail_types: list[str] = []
    # Re-fetch GuardDuty findings by id before trusting them (GetFindings).
    refetch_guardduty: bool = False


class RiposteConfig(Strict):
    service: ServiceConfig = ServiceConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    state: StateConfig = SqliteStateConfig()
    sources: list[SourceConfig] = []
    trust: TrustConfig = TrustConfig()
    detections: DetectionsConfig = DetectionsConfig()
    correlate: CorrelateConfig = CorrelateConfig()
    score: ScoreConfig = ScoreConfig()
    containment: ContainmentConfig = ContainmentConfig()
    sinks: list[SinkConfig] = []

    @model_validator(mode="after")
    def _unique_names(self) -> RiposteConfig:
        for what, names in (("source", [s.name for s in self.sources]),
                            ("sink", [s.name for s in self.sinks])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {what} name(s): {', '.join(dupes)}")
        return self


# --- loading ----------------------------------------------------------------------------------
def _parse_env_value(raw: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw


def apply_env_overrides(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``RIPOSTE__A__B=value`` variables onto the file's data (lists by index)."""
    result: dict[str, Any] = orjson.loads(orjson.dumps(data))
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path:
            continue
        node: Any = result
        for part in path[:-1]:
            if isinstance(node, list):
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
        last = path[-1]
        if isinstance(node, list):
            node[int(last)] = _parse_env_value(raw)
        else:
            node[last] = _parse_env_value(raw)
    return result


def _format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration in {origin}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (misspelt?)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: Mapping[str, Any], *, origin: str = "<config>",
                 env: Mapping[str, str] | None = None) -> RiposteConfig:
    merged = apply_env_overrides(dict(data), os.environ if env is None else env)
    try:
        return RiposteConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from None
    except (IndexError, ValueError, TypeError) as exc:
        raise ConfigError(f"invalid configuration in {origin}: {exc}") from None


def load_config(path: str | Path | None, *, env: Mapping[str, str] | None = None
                ) -> RiposteConfig:
    """Load and validate ``path`` (or defaults only, when None)."""
    if path is None:
        return parse_config({}, origin="defaults", env=env)
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, origin=str(p), env=env)


def masked_dump(config: BaseModel) -> dict[str, Any]:
    """The effective config as plain data with every secret shown as ``**********``."""
    dumped: dict[str, Any] = orjson.loads(config.model_dump_json())
    return dumped


# --- secrets ----------------------------------------------------------------------------------
def secret_reference(secret: SecretStr) -> tuple[str, str] | None:
    """``("env", NAME)`` or ``("secretsmanager", ID[#KEY])`` when the value is a reference."""
    value = secret.get_secret_value()
    for scheme in ("env", "secretsmanager"):
        if value.startswith(f"{scheme}:"):
            return scheme, value[len(scheme) + 1:]
    return None
