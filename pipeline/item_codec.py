"""Sink items back from the JSON they were written as (``serde.dumps``).

A sink's dead letter keeps the refused item as JSON. To send it again once the cause
is fixed (``riposte dead-letters redrive --sink``), the item has to be an item again:
sinks build their payloads (ASFF, HEC events, Datadog entries) from the typed records,
not from JSON. The decoder is driven by the records' own type hints, so a field added
to a model is decoded without touching this module, and what it cannot read (a wrong
type, a missing required field) is a ``ValueError`` naming the field, never a record
half filled.

The JSON form is the contract: ``dumps(item_from_json(loads(dumps(item)))) ==
dumps(item)`` for every item the chain makes (tests hold it over real samples).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, Union, get_args, get_origin

from pipeline.models import ActionRecord, Event, Incident, Item

_KINDS: dict[str, type[Any]] = {"event": Event, "detection": Event, "incident": Incident,
                                "action": ActionRecord}


def item_from_json(doc: Any) -> Item:
    """The item ``doc`` (a JSON object from ``serde``) was made from."""
    if not isinstance(doc, Mapping):
        raise ValueError(f"an item is a JSON object, not {type(doc).__name__}")
    kind = doc.get("item_kind")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"item_kind {kind!r} is not one of {sorted(_KINDS)}")
    item: Item = _record(cls, doc, "item")
    return item


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _record(cls: type[Any], doc: Any, where: str) -> Any:
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where}: expected an object for {cls.__name__}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in doc:
            kwargs[f.name] = _value(hints[f.name], doc[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{where}.{f.name}: required field missing")
    return cls(**kwargs)


def _value(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(get_args(tp)):
            return None
        errors = []
        for option in options:  # the first that fits (the models' unions are of scalars)
            try:
                return _value(option, value, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[-1] if len(errors) == 1 else
                         f"{where}: {value!r} fits none of {options}"[:300])
    if origin is Literal:
        if value not in get_args(tp):
            raise ValueError(f"{where}: {value!r} is not one of {get_args(tp)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list")
        inner = get_args(tp)[0]
        return tuple(_value(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is not None and issubclass(origin, Mapping):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _record(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if tp is datetime:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected an ISO 8601 time")
        return datetime.fromisoformat(value)
    return _scalar(tp, value, where)


def _scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return value  # an int where a float may be stays an int, as it was written
    if tp in (str, int, bool) and type(value) is tp:
        return value
    raise ValueError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}"[:300])
