"""Sink configuration: one model per sink type, a discriminated union on ``type``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline.config_base import Strict


class Routing(Strict):
    """What a sink receives."""

    kinds: list[Literal["event", "detection", "incident", "action"]] = [
        "detection", "incident", "action"]
    min_severity: Literal["informational", "low", "medium", "high", "critical"] = "informational"
    # fnmatch patterns over event/finding types; empty = all.
    types: list[str] = []


class SinkBase(Strict):
    name: str
    # Required: a message is acknowledged only after this sink delivered or rejected it.
    required: bool = True
    routing: Routing = Routing()


class JsonLinesSinkConfig(SinkBase):
    type: Literal["jsonl"] = "jsonl"
    name: str = "jsonl"
    # "-" is standard output.
    path: str = "-"


SinkConfig = Annotated[JsonLinesSinkConfig, Field(discriminator="type")]
