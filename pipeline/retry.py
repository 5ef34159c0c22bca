"""Backoff policy in one place, so tests can make every retry instant.

Sinks and sources compute delays here (exponential with full jitter, like the
AWS SDKs) and sleep through ``sleep()``; ``instant_retries()`` swaps the sleep
for a zero-wait one in tests that exercise retry paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator

_instant = False


def backoff_delay(attempt: int, *, base: float = 0.5, cap: float = 30.0,
                  jitter: bool = True) -> float:
    """Delay before retry number ``attempt`` (1-based): base * 2^(attempt-1), capped."""
    ceiling = min(cap, base * (2.0 ** max(0, attempt - 1)))
    if not jitter:
        return ceiling
    delay: float = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not crypto
    return delay


async def sleep(seconds: float) -> None:
    await asyncio.sleep(0 if _instant else seconds)


def retries_are_instant() -> bool:
    return _instant


@contextlib.contextmanager
def instant_retries() -> Iterator[None]:
    global _instant  # noqa: PLW0603 - one process-wide switch, like stamina's
    previous, _instant = _instant, True
    try:
        yield
    finally:
        _instant = previous
