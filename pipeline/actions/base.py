"""The containment-action contract: plan (as data) -> apply -> verify -> rollback.

A plan is the exact list of AWS calls an action would make, with parameters,
plus the before-state it read. Dry-run records it; enforce executes *the same
list* through :func:`run_steps`, so what a person reviewed in dry-run or approved
is, call for call, what enforce does. Values not known until a call returns
(the id of a quarantine group created by the plan) are written as ``$ref:NAME``
and bound from that call's output while executing.

Actions are idempotent: steps name the error codes that mean "already done"
(a duplicate NACL entry, a group that another worker created first), and
rollbacks are computed from a fresh describe so running one twice is harmless.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

from botocore import xform_name
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from pipeline.actions.config import QuarantineConfig
from pipeline.config_base import Strict
from pipeline.errors import RetriableError
from pipeline.models import ApiCall, ResourceRef

log = logging.getLogger(__name__)

REF_PREFIX = "$ref:"

THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "RequestThrottled", "RequestThrottledException", "SlowDown",
    "ServiceUnavailable", "InternalError", "InternalFailure", "ServiceFailure",
    "PriorRequestNotComplete", "EC2ThrottledException",
})
ACCESS_DENIED_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthFailure",
    "UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken",
    "ExpiredTokenException", "UnauthorizedAccess",
})


class Refused(Exception):
    """A safety check said no (exempt, resource gone, nothing to do safely): SKIPPED."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InEffect(Refused):
    """Nothing to do because the resource is already in the state the action leads to."""


