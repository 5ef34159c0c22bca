"""Build a runnable pipeline from a validated config: state, sources, chain, sinks.

The order of stages is fixed here, once:

    decode → normalize → trust  |  detect → correlate → score → contain → fanout
    (stateless prefix)          |  (per-resource lane)

Every component is created by its module's ``build(config, ctx)`` factory, so a
new stage or sink never changes the runner.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.aws import AwsClients
from pipeline.chain import Chain, Stage
from pipeline.clock import WALL_CLOCK, Clock
from pipeline.config import KinesisSourceConfig, RiposteConfig, SqsSourceConfig
from pipeline.context import RuntimeContext
from pipeline.sources.base import InFlightBudget, Source
from pipeline.state.base import StateStore


@dataclass
class Pipeline:
    ctx: RuntimeContext
    chain: Chain
    sources: list[Source] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    fanout: Any = None

    async def aclose(self) -> None:
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                await close()


async def open_context(config: RiposteConfig, *, clock: Clock = WALL_CLOCK,
                       store: StateStore | None = None, simulate: bool = False
                       ) -> RuntimeContext:
    from pipeline.state.factory import open_store

    aws = AwsClients(config.service.region)
    if store is None:
        store = await open_store(config.state, aws, clock)
    return RuntimeContext(config=config, store=store, aws=aws, clock=clock, simulate=simulate)


def build_stages(config: RiposteConfig, ctx: RuntimeContext
                 ) -> tuple[list[Stage], list[Stage], Any]:
    """The stateless prefix, the laned stages, and the fan-out (for start/close)."""
    from pipeline import trust
    from pipeline.sources import envelopes
    from pipeline.stages import contain, correlate, detect, normalize, score
    from sinks import fanout

    prefix: list[Stage] = [
        envelopes.build(config, ctx),
        normalize.build(config, ctx),
        trust.build(config, ctx),
    ]
    out = fanout.build(config, ctx)
    laned: list[Stage] = [
        detect.build(config, ctx),
        correlate.build(config, ctx),
        score.build(config, ctx),
        contain.build(config, ctx),
        out,
    ]
    return prefix, laned, out


def build_sources(config: RiposteConfig, ctx: RuntimeContext, budget: InFlightBudget
                  ) -> list[Source]:
    sources: list[Source] = []
    for source_config in config.sources:
        if isinstance(source_config, SqsSourceConfig):
            from pipeline.sources import sqs

            sources.append(sqs.build(source_config, ctx, budget))
        elif isinstance(source_config, KinesisSourceConfig):
            from pipeline.sources import kinesis

            sources.append(kinesis.build(source_config, ctx, budget))
        else:
            from pipeline.sources import files

            sources.append(files.build(source_config, ctx, budget))
    return sources


async def build_pipeline(config: RiposteConfig, ctx: RuntimeContext, *,
                         extra_prefix: Sequence[Stage] = (),
                         with_sources: bool = True) -> Pipeline:
    """Create everything; the caller starts the runner and calls ``aclose`` at the end."""
    prefix, laned, out = build_stages(config, ctx)
    chain = Chain([*prefix, *extra_prefix], laned)
    pipeline = Pipeline(ctx=ctx, chain=chain, fanout=out)
    pipeline.closers.append(ctx.aws.aclose)
    pipeline.closers.append(ctx.store.aclose)
    await out.start()
    pipeline.closers.append(out.aclose)
    if with_sources:
        budget = InFlightBudget(config.service.in_flight_limit)
        pipeline.sources = build_sources(config, ctx, budget)
    return pipeline
