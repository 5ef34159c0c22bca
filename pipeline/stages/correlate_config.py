"""Correlation configuration."""

from __future__ import annotations

from pydantic import Field

from pipeline.config_base import Strict


class CorrelateConfig(Strict):
    # Event-time window in which a GuardDuty and an Inspector finding on one resource pair up.
    window_seconds: float = Field(7 * 86400, gt=0)
