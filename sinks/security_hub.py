"""Security Hub sink: incidents and detections imported as ASFF findings.

One ``send`` turns each item into a finding (:mod:`sinks.asff`), rejects the
ones that are not valid ASFF before any call is made, and imports the rest with
``BatchImportFindings`` in requests of at most 100 findings and 6 MB. Every
request first takes a token from a bucket (10/s, burst 30 by default: the
account's API limit), local to the process or shared by the fleet through the
state store, so the sink stays within the rate however many batches the fan-out
sends at once. Per-finding failures in ``FailedFindings`` are sorted one by one
into retry (throttling-like codes) or rejected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from pipeline import metrics
from pipeline.aws import AwsClients
from pipeline.clock import WALL_CLOCK
from pipeline.context import RuntimeContext
from pipeline.models import Item
from pipeline.ratelimit import SharedTokenBucket, TokenBucket
from pipeline.serde import dumps
from pipeline.state.base import StateStore
from sinks import asff, reasons
from sinks._aws_errors import (
    AwsFailure,
    CallCounters,
    classify_code,
    classify_exception,
    error_text,
    healthcheck_error,
)
from sinks._packing import Answer, request_failed
from sinks.aws_config import SecurityHubSinkConfig
from sinks.base import Rejected, SendResult

log = logging.getLogger(__name__)

OPERATION = "BatchImportFindings"


class _Prepared:
    """One finding to import, and older revisions of it from the same batch that share its fate."""

    __slots__ = ("finding", "item", "size", "superseded")

    def __init__(self, item: Item, finding: dict[str, Any], size: int) -> None:
        self.item = item
        self.finding = finding
        self.size = size
        self.superseded: list[Item] = []

    @property
    def items(self) -> list[Item]:
        return [self.item, *self.superseded]


class SecurityHubSink:
    """``BatchImportFindings`` with ASFF validation, chunking and an API rate limit."""

    max_batch_items = asff.MAX_BATCH_FINDINGS

    def __init__(self, config: SecurityHubSinkConfig, aws: AwsClients, *,
                 store: StateStore | None = None, max_rate_wait: float = 30.0) -> None:
        self.name = config.name
        self.config = config
        self.aws = aws
        self.region = config.region or aws.region
        self.max_rate_wait = max_rate_wait
        self._context: asff.AsffContext | None = None
        self._context_lock = asyncio.Lock()
        self._calls = CallCounters(self.name, OPERATION)
        self._local: TokenBucket | None = None
        limiter = f"sink:{self.name}:api"
        self._waits = metrics.RATE_LIMIT_WAITS.labels(limiter=limiter)
        self._wait_seconds = metrics.RATE_LIMIT_WAIT_SECONDS.labels(limiter=limiter)
        self._shared: SharedTokenBucket | None = None
        if config.shared_rate_limit:
            if store is None:
                raise ValueError("shared_rate_limit needs a state store")
            # Wall clock, not the runtime's clock: the API's limit is in real seconds even
            # while a replay runs on event time.
            self._shared = SharedTokenBucket(
                store, f"sink:{self.name}:securityhub:{self.region}", config.api_rate,
                config.api_burst, clock=WALL_CLOCK)
        else:
            self._local = TokenBucket(config.api_rate, config.api_burst,
                                      name=limiter)

    async def _client(self) -> Any:
        # Every finding is validated as ASFF before it is sent (sinks.asff.validate), so
        # botocore's second, generic validation of each 100-finding request is skipped.
        return await self.aws.client("securityhub", region=self.region, validate=False)

    async def asff_context(self) -> asff.AsffContext:
        """Account and product ARN, resolved once (STS when the config does not say)."""
        if self._context is not None:
            return self._context
        async with self._context_lock:
            return await self._resolve_context()

    async def _resolve_context(self) -> asff.AsffContext:
        if self._context is None:
            account = self.config.account_id
            if account is None:
                sts = await self.aws.client("sts", region=self.region)
                account = str((await sts.get_caller_identity())["Account"])
            self._context = asff.AsffContext(
                account_id=account, region=self.region,
                product_arn=self.config.product_arn or "",
                recommendation_url=self.config.recommendation_url)
        return self._context

    async def _acquire(self) -> bool:
        """One request's token; False if the shared bucket stayed empty too long."""
        if self._local is not None:
            await self._local.acquire()
            return True
        assert self._shared is not None
        deadline = time.monotonic() + self.max_rate_wait
        pause = 1.0 / self._shared.rate
        started = time.monotonic()
        waited = False
        while not await self._shared.try_acquire():
            if not waited:
                waited = True
                self._waits.inc()
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(pause)
        if waited:
            self._wait_seconds.inc(time.monotonic() - started)
        return True

    def prepare(self, batch: Sequence[Item], ctx: asff.AsffContext
                ) -> tuple[list[_Prepared], list[Rejected]]:
        """Findings to import and the items rejected before any call."""
        rejected: list[Rejected] = []
        by_id: dict[str, _Prepared] = {}
        for item in batch:
            try:
                finding = asff.to_finding(item, ctx)
            except asff.AsffError as exc:
                rejected.append(Rejected(item, exc.reason, str(exc)))
                continue
            problems = asff.validate(finding)
            if problems:
                rejected.append(Rejected(item, "invalid_asff", "; ".join(problems)))
                continue
            size = len(dumps(finding))
            if size > asff.MAX_FINDING_BYTES:
                rejected.append(Rejected(
                    item, reasons.ENTRY_TOO_LARGE,
                    f"{size} bytes > {asff.MAX_FINDING_BYTES} allowed per finding"))
                continue
            # Two revisions of one incident in a batch: import only the newest; the older
            # one is superseded and is delivered, retried or rejected along with it.
            entry = _Prepared(item, finding, size)
            previous = by_id.get(finding["Id"])
            if previous is not None:
                if previous.finding["UpdatedAt"] > finding["UpdatedAt"]:
                    entry, previous = previous, entry
                entry.superseded.extend(previous.items)
            by_id[finding["Id"]] = entry
        for rej in rejected:
            log.warning("finding rejected before import", extra={
                "sink": self.name, "reason": rej.reason, "detail": rej.response[:500]})
        return list(by_id.values()), rejected

    async def send(self, batch: Sequence[Item]) -> SendResult:
        if not batch:
            return SendResult()
        try:
            ctx = await self.asff_context()
        except Exception as exc:
            failure = classify_exception(exc)
            log.warning("cannot resolve the Security Hub account",
                        extra={"sink": self.name, "reason": failure.reason})
            return _all(batch, failure)
        prepared, rejected = self.prepare(batch, ctx)
        delivered: list[Item] = []
        retry: list[Item] = []
        error = ""
        for chunk in _chunks(prepared):
            d, r, j, chunk_error = await self._import(chunk)
            delivered.extend(d)
            retry.extend(r)
            rejected.extend(j)
            error = error or chunk_error
        return SendResult(delivered=tuple(delivered), retry=tuple(retry),
                          rejected=tuple(rejected), error=error)

    async def _import(self, chunk: Sequence[_Prepared]
                      ) -> tuple[list[Item], list[Item], list[Rejected], str]:
        """One request: delivered, retry, rejected, and the first transient error's text."""
        every = [i for p in chunk for i in p.items]
        try:
            client = await self._client()
            # The token is taken right before the request, after anything slow (creating
            # the client), so requests reach the service no faster than the bucket allows.
            if not await self._acquire():
                log.warning("shared Security Hub rate limit kept this batch waiting too long",
                            extra={"sink": self.name, "reason": "rate_limited"})
                return [], every, [], (
                    f"{reasons.THROTTLED}: the shared Security Hub rate limit stayed empty")
            response = await client.batch_import_findings(Findings=[p.finding for p in chunk])
        except Exception as exc:
            return request_failed(exc, every, self._calls, sink=self.name,
                                  operation="BatchImportFindings", findings=len(chunk))
        failed = {f.get("Id", ""): f for f in response.get("FailedFindings") or ()}
        self._calls.count("partial" if failed else "ok")
        answer = Answer()
        for p in chunk:
            entry = failed.get(p.finding["Id"])
            if entry is None:
                answer.accepted(p.items)
                continue
            failure = classify_code(entry.get("ErrorCode"), message=entry.get("ErrorMessage", ""))
            log.warning("finding not imported", extra={
                "sink": self.name, "finding_id": p.finding["Id"], "reason": failure.reason,
                "retry": failure.retry})
            answer.failed(p.items, failure)
        return answer.result()

    async def healthcheck(self) -> None:
        """DescribeHub: credentials accepted, permission granted and the hub enabled."""
        what = f"Security Hub in {self.region}"
        try:
            await self.asff_context()
            client = await self._client()
            await client.describe_hub()
        except Exception as exc:
            raise healthcheck_error(self.name, what, exc) from exc

    async def aclose(self) -> None:
        """Nothing to close: the AWS clients belong to the runtime context."""


def _all(batch: Sequence[Item], failure: AwsFailure) -> SendResult:
    if failure.retry:
        return SendResult.all_retry(batch, error_text(failure))
    return SendResult.all_rejected(batch, failure.reason, failure.message)


def _chunks(prepared: Sequence[_Prepared]) -> list[list[_Prepared]]:
    """Requests of at most 100 findings and 6 MB (with room for the request envelope)."""
    limit = asff.MAX_BATCH_BYTES - 1024
    chunks: list[list[_Prepared]] = []
    current: list[_Prepared] = []
    size = 0
    for p in prepared:
        if current and (len(current) >= asff.MAX_BATCH_FINDINGS or size + p.size + 1 > limit):
            chunks.append(current)
            current, size = [], 0
        current.append(p)
        size += p.size + 1
    if current:
        chunks.append(current)
    return chunks


def build(config: SecurityHubSinkConfig, ctx: RuntimeContext) -> SecurityHubSink:
    return SecurityHubSink(config, ctx.aws, store=ctx.store)
