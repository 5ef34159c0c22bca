"""Calls whose user agent is not an AWS SDK, CLI or console.

Legitimate automation signs requests with an AWS SDK or the CLI, people use the
console; a signed call from ``curl``, ``python-requests`` or Postman means someone
is hand-crafting SigV4 requests, which is how stolen keys are often tried out.
Deny patterns are checked first (they always fire), then allow patterns; a user
agent matching neither fires too. A record with no user agent cannot be judged and
only fires when ``flag_missing_user_agent`` is set.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pipeline.detections._cloudtrail import CloudTrailView
from pipeline.detections.config import DetectionsConfig
from pipeline.detections.registry import CloudTrailRule, Hit, register
from pipeline.models import SeverityLabel

if TYPE_CHECKING:
    from pipeline.context import RuntimeContext


_CACHE_SIZE = 4096


def _compile(patterns: list[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


@register(
    "unusual_user_agent",
    title="AWS API call from a non-SDK user agent",
    severity=SeverityLabel.MEDIUM,
    mitre=("T1059.009",),
    description="A successful API call was signed by a client that is not an AWS SDK, the "
                "AWS CLI or the console (curl, python-requests, Go-http-client, Postman...).",
    config=("user_agent_allow", "user_agent_deny", "flag_missing_user_agent"),
)
class UnusualUserAgent(CloudTrailRule):
    def __init__(self, config: DetectionsConfig, ctx: RuntimeContext) -> None:
        super().__init__(config, ctx)
        self._allow = _compile(config.user_agent_allow)
        self._deny = _compile(config.user_agent_deny)
        # Verdicts by user agent (outside a console session): a fleet uses a few hundred
        # distinct ones, and the patterns cost more than the lookup.
        self._verdicts: dict[str | None, str | None] = {}

    def classify(self, user_agent: str | None, *, from_console: bool = False) -> str | None:
        """Why this user agent is unusual (``denied``/``not_allowed``/``missing``) or None.

        A console session's calls may carry the person's browser user agent
        (``Mozilla/5.0 ...``): that is the console, so only the deny list applies.
        """
        verdict = self._by_lists(user_agent)
        if verdict == "not_allowed" and from_console \
                and (user_agent or "").strip().startswith("Mozilla/"):
            return None
        return verdict

    def _by_lists(self, user_agent: str | None) -> str | None:
        """The verdict of the deny and allow lists alone, remembered per user agent."""
        try:
            return self._verdicts[user_agent]
        except KeyError:
            pass
        verdict = self._judge(user_agent)
        if len(self._verdicts) >= _CACHE_SIZE:
            self._verdicts.clear()
        self._verdicts[user_agent] = verdict
        return verdict

    def _judge(self, user_agent: str | None) -> str | None:
        if user_agent is None or not user_agent.strip():
            return "missing" if self.config.flag_missing_user_agent else None
        ua = user_agent.strip()
        if self._deny is not None and self._deny.match(ua):
            return "denied"
        if self._allow is not None and self._allow.match(ua):
            return None
        return "not_allowed"

    async def evaluate(self, view: CloudTrailView) -> Hit | None:
        if not view.succeeded or view.service_originated:
            return None
        verdict = self._by_lists(view.user_agent)
        if verdict == "not_allowed":  # only then does the console session matter
            verdict = self.classify(view.user_agent, from_console=view.from_console)
        if verdict is None:
            return None
        return Hit(facts={
            "user_agent": view.user_agent,
            "verdict": verdict,
            "event_name": view.event_name,
            "source_ip": view.source_ip,
            "access_key_id": view.access_key_id,
            "principal_arn": view.principal_arn,
            "why": {"denied": "user agent matches a deny pattern",
                    "not_allowed": "user agent is not an AWS SDK, CLI or console",
                    "missing": "the call carries no user agent"}[verdict],
        })
