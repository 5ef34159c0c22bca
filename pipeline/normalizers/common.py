"""Helpers every normalizer shares: time parsing, field access with clear errors, ARNs, tags.

AWS payloads are wide and change over time, so the normalizers validate only the
fields they read. The helpers here turn a wrong type or a missing required field
into one ``PermanentError(reason="invalid_event")`` that names the field, and
treat everything optional leniently (a wrong-typed optional field is ignored,
never fatal), because AWS adds and reshapes fields without notice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeGuard, TypeVar

from pydantic import BaseModel, ValidationError

from pipeline.errors import PermanentError
from pipeline.models import RawRecord, ResourceRef, Severity, SeverityLabel

COMPONENT = "normalize"
INVALID = "invalid_event"

M = TypeVar("M", bound=BaseModel)


def invalid(message: str, *, reason: str = INVALID) -> PermanentError:
    """A validation failure of a known event kind: the message can never succeed."""
    return PermanentError(message, reason=reason, component=COMPONENT)


def validate(model: type[M], data: Mapping[str, Any], what: str) -> M:
    """Validate ``data`` with a small lenient model, mapping errors to ``invalid_event``.

    The message lists every failing field (location and pydantic's short message)
    but never the values, which may be large or sensitive.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        )
        raise invalid(f"{what}: {problems}") from None


