"""Containment configuration: modes, kill switch, allowlists, policies, roles, limits.

Everything that decides whether Riposte may change a customer's resources is
validated here, at load time, so a typo or a policy that can never fire is an
error at start-up rather than a silent gap at 3 a.m. The table of action kinds
(settings schema and resource types per kind) lives here too, not in the action
modules, so loading the configuration never imports AWS client code.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from typing import Any, Literal, NamedTuple

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from pipeline.config_base import Strict

ModeName = Literal["observe", "dry-run", "approve", "enforce"]

# Strictest first: a policy may only move a decision towards the left.
MODE_STRICTNESS: dict[str, int] = {"observe": 0, "dry-run": 1, "approve": 2, "enforce": 3}

RESOURCE_TYPES = frozenset({
    "ec2.instance", "ecr.image", "lambda.function", "iam.user", "iam.role", "iam.access_key",
    "s3.bucket", "eks.cluster", "ecs.task", "aws.account", "other",
})

_ACCOUNT_RE = re.compile(r"^\d{12}$")


def stricter(a: str, b: str) -> str:
    """The stricter of two modes (observe < dry-run < approve < enforce)."""
    return a if MODE_STRICTNESS[a] <= MODE_STRICTNESS[b] else b


# --- per-kind settings ------------------------------------------------------------------------
class NoSettings(Strict):
    """For actions that need nothing beyond the shared quarantine settings."""


class IsolateSettings(Strict):
    # Move interfaces to an all-open group first: connections then become untracked and
    # the following move to the quarantine group cuts them instead of letting them live on.
    temporary_open_first: bool = False


class SnapshotSettings(Strict):
    description: str = "Riposte forensic snapshot"


class TagSettings(Strict):
    incident_tag_key: str = "riposte:incident"
    status_tag_key: str = "riposte:status"
    status_value: str = "quarantined"
    include_volumes: bool = True


class QuarantinePrincipalSettings(Strict):
    policy_name_prefix: str = Field("riposte-quarantine", min_length=1, max_length=64)
    # Roles only: deny just the sessions issued before now instead of everything.
    revoke_sessions_only: bool = False


class S3BlockSettings(Strict):
    block_public_acls: bool = True
    ignore_public_acls: bool = True
    block_public_policy: bool = True
    restrict_public_buckets: bool = True


class DnsBlockSettings(Strict):
    # Required: the Route 53 Resolver DNS Firewall domain list to add domains to.
    firewall_domain_list_id: str = Field(min_length=1)
    domain_attribute: str = "domain"


class NotifySettings(Strict):
    pass


class ActionKindSpec(NamedTuple):
    settings: type[Strict]
    resource_types: frozenset[str]


_EC2 = frozenset({"ec2.instance"})

ACTION_KINDS: dict[str, ActionKindSpec] = {
    "ec2.isolate": ActionKindSpec(IsolateSettings, _EC2),
    "ec2.nacl_deny": ActionKindSpec(NoSettings, _EC2),
    "ec2.detach_instance_profile": ActionKindSpec(NoSettings, _EC2),
    "ec2.snapshot": ActionKindSpec(SnapshotSettings, _EC2),
    "ec2.tag": ActionKindSpec(TagSettings, _EC2),
    "iam.deactivate_access_key": ActionKindSpec(NoSettings, frozenset({"iam.access_key"})),
    "iam.quarantine_principal": ActionKindSpec(QuarantinePrincipalSettings,
                                               frozenset({"iam.user", "iam.role"})),
    "s3.block_public_access": ActionKindSpec(S3BlockSettings, frozenset({"s3.bucket"})),
    "dns.block_domain": ActionKindSpec(DnsBlockSettings, _EC2),
    "notify": ActionKindSpec(NotifySettings, RESOURCE_TYPES),
}

# Actions that change an instance; a forensic snapshot must be taken before any of them.
_CHANGES_INSTANCE = frozenset({"ec2.isolate", "ec2.nacl_deny", "ec2.detach_instance_profile"})


# --- policies ---------------------------------------------------------------------------------
class ActionSpec(Strict):
    """``{kind, settings}``: one step of a policy's ordered response."""

    kind: str
    settings: dict[str, Any] = {}

    @model_validator(mode="after")
    def _known_kind_and_settings(self) -> ActionSpec:
        spec = ACTION_KINDS.get(self.kind)
        if spec is None:
            known = ", ".join(sorted(ACTION_KINDS))
            raise ValueError(f"unknown action kind {self.kind!r} (known: {known})")
        try:
            spec.settings.model_validate(self.settings)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(settings)'}: {e['msg']}"
                for e in exc.errors())
            raise ValueError(f"action {self.kind!r} settings: {problems}") from None
        return self

    def typed_settings(self) -> Strict:
        return ACTION_KINDS[self.kind].settings.model_validate(self.settings)


