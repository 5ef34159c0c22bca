"""Open the configured state store: SQLite embedded, DynamoDB for a fleet.

The DynamoDB module is imported only when configured, so an embedded deployment
never loads the DynamoDB code path.
"""

from __future__ import annotations

import importlib
from typing import cast

from pipeline.aws import AwsClients
from pipeline.clock import Clock
from pipeline.config import DynamoDbStateConfig, SqliteStateConfig, StateConfig
from pipeline.errors import ConfigError
from pipeline.state.base import StateStore
from pipeline.state.sqlite import SqliteStore


async def open_store(config: StateConfig, aws: AwsClients, clock: Clock) -> StateStore:
    """The store named by ``config``, opened and ready."""
    if isinstance(config, SqliteStateConfig):
        return await SqliteStore.open(config.path, clock=clock,
                                      purge_interval=config.purge_interval)
    if isinstance(config, DynamoDbStateConfig):
        module = importlib.import_module("pipeline.state.dynamodb")
        store = await module.DynamoDbStore.open(config.table, aws, clock=clock,
                                                region=config.region,
                                                create_if_missing=config.create_if_missing)
        return cast(StateStore, store)
    raise ConfigError(f"unknown state store type: {type(config).__name__}")