# --- lenient field access -------------------------------------------------------------------
def obj(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty mapping (optional sub-objects).

    JSON objects are always ``dict`` here (orjson), and a concrete ``dict`` check is
    several times cheaper than the ``Mapping`` ABC on this hot path.
    """
    return value if isinstance(value, dict) else _EMPTY


def is_mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    """``isinstance(value, Mapping)``, with the common answers (a dict, None) found without
    the ABC's instance check, which costs a Python-level call each time."""
    return value.__class__ is dict or (value is not None and isinstance(value, Mapping))


def lst(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def opt_str(value: Any) -> str | None:
    """A non-empty string, or None for anything else."""
    return value if isinstance(value, str) and value else None


def opt_num(value: Any) -> float | None:
    """A finite number (bool excluded); numeric strings such as ``"7.5"`` are accepted."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        num = float(value)
    elif isinstance(value, str):
        try:
            num = float(value)
        except ValueError:
            return None
    else:
        return None
    return num if math.isfinite(num) else None


def opt_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "yes"):
            return True
        if low in ("false", "no"):
            return False
    return None


def str_list(value: Any) -> list[str]:
    return [v for v in lst(value) if isinstance(v, str) and v]


_EMPTY: Mapping[str, Any] = {}


# --- time -----------------------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FORMATS = (
    "%b %d, %Y, %I:%M:%S %p",  # Inspector console export: "Mar 20, 2023, 6:08:05 PM"
    "%a %b %d %H:%M:%S.%f UTC %Y",  # Inspector docs: "Wed Sep 04 16:59:44.356 UTC 2024"
    "%a %b %d %H:%M:%S UTC %Y",
    "%b %d, %Y %I:%M:%S %p",
    "%Y-%m-%dT%H:%M:%S.%f%z",
)
_LONG_FRACTION = re.compile(r"(\.\d{6})\d+")
_MAX_TIME_TEXT = 64
_CLOUDTRAIL_TIME_LEN = len("2026-01-01T00:00:00Z")


def parse_time(value: Any) -> datetime | None:
    """Parse the timestamp shapes seen in AWS events into an aware UTC datetime.

    ISO 8601 (with ``Z``, offsets, a space separator or nanoseconds), epoch
    seconds or milliseconds, Inspector's human formats, and the
    ``{"__class__": "datetime", ...}`` objects in recorded boto responses.
    Anything else gives None so the caller can fall back to another field.
    """
    if isinstance(value, str):
        if len(value) == _CLOUDTRAIL_TIME_LEN and value[-1] == "Z":
            # CloudTrail's "2026-01-01T00:00:00Z" is already UTC. Each record has its
            # own second, so the cache below would mostly miss: parse it directly.
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                pass
        # No timestamp format is longer; the bound also keeps the cache small.
        return _parse_text(value) if len(value) <= _MAX_TIME_TEXT else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        ts = float(value)
        if not math.isfinite(ts) or abs(ts) > 1e15:
            return None
        if abs(ts) > 1e11:  # milliseconds
            ts /= 1000.0
        try:
            return datetime.fromtimestamp(ts, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, dict) and value.get("__class__") == "datetime":
        try:
            return datetime(
                int(value["year"]), int(value["month"]), int(value["day"]),
                int(value.get("hour", 0)), int(value.get("minute", 0)),
                int(value.get("second", 0)), int(value.get("microsecond", 0)), tzinfo=UTC,
            )
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
    if isinstance(value, datetime):
        return _as_utc(value)
    return None


def _as_utc(value: datetime) -> datetime | None:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 with an offset
        return None


@lru_cache(maxsize=4096)
def _parse_text(value: str) -> datetime | None:
    """Cached: one event repeats its timestamps, and a burst of findings shares them."""
    text = value.strip()
    if not text:
        return None
    try:
        return _as_utc(datetime.fromisoformat(text))
    except ValueError:
        other = _parse_other(text)
        return _as_utc(other) if other is not None else None


_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
# "Wed Sep 04 16:59:44.356 UTC 2024" (Inspector docs) and "Mar 20, 2023, 6:08:05 PM"
# (Inspector console): parsed by hand because strptime costs ~10 µs a call.
_INSPECTOR_DOCS = re.compile(r"[A-Z][a-z]{2} ([A-Z][a-z]{2}) (\d{1,2}) (\d{1,2}):(\d{2}):(\d{2})"
                             r"(?:\.(\d{1,6}))? UTC (\d{4})")
_CONSOLE = re.compile(r"([A-Z][a-z]{2}) (\d{1,2}), (\d{4}),? (\d{1,2}):(\d{2}):(\d{2}) ([AP]M)")


def _fast_formats(text: str) -> datetime | None:
    m = _INSPECTOR_DOCS.fullmatch(text)
    if m is not None and m.group(1) in _MONTHS:
        mon, day, hh, mm, ss, frac, year = m.groups()
        micro = int((frac or "0").ljust(6, "0"))
        return datetime(int(year), _MONTHS[mon], int(day), int(hh), int(mm), int(ss), micro)
    m = _CONSOLE.fullmatch(text)
    if m is not None and m.group(1) in _MONTHS:
        mon, day, year, hh, mm, ss, ampm = m.groups()
        hour = int(hh)
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm == "PM" else 0)
        return datetime(int(year), _MONTHS[mon], int(day), hour, int(mm), int(ss))
    return None


def _parse_other(text: str) -> datetime | None:
    try:
        fast = _fast_formats(text)
    except ValueError:  # day 31 of February and the like
        return None
    if fast is not None:
        return fast
    text = _LONG_FRACTION.sub(r"\1", text)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    for fmt in _FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def first_time(*values: Any) -> datetime | None:
    for value in values:
        parsed = parse_time(value)
        if parsed is not None:
            return parsed
    return None


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


# --- envelope -------------------------------------------------------------------------------
@dataclass(slots=True)
class Envelope:
    """What surrounded a finding or record: the EventBridge envelope and the raw record.

    ``shape`` is ``eventbridge``, ``raw`` (a bare finding/record) or ``placebo``
    (a recorded API response). Normalizers fall back to the envelope's account,
    region and time when the inner document lacks them. Not frozen: it never leaves
    the stage, and a plain slotted init is cheaper on the hot path.
    """

    record: RawRecord
    shape: str = "raw"
    id: str | None = None
    source: str | None = None
    detail_type: str | None = None
    account: str | None = None
    region: str | None = None
    time: datetime | None = None
    resources: tuple[str, ...] = ()
    extra_origin: Mapping[str, Any] = field(default_factory=dict)

    def origin(self, **more: Any) -> dict[str, Any]:
        rec = self.record
        origin: dict[str, Any] = dict(rec.origin)
        origin["message_id"] = rec.message_id
        origin["index"] = rec.index
        origin["envelope"] = rec.envelope
        origin["shape"] = self.shape
        if self.id is not None:
            origin["eventbridge_id"] = self.id
        if self.extra_origin:
            origin.update(self.extra_origin)
        if more:
            origin.update(more)
        return origin

    def fallback_time(self) -> datetime:
        """Envelope time, else arrival time: a document with no usable time still gets one."""
        if self.time is not None:
            return self.time
        received = self.record.received_at
        if received > 0:
            return datetime.fromtimestamp(received, UTC)
        return _EPOCH


# --- ARNs and resources ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Arn:
    partition: str
    service: str
    region: str
    account: str
    resource: str


def parse_arn(value: Any) -> Arn | None:
    if not isinstance(value, str) or not value.startswith("arn:"):
        return None
    parts = value.split(":", 5)
    if len(parts) < 6:
        return None
    return Arn(parts[1], parts[2], parts[3], parts[4], parts[5])


def region_from_arn(value: Any) -> str | None:
    arn = parse_arn(value)
    return arn.region or None if arn is not None else None


def account_from_arn(value: Any) -> str | None:
    arn = parse_arn(value)
    return arn.account or None if arn is not None else None


def tags_from_list(value: Any) -> dict[str, str]:
    """GuardDuty's ``[{"key": k, "value": v}]`` (either case) or a plain dict, as a dict."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items() if v is not None}
    tags: dict[str, str] = {}
    for item in lst(value):
        if isinstance(item, dict):
            key = item.get("key", item.get("Key"))
            if isinstance(key, str):
                val = item.get("value", item.get("Value"))
                tags[key] = "" if val is None else str(val)
    return tags


def lambda_base_arn(arn: str) -> str:
    """A Lambda function ARN without its version or alias qualifier (one id per function)."""
    parts = arn.split(":")
    if len(parts) > 7 and parts[2] == "lambda" and parts[5] == "function":
        return ":".join(parts[:7])
    return arn


def resource_from_arn(value: str, *, account: str | None = None,
                      region: str | None = None) -> ResourceRef:
    """Best-effort typed resource from an ARN (CloudTrail ``resources``, envelope ARNs)."""
    arn = parse_arn(value)
    if arn is None:
        return ResourceRef(type="other", id=value, account=account, region=region)
    acct = arn.account or account
    reg = arn.region or region
    svc, res = arn.service, arn.resource
    if svc == "ec2" and res.startswith("instance/"):
        return ResourceRef("ec2.instance", res.split("/", 1)[1], value, acct, reg)
    if svc == "iam":
        if res.startswith("user/"):
            return ResourceRef("iam.user", res.rsplit("/", 1)[-1], value, acct, None)
        if res.startswith("role/"):
            return ResourceRef("iam.role", res.rsplit("/", 1)[-1], value, acct, None)
        if res == "root":
            return ResourceRef("aws.account", arn.account or value, value, acct, None)
    if svc == "s3" and res and "/" not in res:
        return ResourceRef("s3.bucket", res, value, acct, reg)
    if svc == "lambda" and res.startswith("function:"):
        base = lambda_base_arn(value)
        return ResourceRef("lambda.function", base, base, acct, reg)
    if svc == "eks" and res.startswith("cluster/"):
        return ResourceRef("eks.cluster", res.split("/", 1)[1], value, acct, reg)
    if svc == "ecs" and res.startswith("task/"):
        return ResourceRef("ecs.task", value, value, acct, reg)
    return ResourceRef("other", value, value, acct, reg)


def dedupe(resources: list[ResourceRef]) -> tuple[ResourceRef, ...]:
    """Keep the first resource per key, preserving order (the first is the primary)."""
    if len(resources) < 2:  # most events name one resource: nothing to compare
        return tuple(resources)
    seen: set[str] = set()
    out: list[ResourceRef] = []
    for res in resources:
        key = res.key
        if key not in seen:
            seen.add(key)
            out.append(res)
    return tuple(out)


GENERATED_PREFIX = "GeneratedFinding"


def looks_generated(*values: Any) -> bool:
    """True when any value is one of GuardDuty's ``GeneratedFinding*`` sample placeholders."""
    return any(isinstance(v, str) and v.startswith(GENERATED_PREFIX) for v in values)


# --- severity -------------------------------------------------------------------------------
_LABEL_SCORES = {
    # Security Hub's own mapping when only a label is given (ASFF docs).
    "INFORMATIONAL": 0, "LOW": 1, "MEDIUM": 40, "HIGH": 70, "CRITICAL": 90,
}


def label_of(value: Any) -> SeverityLabel | None:
    """A source label (``HIGH``, ``informational``...) as Riposte's label; UNTRIAGED is None."""
    if not isinstance(value, str):
        return None
    try:
        return SeverityLabel(value.strip().lower())
    except ValueError:
        return None


def severity_from_label(label: SeverityLabel, score: float | None,
                        native: str | float | None) -> Severity:
    """Trust the source's label; use its score when given, else the label's floor."""
    if score is None:
        score = _LABEL_SCORES[label.name]
    clamped = max(0, min(100, round(score)))
    return Severity(native=native, score=clamped, label=label)
