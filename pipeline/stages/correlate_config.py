"""Correlation configuration."""

from __future__ import annotations

from pydantic import Field

from pipeline.config_base import Strict
from pipeline.models import SeverityLabel


class CorrelateConfig(Strict):
    # Event-time window in which a GuardDuty and an Inspector finding on one resource pair up.
    window_seconds: float = Field(7 * 86400, gt=0)
    # How long an index entry outlives the window (late or replayed deliveries still pair).
    # Index entries expire after window_seconds + index_margin_seconds of the store clock, so
    # the index is bounded by the finding rate, never by history.
    index_margin_seconds: float = Field(86400, ge=0)
    # An Inspector finding with no GuardDuty partner becomes an incident of its own only at or
    # above this severity; below it, it is only indexed (waiting for a partner).
    inspector_standalone_min_severity: SeverityLabel = SeverityLabel.HIGH
    # How long an incident record is kept after its last update (it holds the finding list,
    # so updates keep naming the same incident; 30 days by default).
    incident_ttl_seconds: float = Field(30 * 86400, gt=0)
    # Findings listed on one incident (threat findings first, then the most severe
    # vulnerabilities); the rest are counted in the title. Bounds the stored record.
    max_findings_per_incident: int = Field(100, ge=2, le=1000)
    # Compare-and-set attempts on one record before the event is retried later.
    max_cas_attempts: int = Field(16, ge=1, le=1000)
