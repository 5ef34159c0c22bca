"""Use of the account's root credentials (MITRE T1078.004, valid cloud accounts).

Root should sign in only for the handful of tasks that need it; any call made
with it is worth a person's attention. Calls AWS services make on root's behalf
(``invokedBy``) are not root activity. Failed calls do not fire, except a failed
root console sign-in (``ConsoleLogin`` with ``Failure``), which is someone trying
the root password and fires when ``root_failed_console_login_fires`` is set.
"""

from __future__ import annotations

from pipeline.detections._cloudtrail import CloudTrailView
from pipeline.detections.registry import CloudTrailRule, Hit, register
from pipeline.models import SeverityLabel


@register(
    "root_credential_use",
    title="Root credentials used",
    severity=SeverityLabel.HIGH,
    mitre=("T1078.004",),
    description="A call was made (or a console sign-in attempted) with the account's root user.",
    config=("root_failed_console_login_fires",),
)
class RootCredentialUse(CloudTrailRule):
    async def evaluate(self, view: CloudTrailView) -> Hit | None:
        if view.user_type != "Root" or view.invoked_by:
            return None
        failed_login = view.event_name == "ConsoleLogin" and not view.succeeded
        if failed_login:
            if not self.config.root_failed_console_login_fires:
                return None
        elif not view.succeeded:
            return None
        return Hit(
            title="Failed root console sign-in" if failed_login else None,
            facts={
                "event_name": view.event_name,
                "event_source": view.event_source,
                "source_ip": view.source_ip,
                "user_agent": view.user_agent,
                "failed_console_login": failed_login,
                "error": view.error_code or view.error_message,
                "why": "root console sign-in failed" if failed_login
                       else f"{view.event_name} called with root credentials",
            },
        )
