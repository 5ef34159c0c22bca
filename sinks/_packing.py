"""Packing a batch into API requests bounded by entry count and bytes, and sending them.

SNS ``PublishBatch`` and EventBridge ``PutEvents`` share the same shape: at most N
entries and B bytes per request, an entry larger than B can never be sent (it is
rejected with a reason, not retried), and each request's per-entry answer is
classified on its own. This module does the packing and the loop once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pipeline.models import Item
from sinks import reasons
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
