"""The contain stage: incidents in, incidents with their actions out, plus one item per action.

The decisions themselves (policy, safety checks, ledger, modes, blast radius) live
in :class:`pipeline.actions.engine.ContainmentEngine`, which the operator commands
share; this stage only adapts it to the chain. Items that are not incidents pass
through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline import metrics
from pipeline.actions.credentials import CredentialBroker
from pipeline.actions.engine import ContainmentEngine
from pipeline.config import RiposteConfig
from pipeline.context import RuntimeContext
from pipeline.models import Incident

BROKER_KEY = "containment.credentials"


class ContainStage:
    name = "contain"

    def __init__(self, engine: ContainmentEngine) -> None:
        self.engine = engine

    def accepts(self, item: Any) -> bool:
        """Incidents; everything else passes."""
        return isinstance(item, Incident)

    async def process(self, item: Any) -> Sequence[Any]:
        if not self.accepts(item):
            return [item]
        if item.revision == 1:
            _observe_time_to_detect(item)
        incident, records = await self.engine.contain(item)
        return [incident, *records]


def _observe_time_to_detect(incident: Incident) -> None:
    """MTTD: from the first event's creation (the producer's clock) to its arrival here."""
    trigger = incident.trigger
    if trigger is None or not trigger.received_at:
        return
    created = trigger.created_at or trigger.time
    metrics.TIME_TO_DETECT.observe(max(0.0, trigger.received_at - created.timestamp()))


def engine_for(ctx: RuntimeContext, config: RiposteConfig | None = None) -> ContainmentEngine:
    """One engine per context; the credential cache is shared through ``ctx.extras``."""
    cfg = (config or ctx.config).containment
    broker = ctx.extras.get(BROKER_KEY)
    if not isinstance(broker, CredentialBroker):
        broker = CredentialBroker(cfg, ctx.aws)
        ctx.extras[BROKER_KEY] = broker
    return ContainmentEngine(cfg, ctx.store, ctx.aws, ctx.clock, simulate=ctx.simulate,
                             broker=broker)


def build(config: RiposteConfig, ctx: RuntimeContext) -> ContainStage:
    return ContainStage(engine_for(ctx, config))