class ActionFailed(Exception):
    """AWS refused the change for a reason retrying will not fix: FAILED, and alerted."""

    def __init__(self, code: str, message: str, *, access_denied: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.access_denied = access_denied


class ClientSource(Protocol):
    """Clients for one account, with credentials that belong to that account."""

    @property
    def account(self) -> str: ...

    async def client(self, service: str, region: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Step:
    """One API call of a plan; ``bind`` names outputs later steps refer to as ``$ref:NAME``."""

    call: ApiCall
    bind: Mapping[str, str] = field(default_factory=dict)
    tolerate: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """What an action needs to plan for one resource of one incident."""

    action_id: str
    incident_id: str
    resource: ResourceRef
    account: str
    region: str
    settings: Strict
    quarantine: QuarantineConfig
    now: datetime
    attributes: Mapping[str, Any] = field(default_factory=dict)
    # Allocates scarce numbers (NACL rules) race-free across workers. ``commit`` is
    # False in dry-run: the plan then shows the numbers enforce would take, unreserved.
    reservations: Reserver | None = None
    commit: bool = False


class Reserver(Protocol):
    async def reserve(self, namespace: str, value: int, owner: str) -> bool: ...

    async def reserved(self, namespace: str, value: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    kind: str
    incident_id: str
    resource: ResourceRef
    account: str
    region: str
    steps: tuple[Step, ...]
    before: Mapping[str, Any]
    settings: Mapping[str, Any]
    created_at: datetime
    # Tags read from the live resource while planning (the exempt check uses them).
    resource_tags: Mapping[str, str] | None = None
    note: str = ""

    @property
    def calls(self) -> tuple[ApiCall, ...]:
        return tuple(s.call for s in self.steps)


@dataclass(frozen=True, slots=True)
class Applied:
    plan: Plan
    calls: tuple[ApiCall, ...]  # exactly as issued, references resolved
    outputs: Mapping[str, str]
    applied_at: datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def action_id(subject: str, kind: str, resource_key: str) -> str:
    """Deterministic: every worker and redelivery names the same decision the same way."""
    digest = hashlib.sha256(f"{subject}\x1f{kind}\x1f{resource_key}".encode()).hexdigest()
    return f"act-{digest[:20]}"


def call(service: str, operation: str, params: Mapping[str, Any], *, account: str,
         region: str) -> ApiCall:
    return ApiCall(service=service, operation=operation, params=dict(params), account=account,
                   region=region)


def resolve(value: Any, outputs: Mapping[str, str]) -> Any:
    """Replace ``$ref:NAME`` strings anywhere in ``value`` with bound outputs."""
    if isinstance(value, str) and value.startswith(REF_PREFIX):
        name = value[len(REF_PREFIX):]
        if name not in outputs:
            raise ActionFailed("UnboundReference", f"no value bound for {value}")
        return outputs[name]
    if isinstance(value, Mapping):
        return {k: resolve(v, outputs) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [resolve(v, outputs) for v in value]
    return value


def classify(exc: BaseException, where: str) -> BaseException:
    """Map an AWS error to Riposte's outcomes: retriable, FAILED (access denied) or FAILED."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        message = str(err.get("Message", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in THROTTLING_CODES or status >= 500 or status == 429:
            return RetriableError(f"{where}: {code}: {message}", reason="aws_throttled"
                                  if "hrottl" in code or code in ("SlowDown",
                                                                  "RequestLimitExceeded")
                                  else "aws_unavailable", component="contain")
        return ActionFailed(code, message, access_denied=code in ACCESS_DENIED_CODES)
    if isinstance(exc, BotoConnectionError | HTTPClientError | TimeoutError | OSError):
        return RetriableError(f"{where}: {type(exc).__name__}: {exc}", reason="aws_unreachable",
                              component="contain")
    if isinstance(exc, BotoCoreError):
        return ActionFailed(type(exc).__name__, str(exc))
    return exc


async def invoke(aws: ClientSource, api: ApiCall) -> dict[str, Any]:
    """Issue one call; errors come back classified (see :func:`classify`)."""
    client = await aws.client(api.service, api.region or "us-east-1")
    method = getattr(client, xform_name(api.operation))
    try:
        result: dict[str, Any] = await method(**api.params)
    except Exception as exc:
        raise classify(exc, f"{api.service}.{api.operation}") from exc
    return result


async def describe(aws: ClientSource, service: str, operation: str, region: str,
                   **params: Any) -> dict[str, Any]:
    """A read made while planning or verifying (never part of a plan)."""
    return await invoke(aws, ApiCall(service, operation, params, aws.account, region))


class ContainmentAction(Protocol):
    """The contract every action meets (DESIGN.md); :class:`BaseAction` implements the
    generic half (apply and rollback over plan steps)."""

    kind: ClassVar[str]
    permissions: ClassVar[frozenset[str]]
    resource_types: ClassVar[frozenset[str]]
    disruptive: ClassVar[bool]

    async def plan(self, request: PlanRequest, aws: ClientSource) -> Plan: ...

    async def apply(self, plan: Plan, aws: ClientSource) -> Applied: ...

    async def verify(self, applied: Applied, aws: ClientSource) -> bool: ...

    async def rollback(self, applied: Applied, aws: ClientSource) -> tuple[ApiCall, ...]: ...


class BaseAction:
    """Shared apply/rollback over plan steps; subclasses plan, verify and undo."""

    kind: ClassVar[str]
    permissions: ClassVar[frozenset[str]]
    resource_types: ClassVar[frozenset[str]]
    # Disruptive actions count against the blast-radius limit; evidence and notes do not.
    disruptive: ClassVar[bool] = True
    # Before-state keys that may change between planning and approval without the
    # plan being stale (another isolation created the shared quarantine group...).
    volatile_before: ClassVar[frozenset[str]] = frozenset()

    async def plan(self, request: PlanRequest, aws: ClientSource) -> Plan:
        raise NotImplementedError

    async def verify(self, applied: Applied, aws: ClientSource) -> bool:
        raise NotImplementedError

    async def rollback_steps(self, applied: Applied, aws: ClientSource) -> Sequence[Step]:
        """The calls that restore the before-state, from a fresh look at the resource."""
        raise NotImplementedError

    async def on_tolerated(self, step: Step, code: str, plan: Plan, aws: ClientSource,
                           outputs: Mapping[str, str]) -> Mapping[str, str]:
        """Bindings to use when a tolerated error means "already exists"."""
        return {}

    async def apply(self, plan: Plan, aws: ClientSource) -> Applied:
        issued, outputs = await self._run(plan.steps, plan, aws)
        return Applied(plan=plan, calls=issued, outputs=outputs, applied_at=utcnow())

    async def rollback(self, applied: Applied, aws: ClientSource) -> tuple[ApiCall, ...]:
        steps = await self.rollback_steps(applied, aws)
        issued, _ = await self._run(tuple(steps), applied.plan, aws, dict(applied.outputs))
        return issued

    async def _run(self, steps: Sequence[Step], plan: Plan, aws: ClientSource,
                   outputs: dict[str, str] | None = None
                   ) -> tuple[tuple[ApiCall, ...], dict[str, str]]:
        if aws.account != plan.account:
            # Never act with another account's credentials, whatever the caller passed.
            raise ActionFailed("WrongAccount",
                               f"credentials are for {aws.account}, plan is for {plan.account}")
        bound: dict[str, str] = dict(outputs or {})
        issued: list[ApiCall] = []
        for step in steps:
            params = resolve(dict(step.call.params), bound)
            api = ApiCall(step.call.service, step.call.operation, params, step.call.account,
                          step.call.region)
            issued.append(api)
            try:
                result = await invoke(aws, api)
            except ActionFailed as exc:
                if exc.code not in step.tolerate:
                    raise
                log.info("tolerated %s on %s.%s: already in the wanted state", exc.code,
                         api.service, api.operation,
                         extra={"action": plan.kind, "action_id": plan.id})
                bound.update(await self.on_tolerated(step, exc.code, plan, aws, bound))
                continue
            for name, key in step.bind.items():
                value = result.get(key)
                if isinstance(value, str):
                    bound[name] = value
        return tuple(issued), bound


def tags_dict(tags: Sequence[Mapping[str, Any]] | None) -> dict[str, str]:
    return {str(t["Key"]): str(t.get("Value", "")) for t in tags or ()}
