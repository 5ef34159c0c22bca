"""Scoring configuration: weights and label thresholds."""

from __future__ import annotations

from pipeline.config_base import Strict


class ScoreConfig(Strict):
    pass
