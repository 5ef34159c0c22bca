"""The blast-radius limit: how many disruptive actions may run per minute.

One token bucket for all actions and, optionally, a tighter one per resource type,
kept in the state store so every worker of a fleet draws from the same tokens. An
action that finds no token is not dropped: it waits for a person's approval, with
the reason saying which limit held it back. The live engine and replay's simulated
response use the same limit under different bucket names, so a backtest never
spends the live fleet's tokens.
"""

from __future__ import annotations

from pipeline.actions.config import RateLimitConfig
from pipeline.clock import Clock
from pipeline.ratelimit import SharedTokenBucket
from pipeline.state.base import StateStore


class BlastRadius:
    def __init__(self, limit: RateLimitConfig, store: StateStore, clock: Clock, *,
                 name: str = "containment") -> None:
        self.limit = limit
        per_minute = limit.actions_per_minute
        self.bucket = SharedTokenBucket(store, name, rate=per_minute / 60.0,
                                        burst=max(1.0, per_minute), clock=clock)
        self.type_buckets = {
            rtype: SharedTokenBucket(store, f"{name}:{rtype}", rate=cap / 60.0,
                                     burst=max(1.0, cap), clock=clock)
            for rtype, cap in limit.per_resource_type.items()}

    async def take(self, resource_type: str) -> bool:
        """One token for an action on ``resource_type``: from its own cap first, if any."""
        capped = self.type_buckets.get(resource_type)
        if capped is not None and not await capped.try_acquire():
            return False
        return await self.bucket.try_acquire()

    def reason(self, resource_type: str) -> str:
        """Why an action on ``resource_type`` found no token (the approval's reason)."""
        cap = self.limit.per_resource_type.get(resource_type)
        return (f"blast-radius limit reached ({self.limit.actions_per_minute:g} actions/min"
                + (f", {cap:g}/min for {resource_type}" if cap else "") + ")")
