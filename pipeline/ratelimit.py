"""Token buckets: a local one for a single process and a shared one over the state store.

The shared bucket keeps ``tokens`` and ``updated`` in one state-store entry and
takes tokens with compare-and-set, so every worker in a fleet draws from the
same bucket (the containment blast-radius limit, the Security Hub API rate).
Both read time from an injectable clock, so replay limits on event time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pipeline import metrics
from pipeline.clock import WALL_CLOCK, Clock
from pipeline.state.base import StateStore


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``acquire`` waits, ``try_acquire`` does not."""

    def __init__(self, rate: float, burst: float, *, name: str = "bucket",
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = asyncio.sleep) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._clock = clock
        self._updated = clock()
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._waits = metrics.RATE_LIMIT_WAITS.labels(limiter=name)
        self._wait_seconds = metrics.RATE_LIMIT_WAIT_SECONDS.labels(limiter=name)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def try_acquire(self, n: float = 1) -> bool:
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    async def acquire(self, n: float = 1) -> float:
        """Take ``n`` tokens, waiting as long as needed; returns the seconds waited."""
        if n > self.burst:
            raise ValueError(f"cannot take {n} tokens from a bucket of {self.burst}")
        waited = 0.0
        async with self._lock:
            while not self.try_acquire(n):
                delay = (n - self._tokens) / self.rate
                if waited == 0.0:
                    self._waits.inc()
                waited += delay
                await self._sleep(delay)  # type: ignore[misc]
        if waited:
            self._wait_seconds.inc(waited)
        return waited


class SharedTokenBucket:
    """A token bucket stored in a ``StateStore`` entry, safe across processes."""

    def __init__(self, store: StateStore, key: str, rate: float, burst: float, *,
                 clock: Clock = WALL_CLOCK, max_attempts: int = 50) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.store = store
        self.key = f"bucket:{key}"
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_attempts = max_attempts
        # Callers in this process take turns; compare-and-set arbitrates between processes.
        # Without it, concurrent callers here would mostly lose CAS races to each other and
        # run out of attempts with tokens still in the bucket.
        self._local = asyncio.Lock()

    async def try_acquire(self, n: float = 1) -> bool:
        """Take ``n`` tokens if the shared bucket has them; never waits for a refill."""
        async with self._local:
            return await self._try_acquire(n)

    async def _try_acquire(self, n: float) -> bool:
        for _ in range(self.max_attempts):
            now = self.clock.now()
            current = await self.store.get(self.key)
            if current is None:
                tokens, version = self.burst, 0
            else:
                elapsed = max(0.0, now - float(current.value["updated"]))
                tokens = min(self.burst, float(current.value["tokens"]) + elapsed * self.rate)
                version = current.version
            if tokens < n:
                return False
            written = await self.store.compare_and_set(
                self.key, version, {"tokens": tokens - n, "updated": now}
            )
            if written is not None:
                return True
        # Heavy contention: refuse rather than spin; callers treat it as "over the limit".
        return False
