"""Scoring configuration: weights and label thresholds.

A score is the sum of a few independent parts, each explained by a reason line:

    threat (strongest threat finding: severity x weight + finding family points,
            or a detection's label points)
  + vulnerability (strongest open vulnerability: CVSS, EPSS, exploit, fix)
  + exposure (network reachable / public) + asset criticality (tags)
  + correlation bonus (a threat and a vulnerability on one resource)

clamped to 0-100 and cut into labels by the thresholds below. Taking the strongest
finding of each part (not the sum over findings) keeps duplicates and noisy
resources from inflating a score.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from pipeline.config_base import Strict


def _default_families() -> dict[str, float]:
    # Finding families (the ThreatPurpose before ':' in a GuardDuty type). Active compromise
    # (C2, malware, mining, stolen credentials, data theft) weighs most; reconnaissance,
    # posture ("Policy") and penetration-testing tools the least.
    return {
        "Backdoor": 20, "Trojan": 20, "CryptoCurrency": 18, "Exfiltration": 20,
        "Impact": 18, "UnauthorizedAccess": 18, "PrivilegeEscalation": 18,
        "CredentialAccess": 18, "Execution": 15, "Persistence": 12, "DefenseEvasion": 12,
        "Stealth": 10, "Discovery": 3, "Recon": 2, "Policy": 3, "PenTest": 5,
    }


def _default_detection_points() -> dict[str, float]:
    # Points for a Riposte detection (CloudTrail rule) by its severity label.
    # A detection on its own lands in its own label (thresholds 85 / 60 / 35 / 10).
    return {"critical": 88, "high": 65, "medium": 40, "low": 15, "informational": 0}


def _default_criticality() -> dict[str, float]:
    # Tag value (case-insensitive) -> points, for any tag named in criticality_tag_keys.
    return {"critical": 15, "high": 10, "medium": 4, "low": 0}


class ScoreConfig(Strict):
    # --- threat findings (GuardDuty, Security Hub) ---
    # Points per point of the finding's normalized 0-100 severity (GuardDuty 8.0 -> 80 -> 40).
    threat_severity_weight: float = Field(0.5, ge=0, le=1)
    # Points added for the GuardDuty finding family; families not listed add 0.
    family_points: dict[str, float] = Field(default_factory=_default_families)
    # Points for a detection by severity label.
    detection_points: dict[str, float] = Field(default_factory=_default_detection_points)
    # --- vulnerability findings (Inspector) ---
    # Points per CVSS base point (9.8 -> 24.5).
    cvss_weight: float = Field(2.5, ge=0)
    # Points per unit of EPSS probability (0.9 -> 13.5).
    epss_weight: float = Field(15.0, ge=0)
    # A public exploit exists (Inspector exploitAvailable YES).
    exploit_available_points: float = 15.0
    # No fix is available: the exposure lasts until one is (a fix available adds 0).
    no_fix_points: float = 3.0
    # --- exposure and asset ---
    # The resource is reachable from the network (Inspector NETWORK_REACHABILITY finding or
    # a finding with network_reachable) or publicly exposed (a public IP in its details).
    network_exposure_points: float = 10.0
    # Tags whose value names the asset's criticality (key compared case-insensitively).
    criticality_tag_keys: list[str] = Field(default_factory=lambda: ["criticality"])
    criticality_points: dict[str, float] = Field(default_factory=_default_criticality)
    # --- correlation ---
    # A threat finding and an open vulnerability on the same resource within the window.
    correlation_bonus: float = 15.0
    # Extra when a correlated vulnerability has a known exploit: an actively attacked
    # resource with an exploitable CVE outranks either alone.
    exploitable_correlation_bonus: float = 10.0
    # --- labels (score at or above each threshold) ---
    critical_threshold: int = Field(85, ge=0, le=100)
    high_threshold: int = Field(60, ge=0, le=100)
    medium_threshold: int = Field(35, ge=0, le=100)
    low_threshold: int = Field(10, ge=0, le=100)

    @model_validator(mode="after")
    def _ordered_thresholds(self) -> ScoreConfig:
        if not (self.critical_threshold >= self.high_threshold >= self.medium_threshold
                >= self.low_threshold):
            raise ValueError("score thresholds must satisfy critical >= high >= medium >= low")
        return self
