"""Injectable clocks: wall time live, event time in replay.

Correlation windows, baselines, rate limits and TTLs ask a ``Clock`` for "now"
instead of calling ``time.time()``, so `riposte replay` of last month's archive
gives the answers live processing would have given.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...


class WallClock:
    def now(self) -> float:
        return time.time()


class EventTimeClock:
    """Advances to the newest event time it has been shown; never goes backwards."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance_to(self, when: datetime | float) -> None:
        ts = when.timestamp() if isinstance(when, datetime) else when
        self._now = max(self._now, ts)


def utc_from_epoch(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


WALL_CLOCK = WallClock()
