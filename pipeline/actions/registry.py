"""The action registry, filled by a decorator on each action class (Cloud Custodian's way).

Adding an action is one module with one decorated class; the contain stage, the
CLI and the IAM policy generator find it here. Every kind the configuration
accepts (``ACTION_KINDS``) must have exactly one registered implementation.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TypeVar

from pipeline.actions.base import BaseAction
from pipeline.actions.config import ACTION_KINDS

_REGISTRY: dict[str, BaseAction] = {}

A = TypeVar("A", bound=type[BaseAction])

_MODULES = (
    "ec2_isolate", "ec2_nacl", "ec2_instance_profile", "ec2_snapshot", "ec2_tag",
    "iam_access_key", "iam_quarantine", "s3_public_access", "dns_block", "notify",
)


def register(cls: A) -> A:
    kind = cls.kind
    if kind not in ACTION_KINDS:
        raise TypeError(f"{cls.__name__}: kind {kind!r} is not declared in ACTION_KINDS")
    if kind in _REGISTRY and type(_REGISTRY[kind]) is not cls:
        raise TypeError(f"action kind {kind!r} registered twice")
    if cls.resource_types != ACTION_KINDS[kind].resource_types:
        raise TypeError(f"{cls.__name__}: resource types differ from ACTION_KINDS[{kind!r}]")
    _REGISTRY[kind] = cls()
    return cls


def load_all() -> None:
    for name in _MODULES:
        importlib.import_module(f"pipeline.actions.{name}")


def get(kind: str) -> BaseAction:
    load_all()
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"no containment action registered for {kind!r}") from None


def kinds() -> list[str]:
    load_all()
    return sorted(_REGISTRY)


def all_permissions(enabled_kinds: Iterable[str] | None = None) -> list[str]:
    """The IAM actions the enabled kinds (default: every kind) need; drives deploy/iam."""
    needed: set[str] = set()
    for kind in kinds() if enabled_kinds is None else enabled_kinds:
        needed |= get(kind).permissions
    return sorted(needed)
