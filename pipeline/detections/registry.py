"""The rule registry: CloudTrail rules register themselves with a decorator.

As in Cloud Custodian, a rule is a small class whose metadata (id, title,
severity, MITRE ATT&CK ids, description, the configuration fields it reads and
the API names it looks at) is declared where it is registered. Declaring the
configuration it reads lets the registry reject, at import time, a rule that names
a setting that does not exist; naming the API calls it looks at lets the detect
stage skip it for every other call without running it.

Configuration mistakes (an unknown rule id in ``detections.rules``) are
``ConfigError`` at build time, kept apart from execution errors, which the detect
stage contains per rule.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pipeline.detections._cloudtrail import CloudTrailView
from pipeline.detections.config import DetectionsConfig
from pipeline.errors import ConfigError
from pipeline.models import ResourceRef, SeverityLabel
from pipeline.records import record

if TYPE_CHECKING:
    from pipeline.context import RuntimeContext

# Where each label sits on the common 0-100 scale (Severity.of_score maps it back).
SEVERITY_SCORE: Mapping[SeverityLabel, int] = {
    SeverityLabel.INFORMATIONAL: 0,
    SeverityLabel.LOW: 30,
    SeverityLabel.MEDIUM: 55,
    SeverityLabel.HIGH: 80,
    SeverityLabel.CRITICAL: 95,
}

RULE_MODULES = (
    "sensitive_api",
    "user_agent",
    "baseline",
    "iam_policy",
    "trust_policy",
    "cognito",
    "logging_tamper",
    "root_usage",
)


@dataclass(frozen=True, slots=True)
class RuleMeta:
    id: str
    title: str
    severity: SeverityLabel
    mitre: tuple[str, ...]
    description: str
    # DetectionsConfig fields the rule reads.
    config: tuple[str, ...] = ()
    # eventName values the rule can fire on; None = it looks at every call.
    event_names: frozenset[str] | None = None


@record
class Hit:
    """A rule fired: why (``facts``), and optionally a sharper severity or the target."""

    facts: Mapping[str, Any]
    severity: SeverityLabel | None = None
    targets: tuple[ResourceRef, ...] = ()
    title: str | None = None
    mitre: tuple[str, ...] = field(default=())


class CloudTrailRule:
    """Base class of every rule. Subclasses implement ``evaluate``; they may keep state."""

    meta: ClassVar[RuleMeta]

    def __init__(self, config: DetectionsConfig, ctx: RuntimeContext) -> None:
        self.config = config
        self.ctx = ctx

    @property
    def event_names(self) -> frozenset[str] | None:
        """The calls this instance can fire on (None = all); may depend on config."""
        return self.meta.event_names

    async def evaluate(self, view: CloudTrailView) -> Hit | None:
        raise NotImplementedError


R = TypeVar("R", bound=type[CloudTrailRule])


class RuleRegistry:
    def __init__(self) -> None:
        self._rules: dict[str, type[CloudTrailRule]] = {}

    def register(
        self,
        rule_id: str,
        *,
        title: str,
        severity: SeverityLabel,
        mitre: tuple[str, ...],
        description: str,
        config: tuple[str, ...] = (),
        event_names: frozenset[str] | None = None,
    ) -> Callable[[R], R]:
        unknown = [name for name in config if name not in DetectionsConfig.model_fields]
        if unknown:
            raise ConfigError(f"rule {rule_id} declares unknown config field(s): {unknown}")

        def decorate(cls: R) -> R:
            if rule_id in self._rules and self._rules[rule_id] is not cls:
                raise ConfigError(f"rule id registered twice: {rule_id}")
            cls.meta = RuleMeta(rule_id, title, severity, tuple(mitre), description,
                                tuple(config), event_names)
            self._rules[rule_id] = cls
            return cls

        return decorate

    def __iter__(self) -> Iterator[type[CloudTrailRule]]:
        load_all()
        return iter(sorted(self._rules.values(), key=lambda c: c.meta.id))

    def ids(self) -> list[str]:
        load_all()
        return sorted(self._rules)

    def get(self, rule_id: str) -> type[CloudTrailRule]:
        load_all()
        try:
            return self._rules[rule_id]
        except KeyError:
            raise ConfigError(f"unknown detection rule: {rule_id!r} "
                              f"(known: {', '.join(sorted(self._rules))})") from None

    def build(self, config: DetectionsConfig, ctx: RuntimeContext) -> list[CloudTrailRule]:
        """The enabled rules, constructed; unknown ids in the config are ConfigError."""
        load_all()
        for rule_id in (*config.rules, *config.disabled_rules):
            self.get(rule_id)
        if not config.enabled:
            return []
        chosen = config.rules or sorted(self._rules)
        disabled = set(config.disabled_rules)
        return [self._rules[r](config, ctx) for r in chosen if r not in disabled]


RULES = RuleRegistry()
register = RULES.register

_loaded = False


def load_all() -> None:
    """Import every rule module once, so their decorators run (Custodian's load_resources)."""
    global _loaded  # noqa: PLW0603 - one import-time switch
    if _loaded:
        return
    for module in RULE_MODULES:
        importlib.import_module(f"pipeline.detections.{module}")
    _loaded = True
