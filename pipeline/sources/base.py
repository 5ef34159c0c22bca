"""The source contract and the in-flight budget that gives the pipeline backpressure.

A source pulls batches and hands out ``Message``s. Each one is settled exactly
once with an ``Outcome`` after every stage and every required sink is done with
it; only then does the source delete it (SQS) or let its checkpoint pass it
(Kinesis). Sources take a slot of the shared ``InFlightBudget`` for every message
they hand out and give it back on settle, so a slow chain stops the receiving
instead of piling messages up in memory.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class OutcomeKind(enum.StrEnum):
    ACK = "ack"  # fully handled (including a deliberate drop)
    RETRY = "retry"  # transient failure: redeliver after ``delay``
    DEAD_LETTER = "dead_letter"  # poison: keep it with ``reason``, never retry


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    reason: str = ""
    delay: float = 0.0
    detail: str = ""

    @classmethod
    def ack(cls) -> Outcome:
        return _ACK

    @classmethod
    def retry(cls, reason: str, delay: float = 0.0, detail: str = "") -> Outcome:
        return cls(OutcomeKind.RETRY, reason, delay, detail)

    @classmethod
    def dead_letter(cls, reason: str, detail: str = "") -> Outcome:
        return cls(OutcomeKind.DEAD_LETTER, reason, 0.0, detail)


_ACK = Outcome(OutcomeKind.ACK)


@dataclass(slots=True, eq=False)
class Message:
    """Raw bytes plus what is needed to acknowledge them."""

    id: str
    body: bytes
    source: str
    received_at: float  # wall clock, when Riposte received it
    sent_at: float | None = None  # when the producer sent it, if the source says
    attributes: Mapping[str, str] = field(default_factory=dict)
    receive_count: int = 1
    # Source-specific: an SQS receipt handle, a Kinesis (shard, sequence number).
    handle: Any = None
    partition: str | None = None


@runtime_checkable
class Source(Protocol):
    name: str

    def messages(self) -> AsyncIterator[Message]:
        """Yield messages until ``stop()`` is called and the last batch is handed out."""
        ...

    async def settle(self, message: Message, outcome: Outcome) -> None: ...

    async def stop(self) -> None:
        """Stop receiving; in-flight messages may still be settled."""
        ...

    async def aclose(self) -> None:
        """Flush pending acknowledgements and release what was never settled."""
        ...


class InFlightBudget:
    """A counting limit on messages received but not yet settled, across sources."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("in-flight limit must be at least 1")
        self.limit = limit
        self._used = 0
        self._freed = asyncio.Event()

    @property
    def in_use(self) -> int:
        return self._used

    async def acquire(self, n: int = 1) -> int:
        """Wait until at least one slot is free; take up to ``n`` and return how many."""
        while self._used >= self.limit:
            self._freed.clear()
            await self._freed.wait()
        got = min(n, self.limit - self._used)
        self._used += got
        return got

    def release(self, n: int = 1) -> None:
        if n <= 0:
            return
        self._used = max(0, self._used - n)
        self._freed.set()
