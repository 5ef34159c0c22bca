"""What each sink has already accepted, and what it refused, kept in the state store.

A message is redelivered when any required sink failed, so the sinks that had
already accepted its items would otherwise receive them twice. After a sink
accepts a batch the fan-out writes ``delivered:<sink>:<item_id>`` for each item (one
``put_many``, with a TTL longer than any queue's retention); before sending a batch
it looks all its keys up at once (``get_many``).
Items a sink refused for good are written as ``deadletter:sink:<sink>:<item_id>``
with the intake's answer, so nothing refused is lost silently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pipeline.clock import WALL_CLOCK, Clock
from pipeline.models import Item, item_id
from pipeline.serde import to_jsonable
from pipeline.state.base import StateStore
from sinks.base import Rejected

log = logging.getLogger(__name__)

DEFAULT_TTL = 7 * 86400.0
DEAD_LETTER_TTL = 30 * 86400.0
# The intake's answer is kept for a person to read, not the whole body.
MAX_RESPONSE_CHARS = 2000


def delivered_key(sink: str, item: Item) -> str:
    return f"delivered:{sink}:{item_id(item)}"


DEAD_LETTER_PREFIX = "deadletter:sink:"


def dead_letter_key(sink: str, item: Item) -> str:
    return f"{DEAD_LETTER_PREFIX}{sink}:{item_id(item)}"


class DeliveryLedger:
    def __init__(self, store: StateStore, *, clock: Clock = WALL_CLOCK,
                 ttl: float = DEFAULT_TTL, dead_letter_ttl: float = DEAD_LETTER_TTL) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self.dead_letter_ttl = dead_letter_ttl

    async def delivered(self, sink: str, item: Item) -> bool:
        """True when ``sink`` already accepted this item revision."""
        return await self.store.get(delivered_key(sink, item), consistent=False) is not None

    async def delivered_many(self, sink: str, items: Sequence[Item]) -> set[str]:
        """The ids of the items ``sink`` already accepted: one store round trip a batch."""
        keys = {delivered_key(sink, it): item_id(it) for it in items}
        found = await self.store.get_many(list(keys))
        return {keys[k] for k in found}

    async def record_delivered(self, sink: str, items: Sequence[Item], *,
                               ttl: float | None = None) -> None:
        """Remember deliveries; a failed write only risks a duplicate, so it is logged."""
        if not items:
            return
        now = self.clock.now()
        try:
            await self.store.put_many([(delivered_key(sink, it), {"at": now}) for it in items],
                                      ttl=ttl or self.ttl)
        except Exception as exc:
            log.warning("delivery ledger write failed; a redelivery may send duplicates",
                        extra={"sink": sink, "failures": len(items), "error": repr(exc)})

    async def record_rejected(self, sink: str, rejected: Sequence[Rejected]) -> None:
        now = self.clock.now()
        for rej in rejected:
            value = {
                "sink": sink,
                "item_id": item_id(rej.item),
                "item_kind": rej.item.item_kind,
                "reason": rej.reason,
                "response": rej.response[:MAX_RESPONSE_CHARS],
                "at": now,
                "item": to_jsonable(rej.item),
            }
            try:
                await self.store.put(dead_letter_key(sink, rej.item), value,
                                     ttl=self.dead_letter_ttl)
            except Exception as exc:
                log.error("could not write a sink dead-letter record",
                          extra={"sink": sink, "item_id": item_id(rej.item),
                                 "reason": rej.reason, "error": repr(exc)})
