"""Resolve secret references (``env:NAME``, ``secretsmanager:ID[#KEY]``) at start-up.

Resolution walks the validated config, replaces each referencing ``SecretStr``
with the real value (still a ``SecretStr``, so it prints masked) and registers
the value with the log scrubber. A reference that cannot be resolved is a
``ConfigError`` at start-up, never a surprise at the first delivery.

Every reference is tried before anything is reported, so one start-up (or one
``riposte check-config --resolve-secrets``) names every broken reference with
its config path, instead of one per attempt. Problems name the reference (an
environment variable or a secret id), never a value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, SecretStr

from pipeline.aws import AwsClients, aws_error_code
from pipeline.config import secret_reference
from pipeline.errors import ConfigError
from pipeline.logs import register_secret

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class SecretProblem:
    """A reference that cannot be resolved: where it is and why (never a value)."""

    path: str
    reference: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path} ({self.reference}): {self.reason}"


@dataclass(slots=True)
class SecretCheck:
    """What ``check_secrets`` found: how many references resolved, and the problems."""

    resolved: int = 0
    problems: list[SecretProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class _Unresolvable(Exception):
    """A reference that cannot be resolved; the message is the reason."""


def _error_reason(exc: BaseException) -> str:
    code = aws_error_code(exc)
    if code is not None:
        return code
    # Not an AWS answer (no endpoint, no credentials): the text says what is wrong.
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Resolver:
    def __init__(self, aws: AwsClients, env: Mapping[str, str]) -> None:
        self.aws = aws
        self.env = env
        # Secret id → its SecretString, or why it could not be read (fetched once each).
        self.cache: dict[str, str | _Unresolvable] = {}
        self.check = SecretCheck()

    async def _secret_string(self, secret_id: str) -> str:
        cached = self.cache.get(secret_id)
        if cached is None:
            try:
                client = await self.aws.client("secretsmanager")
                answer = await client.get_secret_value(SecretId=secret_id)
            except Exception as exc:
                cached = _Unresolvable(f"cannot read secret {secret_id!r} from Secrets "
                                       f"Manager: {_error_reason(exc)}")
            else:
                text = answer.get("SecretString")
                cached = text if isinstance(text, str) else _Unresolvable(
                    f"secret {secret_id!r} has no SecretString (binary secrets are not "
                    f"supported)")
            self.cache[secret_id] = cached
        if isinstance(cached, _Unresolvable):
            raise cached
        return cached

    async def _fetch(self, ref: str) -> str:
        secret_id, _, json_key = ref.partition("#")
        raw = await self._secret_string(secret_id)
        if not json_key:
            return raw
        try:
            value = orjson.loads(raw)[json_key]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise _Unresolvable(f"secret {secret_id!r} has no JSON key {json_key!r}") from None
        return str(value)

    async def _secret(self, value: SecretStr, path: str) -> SecretStr:
        ref = secret_reference(value)
        if ref is None:
            resolved = value.get_secret_value()
            register_secret(resolved)
            return SecretStr(resolved)
        scheme, name = ref
        try:
            if scheme == "env":
                if name not in self.env:
                    raise _Unresolvable(f"environment variable {name} is not set")
                resolved = self.env[name]
            else:
                resolved = await self._fetch(name)
        except _Unresolvable as exc:
            self.check.problems.append(SecretProblem(path, f"{scheme}:{name}", str(exc)))
            return value  # left as the reference; the caller reports the problems
        self.check.resolved += 1
        register_secret(resolved)
        return SecretStr(resolved)

    async def walk(self, value: Any, path: str) -> Any:
        if isinstance(value, SecretStr):
            return await self._secret(value, path)
        if isinstance(value, BaseModel):
            updates = {}
            for name in type(value).model_fields:
                current = getattr(value, name)
                new = await self.walk(current, f"{path}.{name}")
                if new is not current:
                    updates[name] = new
            return value.model_copy(update=updates) if updates else value
        if isinstance(value, list):
            items = [await self.walk(v, f"{path}[{i}]") for i, v in enumerate(value)]
            return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
        if isinstance(value, dict):
            out = {k: await self.walk(v, f"{path}.{k}") for k, v in value.items()}
            return out if any(out[k] is not value[k] for k in value) else value
        return value


def describe_problems(problems: list[SecretProblem]) -> str:
    """One line for one problem; a count and one indented line each for several."""
    if len(problems) == 1:
        return str(problems[0])
    lines = [f"{len(problems)} secret references cannot be resolved:"]
    lines.extend(f"  {p}" for p in problems)
    return "\n".join(lines)


async def resolve_secrets(config: M, aws: AwsClients,
                          env: Mapping[str, str] | None = None) -> M:
    """``config`` with every reference replaced by its value; ``ConfigError`` naming every
    reference that cannot be resolved."""
    resolver = _Resolver(aws, os.environ if env is None else env)
    resolved: M = await resolver.walk(config, "config")
    if resolver.check.problems:
        raise ConfigError(describe_problems(resolver.check.problems))
    return resolved


async def check_secrets(config: BaseModel, aws: AwsClients,
                        env: Mapping[str, str] | None = None) -> SecretCheck:
    """Resolve every reference exactly as ``resolve_secrets`` does and report, not raise.

    The resolved values are dropped: a check must never hand them to anything that prints.
    """
    resolver = _Resolver(aws, os.environ if env is None else env)
    await resolver.walk(config, "config")
    return resolver.check
