"""Trust checks: which events are believed enough to act on.

Anyone who can write to the input queue can forge a "GuardDuty finding", and
GuardDuty itself emits sample findings on request. Before anything downstream may
contain a resource because of an event, the event must:

* come from an allowed account, region, source and detail-type, when those
  allowlists are set (``[trust]`` in the config). A set list fails closed: a
  missing value is not in it;
* not be a GuardDuty sample finding;
* optionally (``trust.refetch_guardduty``) exist in GuardDuty: the finding is
  fetched again by id with ``GetFindings`` (detector id, region and account from
  the finding ARN), and must exist with the same type and account, no lower
  severity and no older ``updatedAt`` than the message claims.

An event that fails is not dropped: it continues as ``observe_only`` with an
``observe_reason`` (``account_not_allowed``, ``sample_finding``,
``refetch_not_found``...) so it is still recorded, and it is counted in
``riposte_untrusted_events{reason}``. A GuardDuty outage or throttling while
re-fetching is a ``RetriableError``: the message is retried rather than trusted or
thrown away.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from pipeline import metrics
from pipeline.aws import AwsClients, aws_error_code
from pipeline.config import RiposteConfig, TrustConfig
from pipeline.context import RuntimeContext
from pipeline.errors import RetriableError
from pipeline.models import Event, EventKind
from pipeline.normalizers.common import is_mapping

log = logging.getLogger(__name__)

REASONS = (
    "sample_finding",
    "account_not_allowed",
    "region_not_allowed",
    "source_not_allowed",
    "detail_type_not_allowed",
    "refetch_not_found",
    "refetch_mismatch",
    "refetch_no_arn",
)

_FINDING_ARN = re.compile(
    r"^arn:aws[a-z-]*:guardduty:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
    r"detector/(?P<detector>[^/]+)/finding/(?P<finding>[^/]+)$")
# GuardDuty answers 400 BadRequestException for a detector or finding id that is not
# the caller's: for a forged message that is "does not exist", not a transient fault.
_NOT_FOUND_CODES = frozenset({"BadRequestException", "ResourceNotFoundException",
                              "NotFoundException", "InvalidInputException"})


_CLOCK_SLACK = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Verdict:
    trusted: bool
    reason: str | None = None
    detail: str = ""


TRUSTED = Verdict(True)


def finding_record(event: Event) -> Mapping[str, Any]:
    """The GuardDuty finding itself, from an EventBridge envelope or a bare finding."""
    raw = event.raw or {}
    detail = raw.get("detail")
    if is_mapping(detail) and ("detail-type" in raw or "arn" in detail):
        return detail
    return raw


def is_sample(event: Event) -> bool:
    if event.sample:
        return True
    service = finding_record(event).get("service")
    if is_mapping(service):
        info = service.get("additionalInfo")
        if isinstance(info, Mapping):
            sample = info.get("sample")
            return sample is True or str(sample).lower() == "true"
    return False


def _severity(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class GuardDutyRefetcher:
    """GetFindings by id, so only findings GuardDuty really holds are trusted."""

    def __init__(self, aws: AwsClients, *, cache_size: int = 4096) -> None:
        self._aws = aws
        # Positive answers only, keyed by (arn, updatedAt): duplicates cost no API call.
        self._cache: OrderedDict[tuple[str, str], Mapping[str, Any]] = OrderedDict()
        self._cache_size = cache_size

    async def fetch(self, arn: str, updated_at: str = "") -> Mapping[str, Any] | None:
        """The finding as GuardDuty has it, or None if it does not exist for us."""
        match = _FINDING_ARN.match(arn)
        if match is None:
            return None
        cache_key = (arn, updated_at)
        cached = self._cache.get(cache_key)
        if cached is not None:
            self._cache.move_to_end(cache_key)
            return cached
        finding_id = match["finding"]
        try:
            client = await self._aws.client("guardduty", region=match["region"])
            response = await client.get_findings(DetectorId=match["detector"],
                                                 FindingIds=[finding_id])
        except Exception as exc:
            code = aws_error_code(exc)
            if code in _NOT_FOUND_CODES:
                return None
            reason = "refetch_access_denied" if code and "AccessDenied" in code \
                else "refetch_transient"
            raise RetriableError(f"GuardDuty GetFindings failed for {finding_id}: "
                                 f"{code or type(exc).__name__}", reason=reason,
                                 component="trust") from exc
        for finding in response.get("Findings") or ():
            if finding.get("Id") == finding_id:
                self._cache[cache_key] = finding
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
                return finding  # type: ignore[no-any-return]
        return None


def fetched_is_sample(finding: Mapping[str, Any]) -> bool:
    """GetFindings (as botocore parses it) carries the sample flag as JSON text in
    ``Service.AdditionalInfo.Value`` (``{"sample":true}``)."""
    service = finding.get("Service")
    info = service.get("AdditionalInfo") if isinstance(service, Mapping) else None
    value = info.get("Value") if isinstance(info, Mapping) else None
    if not isinstance(value, str):
        return False
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, Mapping) and parsed.get("sample") in (True, "true")


class TrustChecker:
    """Decides whether one event is believed; pure allowlists plus the optional re-fetch."""

    def __init__(self, config: TrustConfig, *,
                 refetcher: GuardDutyRefetcher | None = None) -> None:
        self.config = config
        self._accounts = frozenset(config.accounts)
        self._regions = frozenset(config.regions)
        self._sources = frozenset(config.sources)
        self._detail_types = frozenset(config.detail_types)
        # Only the allowlists that are set (none, by default) are checked per event.
        self._allowlists = tuple((what, allowed) for what, allowed in (
            ("account", self._accounts), ("region", self._regions),
            ("source", self._sources), ("detail_type", self._detail_types)) if allowed)
        self.refetcher = refetcher if config.refetch_guardduty else None
        if config.refetch_guardduty and refetcher is None:
            raise ValueError("refetch_guardduty is set but no GuardDutyRefetcher was given")

    def check_static(self, event: Event) -> Verdict:
        """Sample flag and allowlists: no I/O."""
        if is_sample(event):
            return Verdict(False, "sample_finding", "GuardDuty sample finding")
        for what, allowed in self._allowlists:
            value = getattr(event, what)
            if value not in allowed:
                return Verdict(False, f"{what}_not_allowed",
                               f"{what} {value!r} is not in the trust allowlist")
        return TRUSTED

    async def check(self, event: Event) -> Verdict:
        verdict = self.check_static(event)
        if not verdict.trusted or self.refetcher is None:
            return verdict
        if event.kind is not EventKind.GUARDDUTY:
            return verdict
        return await self._refetch(event, self.refetcher)

    async def _refetch(self, event: Event, refetcher: GuardDutyRefetcher) -> Verdict:
        claimed = finding_record(event)
        arn = claimed.get("arn")
        match = _FINDING_ARN.match(arn) if isinstance(arn, str) else None
        if not isinstance(arn, str) or match is None:
            return Verdict(False, "refetch_no_arn", "the finding carries no GuardDuty ARN")
        if claimed.get("id") not in (None, match["finding"]):
            return Verdict(False, "refetch_mismatch",
                           "the finding's id is not the one its ARN names")
        fetched = await refetcher.fetch(arn, str(claimed.get("updatedAt") or ""))
        if fetched is None:
            return Verdict(False, "refetch_not_found", f"GuardDuty has no finding {arn}")
        if fetched_is_sample(fetched):
            return Verdict(False, "sample_finding", "GuardDuty says it is a sample finding")
        mismatches = []
        if claimed.get("type") and fetched.get("Type") != claimed.get("type"):
            mismatches.append("type")
        if claimed.get("accountId") and fetched.get("AccountId") != claimed.get("accountId"):
            mismatches.append("account")
        said, real = _severity(claimed.get("severity")), _severity(fetched.get("Severity"))
        if said is not None and real is not None and said > real:
            mismatches.append("severity")
        # GuardDuty's copy is at least as new as any revision it has published.
        said_at, real_at = _when(claimed.get("updatedAt")), _when(fetched.get("UpdatedAt"))
        if said_at is not None and real_at is not None and said_at > real_at + _CLOCK_SLACK:
            mismatches.append("updatedAt")
        if mismatches:
            return Verdict(False, "refetch_mismatch",
                           f"the message differs from GuardDuty's finding in: "
                           f"{', '.join(mismatches)}")
        return TRUSTED


class TrustStage:
    """Marks events that fail a trust check observe-only (never drops them)."""

    name = "trust"

    def __init__(self, checker: TrustChecker) -> None:
        self.checker = checker
        self._untrusted = {r: metrics.UNTRUSTED.labels(reason=r) for r in REASONS}

    async def process(self, item: Any) -> Sequence[Any]:
        if not isinstance(item, Event) or item.item_kind != "event" or item.observe_only:
            return (item,)
        verdict = await self.checker.check(item)
        if verdict.trusted:
            return (item,)
        reason = verdict.reason or "untrusted"
        counter = self._untrusted.get(reason)
        if counter is None:
            counter = self._untrusted[reason] = metrics.UNTRUSTED.labels(reason=reason)
        counter.inc()
        log.warning("untrusted event made observe-only", extra={
            "event_id": item.id, "kind": item.kind.value, "reason": reason,
            "detail": verdict.detail, "account": item.account, "region": item.region})
        return (replace(item, observe_only=True, observe_reason=reason),)


def build(config: RiposteConfig, ctx: RuntimeContext) -> TrustStage:
    refetcher = GuardDutyRefetcher(ctx.aws) if config.trust.refetch_guardduty else None
    return TrustStage(TrustChecker(config.trust, refetcher=refetcher))
