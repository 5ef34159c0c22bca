"""Resolve secret references (``env:NAME``, ``secretsmanager:ID[#KEY]``) at start-up.

Resolution walks the validated config, replaces each referencing ``SecretStr``
with the real value (still a ``SecretStr``, so it prints masked) and registers
the value with the log scrubber. A reference that cannot be resolved is a
``ConfigError`` at start-up, never a surprise at the first delivery.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, SecretStr

from pipeline.aws import AwsClients
from pipeline.config import secret_reference
from pipeline.errors import ConfigError
from pipeline.logs import register_secret

M = TypeVar("M", bound=BaseModel)


async def _fetch(ref: str, aws: AwsClients, cache: dict[str, str]) -> str:
    secret_id, _, json_key = ref.partition("#")
    if secret_id not in cache:
        client = await aws.client("secretsmanager")
        try:
            answer = await client.get_secret_value(SecretId=secret_id)
        except Exception as exc:
            raise ConfigError(f"cannot read secret {secret_id!r} from Secrets Manager: "
                              f"{type(exc).__name__}") from None
        cache[secret_id] = answer.get("SecretString") or ""
    raw = cache[secret_id]
    if not json_key:
        return raw
    try:
        value = orjson.loads(raw)[json_key]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"secret {secret_id!r} has no JSON key {json_key!r}") from None
    return str(value)


async def _resolve(value: Any, aws: AwsClients, env: Mapping[str, str],
                   cache: dict[str, str], path: str) -> Any:
    if isinstance(value, SecretStr):
        ref = secret_reference(value)
        if ref is None:
            resolved = value.get_secret_value()
        elif ref[0] == "env":
            if ref[1] not in env:
                raise ConfigError(f"{path}: environment variable {ref[1]} is not set")
            resolved = env[ref[1]]
        else:
            resolved = await _fetch(ref[1], aws, cache)
        register_secret(resolved)
        return SecretStr(resolved)
    if isinstance(value, BaseModel):
        updates = {}
        for name in type(value).model_fields:
            current = getattr(value, name)
            new = await _resolve(current, aws, env, cache, f"{path}.{name}")
            if new is not current:
                updates[name] = new
        return value.model_copy(update=updates) if updates else value
    if isinstance(value, list):
        items = [await _resolve(v, aws, env, cache, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if isinstance(value, dict):
        out = {k: await _resolve(v, aws, env, cache, f"{path}.{k}") for k, v in value.items()}
        return out if any(out[k] is not value[k] for k in value) else value
    return value


async def resolve_secrets(config: M, aws: AwsClients,
                          env: Mapping[str, str] | None = None) -> M:
    resolved: M = await _resolve(config, aws, os.environ if env is None else env, {}, "config")
    return resolved
