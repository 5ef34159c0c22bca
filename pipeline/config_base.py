"""The base every configuration model shares (kept apart to avoid import cycles)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Immutable, and unknown keys are errors: a typo fails at load time."""

    model_config = ConfigDict(frozen=True, extra="forbid")
