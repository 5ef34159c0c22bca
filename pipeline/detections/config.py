"""CloudTrail detection configuration: which rules run and what they consider trusted."""

from __future__ import annotations

from pipeline.config_base import Strict


class DetectionsConfig(Strict):
    enabled: bool = True
