"""CloudTrail detection configuration: which rules run and what they consider trusted.

Every field has a default so an empty ``[detections]`` section is valid. Rules
declare which of these fields they read (see :mod:`pipeline.detections.registry`),
and the registry checks at import time that the names exist, so a rule can
never silently read a setting that was renamed.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator

from pipeline.config_base import Strict

DEFAULT_TRUSTED_CIDRS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]

DEFAULT_SENSITIVE_APIS = [
    "CreateUser",
    "ListUsers",
    "ListBuckets",
    "DescribeInstances",
    "DescribeDBInstances",
    "AttachUserPolicy",
]

# Regular expressions matched (case-insensitively, from the start) against the userAgent.
# The AWS console, SDKs, CLI, CloudFormation/Terraform providers built on the SDKs, and
# the strings AWS itself writes when it calls on your behalf.
DEFAULT_USER_AGENT_ALLOW = [
    r"aws-sdk-",
    r"aws-cli/",
    r"aws-internal",
    r"AWS Internal",
    r"Boto3/",
    r"Botocore/",
    r"aiobotocore/",
    r"console\.amazonaws\.com",
    r"signin\.amazonaws\.com",
    r"\[?S3Console/",
    r"Coral/",
    r"AWSPowerShell",
    r"aws-powershell",
    r"APN/1\.0 HashiCorp/",
    r"Terraform/",
    r"cloudformation\.amazonaws\.com",
    r"[a-z0-9-]+\.amazonaws\.com$",
]

# Matched from the start like the allowlist (``.*`` to look inside); checked first: a match
# always fires, even if an allow pattern also matches
# (e.g. a tool that appends "aws-sdk" to a curl user agent).
DEFAULT_USER_AGENT_DENY = [
    r"curl/",
    r"python-requests/",
    r"python-urllib",
    r"Go-http-client/",
    r"PostmanRuntime/",
    r"Wget/",
    r"okhttp/",
    r"libwww-perl/",
    r"Java/",
    r"axios/",
    r"node-fetch",
    r"aiohttp/",
    r"httpx/",
    r"Mozilla/.*(sqlmap|nikto|masscan)",
    r".*\bpacu\b",
    # Penetration-testing distributions show up in the OS part of SDK user agents.
    r".*\bkali",
    r".*\bparrot",
]

DEFAULT_PRIVILEGED_GROUPS = ["*admin*", "*root*", "*superuser*", "*owner*"]
DEFAULT_ADMIN_POLICY_ARNS = ["arn:aws:iam::aws:policy/AdministratorAccess"]

BaselineDimension = Literal["api", "region", "network"]
DEFAULT_BASELINE_DIMENSIONS: tuple[BaselineDimension, ...] = ("api", "region", "network")


class DetectionsConfig(Strict):
    enabled: bool = True
    # Rule ids to run; empty = every registered rule. ``disabled_rules`` wins over ``rules``.
    rules: list[str] = []
    disabled_rules: list[str] = []

    # --- sensitive API calls from outside trusted networks ---------------------------------
    trusted_cidrs: list[str] = Field(default_factory=lambda: list(DEFAULT_TRUSTED_CIDRS))
    sensitive_apis: list[str] = Field(default_factory=lambda: list(DEFAULT_SENSITIVE_APIS))
    # Added to ``sensitive_apis`` (so a deployment can extend the list without repeating it).
    extra_sensitive_apis: list[str] = []
    # Console sessions also sign with (temporary) access keys; set false to judge only
    # programmatic use, the usual shape of a leaked key.
    sensitive_api_include_console: bool = True

    # --- user agents -------------------------------------------------------------------------
    user_agent_allow: list[str] = Field(default_factory=lambda: list(DEFAULT_USER_AGENT_ALLOW))
    user_agent_deny: list[str] = Field(default_factory=lambda: list(DEFAULT_USER_AGENT_DENY))
    # A record without a userAgent cannot be judged; fire on it only when asked to.
    flag_missing_user_agent: bool = False

    # --- first-seen baseline ----------------------------------------------------------------
    # Learning period per principal, in event time from its first sighting: events inside it
    # are recorded silently.
    baseline_learning_seconds: float = Field(7 * 86400.0, ge=0)
    # How long a baseline entry lives after it was last refreshed (seen again).
    baseline_ttl_seconds: float = Field(90 * 86400.0, gt=0)
    baseline_dimensions: list[BaselineDimension] = Field(
        default_factory=lambda: list(DEFAULT_BASELINE_DIMENSIONS))
    # Baseline entries remembered in process (saves store round trips; about 200 B each).
    baseline_cache_size: int = Field(100_000, ge=0)

    # --- IAM policies and role trust ---------------------------------------------------------
    admin_policy_arns: list[str] = Field(default_factory=lambda: list(DEFAULT_ADMIN_POLICY_ARNS))
    # Accounts treated like the role's own account in trust policies (e.g. your organisation).
    trusted_account_ids: list[str] = []

    # --- Cognito -----------------------------------------------------------------------------
    org_email_domains: list[str] = []
    privileged_group_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PRIVILEGED_GROUPS))
    # CloudTrail often hides Cognito user names; fire when the email cannot be read?
    cognito_unknown_email_fires: bool = True

    # --- root --------------------------------------------------------------------------------
    # A failed root console sign-in is itself worth knowing (password guessing on root).
    root_failed_console_login_fires: bool = True

    @field_validator("trusted_cidrs")
    @classmethod
    def _valid_cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"not a CIDR: {cidr!r}") from exc
        return value

    @field_validator("user_agent_allow", "user_agent_deny")
    @classmethod
    def _valid_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {pattern!r}: {exc}") from exc
        return value

    @field_validator("rules", "disabled_rules")
    @classmethod
    def _known_rules(cls, value: list[str]) -> list[str]:
        # Imported here: the registry imports this module (rules declare their settings).
        from pipeline.detections.registry import RULES

        known = set(RULES.ids())
        unknown = [r for r in value if r not in known]
        if unknown:
            raise ValueError(f"unknown detection rule(s) {unknown}; known: {sorted(known)}")
        return value

    @field_validator("org_email_domains")
    @classmethod
    def _lower_domains(cls, value: list[str]) -> list[str]:
        return [d.strip().lstrip("@").lower() for d in value if d.strip()]
