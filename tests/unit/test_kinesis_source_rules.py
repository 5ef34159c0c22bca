"""Kinesis source rules that need no stream: configuration checks and settle bookkeeping."""

from __future__ import annotations

import pytest

from pipeline.aws import AwsClients
from pipeline.config import KinesisSourceConfig, RiposteConfig
from pipeline.context import RuntimeContext
from pipeline.errors import ConfigError
from pipeline.sources.base import InFlightBudget, Message, Outcome, Source
from pipeline.sources.kinesis import AllShards, KinesisSource, build, deadletter_key
from pipeline.sources.leases import LeaseManager
from pipeline.state.memory import MemoryStore


def context() -> RuntimeContext:
    # Creating AwsClients opens no connection; nothing here calls AWS.
    return RuntimeContext(config=RiposteConfig(), store=MemoryStore(), aws=AwsClients("us-east-1"))


def test_at_timestamp_without_a_timestamp_is_a_config_error() -> None:
    config = KinesisSourceConfig(stream_name="s", start="AT_TIMESTAMP")
    with pytest.raises(ConfigError, match="start_timestamp"):
        build(config, context(), InFlightBudget(10))


@pytest.mark.parametrize(("leases", "kind"), [(False, AllShards), (True, LeaseManager)])
def test_leases_switch_the_shard_ownership(leases: bool, kind: type) -> None:
    source = build(KinesisSourceConfig(stream_name="s", leases=leases, worker_id="w1"),
                   context(), InFlightBudget(10))
    assert isinstance(source, Source)
    assert isinstance(source.ownership, kind)
    assert source.worker_id == "w1"


@pytest.mark.parametrize("outcome", [Outcome.ack(), Outcome.retry("x"),
                                     Outcome.dead_letter("y")])
async def test_settling_a_record_that_is_not_in_flight_changes_nothing(outcome: Outcome) -> None:
    budget = InFlightBudget(10)
    await budget.acquire(3)
    ctx = context()
    source = KinesisSource(KinesisSourceConfig(stream_name="s"), ctx, budget)
    stray = Message(id="shardId-0:1", body=b"{}", source="kinesis", received_at=0.0,
                    handle=("shardId-0", "1"), partition="shardId-0")
    await source.settle(stray, outcome)
    assert budget.in_use == 3
    assert await ctx.store.get(deadletter_key("s", "shardId-0", "1")) is None
    await source.aclose()
    assert budget.in_use == 3  # closing releases only what the source itself took
