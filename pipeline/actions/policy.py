"""Which policy actions an incident calls for: pure matching, no I/O.

Policies are tried in order; each matching policy contributes its actions, in
order, for every resource of the incident the action can act on. An action kind
already chosen for a resource by an earlier policy is not chosen again.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from pipeline.actions.config import ACTION_KINDS, ActionSpec, ContainmentConfig
from pipeline.models import EventKind, Incident, ResourceRef


@dataclass(frozen=True, slots=True)
class Candidate:
    """One action of one matching policy for one resource of the incident."""

    policy: str
    spec: ActionSpec
    mode: str
    resource: ResourceRef


def _finding_types(incident: Incident) -> tuple[list[str], list[str]]:
    types = [f.type for f in incident.findings if f.kind != EventKind.DETECTION]
    detections = [f.type for f in incident.findings if f.kind == EventKind.DETECTION]
    trigger = incident.trigger
    if trigger is not None:
        if trigger.detection is not None:
            detections.append(trigger.detection.rule_id)
        elif trigger.type:
            types.append(trigger.type)
    return types, detections


def incident_score(incident: Incident) -> int:
    if incident.score is not None:
        return incident.score.value
    return max((f.severity.score for f in incident.findings), default=0)


def match_policies(config: ContainmentConfig, incident: Incident) -> list[Candidate]:
    """Every (policy action, resource) the incident calls for, in policy order, deduplicated."""
    types, detections = _finding_types(incident)
    score = incident_score(incident)
    out: list[Candidate] = []
    seen: set[tuple[str, str]] = set()
    for policy in config.policies:
        m = policy.match
        if not m.matches_type(types, detections) or score < m.min_score:
            continue
        if m.accounts and incident.account not in m.accounts:
            continue
        mode = config.policy_mode(policy)
        for spec in policy.actions:
            kind_types = ACTION_KINDS[spec.kind].resource_types
            for resource in incident.resources:
                if resource.type not in kind_types:
                    continue
                if m.resource_types and resource.type not in m.resource_types:
                    continue
                if any(not _tag_matches(resource.tags.get(k), v) for k, v in m.tags.items()):
                    continue
                if (spec.kind, resource.key) in seen:
                    continue
                seen.add((spec.kind, resource.key))
                out.append(Candidate(policy.name, spec, mode, resource))
    return out


def _tag_matches(value: str | None, pattern: str) -> bool:
    return value is not None and fnmatch.fnmatchcase(value, pattern)