class PolicyMatch(Strict):
    """What an incident must look like. Empty lists are unrestricted; set lists must match.

    ``finding_types`` and ``detection_ids`` are alternatives (either may match) and take
    fnmatch wildcards (``UnauthorizedAccess:EC2/*``).
    """

    finding_types: list[str] = []
    detection_ids: list[str] = []
    min_score: int = Field(0, ge=0, le=100)
    resource_types: list[str] = []
    # Resource tags that must all be present; values take fnmatch wildcards.
    tags: dict[str, str] = {}
    accounts: list[str] = []

    @field_validator("finding_types", "detection_ids")
    @classmethod
    def _no_empty_patterns(cls, value: list[str]) -> list[str]:
        if any(not p.strip() for p in value):
            raise ValueError("an empty pattern can never match")
        return value

    @field_validator("resource_types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - RESOURCE_TYPES)
        if unknown:
            raise ValueError(f"unknown resource type(s) {unknown}: such a policy never matches")
        return value

    @field_validator("accounts")
    @classmethod
    def _account_ids(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if not _ACCOUNT_RE.match(a)]
        if bad:
            raise ValueError(f"not 12-digit account ids: {bad}")
        return value

    def matches_type(self, finding_types: list[str], detection_ids: list[str]) -> bool:
        if not self.finding_types and not self.detection_ids:
            return True
        return any(fnmatch.fnmatchcase(t, p) for t in finding_types for p in self.finding_types) \
            or any(fnmatch.fnmatchcase(d, p) for d in detection_ids for p in self.detection_ids)


class PolicyConfig(Strict):
    name: str = Field(min_length=1)
    match: PolicyMatch = PolicyMatch()
    actions: list[ActionSpec] = Field(min_length=1)
    # Stricter than the global mode only (validated by ContainmentConfig).
    mode: ModeName | None = None

    @model_validator(mode="after")
    def _reachable(self) -> PolicyConfig:
        types = set(self.match.resource_types) or set(RESOURCE_TYPES)
        for action in self.actions:
            if not types & ACTION_KINDS[action.kind].resource_types:
                raise ValueError(
                    f"policy {self.name!r}: action {action.kind!r} acts on "
                    f"{sorted(ACTION_KINDS[action.kind].resource_types)} but the policy only "
                    f"matches {sorted(types)}: it could never run")
        kinds = [a.kind for a in self.actions]
        if "ec2.snapshot" in kinds:
            first_change = min((i for i, k in enumerate(kinds) if k in _CHANGES_INSTANCE),
                               default=len(kinds))
            if kinds.index("ec2.snapshot") > first_change:
                raise ValueError(f"policy {self.name!r}: ec2.snapshot must come before actions "
                                 "that change the instance (evidence first)")
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"policy {self.name!r}: an action kind is listed twice")
        return self


# --- limits, roles, quarantine ----------------------------------------------------------------
class RateLimitConfig(Strict):
    """The fleet-wide blast-radius limit; what exceeds it waits for a person's approval."""

    actions_per_minute: float = Field(5.0, gt=0, le=10_000)
    # Optional tighter caps per resource type, actions per minute.
    per_resource_type: dict[str, float] = {}

    @field_validator("per_resource_type")
    @classmethod
    def _known_types(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - RESOURCE_TYPES)
        if unknown:
            raise ValueError(f"unknown resource type(s) {unknown}")
        if any(v <= 0 for v in value.values()):
            raise ValueError("caps must be > 0 (remove the entry for no cap)")
        return value


class RoleConfig(Strict):
    role_arn: str
    external_id: SecretStr | None = None
    session_name: str = Field("riposte-containment", min_length=2, max_length=64)
    duration_seconds: int = Field(3600, ge=900, le=43200)


