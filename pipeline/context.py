"""What every component is built with: config, state store, clock and AWS clients.

Stages, sources and sinks are created by ``build(config, ctx)`` functions that
take this one object, so adding a component never changes the runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.aws import AwsClients
from pipeline.clock import WALL_CLOCK, Clock
from pipeline.config import RiposteConfig
from pipeline.state.base import StateStore


@dataclass
class RuntimeContext:
    config: RiposteConfig
    store: StateStore
    aws: AwsClients
    clock: Clock = WALL_CLOCK
    # Replay: containment plans but never applies, and AWS clients refuse mutating calls.
    simulate: bool = False
    # Components may stash shared helpers here (e.g. a role-credential cache).
    extras: dict[str, Any] = field(default_factory=dict)

    async def aclose(self) -> None:
        """Close the state store, then the AWS clients (for commands that opened both)."""
        try:
            await self.store.aclose()
        finally:
            await self.aws.aclose()
