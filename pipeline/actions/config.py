"""Containment configuration: modes, kill switch, allowlists, policies, roles, limits."""

from __future__ import annotations

from typing import Literal

from pipeline.config_base import Strict


class ContainmentConfig(Strict):
    # Global mode; a policy may be stricter, never looser.
    mode: Literal["observe", "dry-run", "enforce", "approve"] = "dry-run"
    kill_switch: bool = False