class QuarantineConfig(Strict):
    group_name: str = Field("riposte-quarantine", min_length=1, max_length=255)
    open_group_name: str = Field("riposte-untrack", min_length=1, max_length=255)
    # Ingress allowed into the quarantine group (forensics access); none when both empty.
    admin_cidrs: list[str] = []
    admin_security_group: str | None = None
    # NACL rule numbers Riposte may use; low numbers are evaluated before allow rules.
    nacl_rule_min: int = Field(1, ge=1, le=32766)
    nacl_rule_max: int = Field(99, ge=1, le=32766)

    @field_validator("admin_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError as exc:
                raise ValueError(f"admin cidr {cidr!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _range(self) -> QuarantineConfig:
        if self.nacl_rule_min > self.nacl_rule_max:
            raise ValueError("nacl_rule_min must be <= nacl_rule_max")
        if self.group_name == self.open_group_name:
            raise ValueError("group_name and open_group_name must differ")
        return self


class ContainmentConfig(Strict):
    # Global mode; a policy may be stricter, never looser.
    mode: ModeName = "dry-run"
    kill_switch: bool = False
    # Allowlists. A set list fails closed (a missing value is not allowed). Whatever the
    # lists say, Riposte only acts in the home account and in accounts with a role below.
    accounts: list[str] = []
    regions: list[str] = []
    sources: list[str] = []
    detail_types: list[str] = []
    exempt_tag_key: str = Field("riposte:exempt", min_length=1)
    policies: list[PolicyConfig] = []
    rate_limit: RateLimitConfig = RateLimitConfig()
    approval_ttl_seconds: float = Field(86400.0, ge=60, le=30 * 86400)
    # A ledger claim older than this is taken to be from a crashed worker and recovered.
    claim_timeout_seconds: float = Field(300.0, ge=5, le=86400)
    ledger_ttl_seconds: float = Field(90 * 86400.0, ge=3600)
    # The account the default credentials belong to; found with GetCallerIdentity if unset.
    home_account: str | None = None
    # Roll back an incident's applied actions once every finding behind it is archived,
    # resolved or closed (GuardDuty archive, Security Hub RESOLVED, Inspector CLOSED).
    rollback_when_resolved: bool = False
    # Decisions still waiting for approval, or failed, this long after they were planned
    # are escalated (once) as ``escalate`` action items for the alert sinks.
    sla_seconds: float | None = Field(None, gt=0)
    roles: dict[str, RoleConfig] = {}
    quarantine: QuarantineConfig = QuarantineConfig()

    @field_validator("accounts")
    @classmethod
    def _account_ids(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if not _ACCOUNT_RE.match(a)]
        if bad:
            raise ValueError(f"not 12-digit account ids: {bad}")
        return value

    @field_validator("home_account")
    @classmethod
    def _home(cls, value: str | None) -> str | None:
        if value is not None and not _ACCOUNT_RE.match(value):
            raise ValueError("home_account must be a 12-digit account id")
        return value

    @field_validator("roles")
    @classmethod
    def _roles_in_their_account(cls, value: dict[str, RoleConfig]) -> dict[str, RoleConfig]:
        for account, role in value.items():
            if not _ACCOUNT_RE.match(account):
                raise ValueError(f"roles key {account!r} is not a 12-digit account id")
            if not role.role_arn.startswith(f"arn:aws:iam::{account}:role/") and \
                    not re.match(rf"^arn:aws[a-z-]*:iam::{account}:role/", role.role_arn):
                raise ValueError(f"roles[{account}].role_arn is not a role in account {account}: "
                                 "acting with another account's credentials is refused")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ContainmentConfig:
        names = [p.name for p in self.policies]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate policy name(s): {dupes}")
        for policy in self.policies:
            if policy.mode is not None and \
                    MODE_STRICTNESS[policy.mode] > MODE_STRICTNESS[self.mode]:
                raise ValueError(f"policy {policy.name!r}: mode {policy.mode!r} is looser than "
                                 f"the global mode {self.mode!r} (policies may only be stricter)")
            if self.accounts and policy.match.accounts and \
                    not set(policy.match.accounts) & set(self.accounts):
                raise ValueError(f"policy {policy.name!r}: none of its accounts is in the "
                                 "containment account allowlist: it could never match")
        return self

    def policy_mode(self, policy: PolicyConfig) -> str:
        return stricter(self.mode, policy.mode or self.mode)

    def enabled_kinds(self) -> list[str]:
        return sorted({a.kind for p in self.policies for a in p.actions})
