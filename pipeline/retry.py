"""Backoff policy in one place, so tests can make every retry instant.

Sinks and sources compute delays here (tenacity's exponential backoff with
jitter) and sleep through ``sleep()``; ``instant_retries()`` swaps the sleep
for a zero-wait one in tests that exercise retry paths.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from tenacity import RetryCallState, wait_exponential, wait_random_exponential
from tenacity.wait import wait_base

_instant = False


def _policy(base: float, cap: float, jitter: bool) -> wait_base:
    """tenacity's exponential backoff: base * 2^(attempt-1), capped; "equal jitter" keeps
    half of it fixed and draws the other half at random, so retries spread out without
    ever collapsing to zero."""
    half_fixed = wait_exponential(multiplier=base / 2, max=cap / 2, exp_base=2)
    if not jitter:
        return half_fixed + half_fixed
    return half_fixed + wait_random_exponential(multiplier=base / 2, max=cap / 2, exp_base=2)


def backoff_delay(attempt: int, *, base: float = 0.5, cap: float = 30.0,
                  jitter: bool = True) -> float:
    """Delay before retry number ``attempt`` (1-based): base * 2^(attempt-1), capped."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, attempt)
    return float(_policy(base, cap, jitter)(state))


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
