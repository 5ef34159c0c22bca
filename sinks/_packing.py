"""Packing a batch into API requests bounded by entry count and bytes, sending them,
and sorting each request's answer.

SNS ``PublishBatch``, EventBridge ``PutEvents`` and Security Hub
``BatchImportFindings`` share one shape: at most N entries and B bytes per request,
an entry larger than B can never be sent (it is rejected with a reason, not
retried), a whole request can fail, and otherwise each entry's answer is classified
on its own. This module does the packing, the loop and the sorting once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pipeline.models import Item
from sinks import reasons
from sinks._aws_errors import AwsFailure, CallCounters, classify_exception, error_text
from sinks.base import Rejected, SendResult

log = logging.getLogger(__name__)

Entry = tuple[Item, dict[str, Any]]
RequestResult = tuple[list[Item], list[Item], list[Rejected], str]


def pack(sized: Sequence[tuple[Item, dict[str, Any], int]], *, max_entries: int,
         max_bytes: int, sink: str, unit: str) -> tuple[list[list[Entry]], list[Rejected]]:
    """Group (item, entry, size) into requests; entries over ``max_bytes`` are rejected."""
    requests: list[list[Entry]] = []
    rejected: list[Rejected] = []
    current: list[Entry] = []
    current_bytes = 0
    for item, entry, size in sized:
        if size > max_bytes:
            log.warning("entry too large for the API", extra={
                "sink": sink, "reason": reasons.ENTRY_TOO_LARGE, "bytes": size})
            rejected.append(Rejected(item, reasons.ENTRY_TOO_LARGE,
                                     f"{size} bytes > {max_bytes} per {unit}"))
            continue
        if current and (len(current) >= max_entries or current_bytes + size > max_bytes):
            requests.append(current)
            current, current_bytes = [], 0
        current.append((item, entry))
        current_bytes += size
    if current:
        requests.append(current)
    return requests, rejected


async def send_packed(requests: Sequence[Sequence[Entry]], rejected: list[Rejected],
                      send_one: Callable[[Sequence[Entry]], Awaitable[RequestResult]]
                      ) -> SendResult:
    """Send each request in turn and merge the per-entry outcomes into one result."""
    delivered: list[Item] = []
    retry: list[Item] = []
    error = ""
    for request in requests:
        d, r, j, request_error = await send_one(request)
        delivered.extend(d)
        retry.extend(r)
        rejected.extend(j)
        error = error or request_error
    return SendResult(delivered=tuple(delivered), retry=tuple(retry),
                      rejected=tuple(rejected), error=error)


class Answer:
    """Sorts one request's items into delivered, retry and rejected as AWS answered."""

    def __init__(self) -> None:
        self.delivered: list[Item] = []
        self.retry: list[Item] = []
        self.rejected: list[Rejected] = []
        self.error = ""

    def accepted(self, items: Sequence[Item]) -> None:
        self.delivered.extend(items)

    def failed(self, items: Sequence[Item], failure: AwsFailure) -> None:
        """Transient failures are retried (the first one's text is kept); others rejected."""
        if failure.retry:
            self.retry.extend(items)
            self.error = self.error or error_text(failure)
        else:
            self.rejected.extend(Rejected(i, failure.reason, failure.message) for i in items)

    def result(self) -> RequestResult:
        return self.delivered, self.retry, self.rejected, self.error


def request_failed(exc: BaseException, items: Sequence[Item], calls: CallCounters, *,
                   sink: str, operation: str, **log_extra: Any) -> RequestResult:
    """A whole request raised: count it, log it, and retry or reject every item in it."""
    failure = classify_exception(exc)
    calls.failed(failure)
    log.warning("%s failed", operation, extra={
        "sink": sink, "reason": failure.reason, "retry": failure.retry, **log_extra})
    answer = Answer()
    answer.failed(items, failure)
    return answer.result()
