"""The sink contract: per item, what happened (Vector's ``RetryAction`` idea).

A sink never raises for an item-level failure. It sorts the batch it was given
into ``delivered``, ``retry`` (transient: 5xx, 429, timeouts, throttling) and
``rejected`` (permanent: 4xx, validation, oversize; with the reason and the
intake's answer), and the fan-out decides what that means for the message's
acknowledgement. Raising is for the sink itself being unusable (bad credentials
found by the healthcheck, closed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pipeline.models import Item


@dataclass(frozen=True, slots=True)
class Rejected:
    item: Item
    reason: str
    response: str = ""


@dataclass(frozen=True, slots=True)
class SendResult:
    delivered: Sequence[Item] = ()
    retry: Sequence[Item] = ()
    rejected: Sequence[Rejected] = ()
    # A hint from the intake (Retry-After) for when to try the ``retry`` items again.
    retry_after: float | None = None
    error: str = field(default="")

    @classmethod
    def all_delivered(cls, batch: Sequence[Item]) -> SendResult:
        return cls(delivered=tuple(batch))

    @classmethod
    def all_retry(cls, batch: Sequence[Item], error: str, retry_after: float | None = None
                  ) -> SendResult:
        return cls(retry=tuple(batch), error=error, retry_after=retry_after)

    @classmethod
    def all_rejected(cls, batch: Sequence[Item], reason: str, response: str = "") -> SendResult:
        return cls(rejected=tuple(Rejected(i, reason, response) for i in batch), error=reason)


@runtime_checkable
class Sink(Protocol):
    name: str

    async def send(self, batch: Sequence[Item]) -> SendResult: ...

    async def healthcheck(self) -> None:
        """Raise if the sink cannot work (unreachable, credentials refused)."""
        ...

    async def aclose(self) -> None: ...
