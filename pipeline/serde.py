"""JSON in and out, with orjson, and decoding errors mapped to poison.

One place decides how items look on the wire, so every sink, the ledger and the
replay report serialize an incident the same way.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.errors import PermanentError

_DUMP_OPTS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS
_SORTED = _DUMP_OPTS | orjson.OPT_SORT_KEYS


def _default(obj: Any) -> Any:
    if isinstance(obj, frozenset | set):
        return sorted(obj)
    if hasattr(obj, "items"):  # Mapping proxies and other read-only mappings
        return dict(obj.items())
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def dumps(obj: Any, *, sort_keys: bool = False) -> bytes:
    """Serialize dataclasses, datetimes, enums and plain JSON values."""
    return orjson.dumps(obj, default=_default, option=_SORTED if sort_keys else _DUMP_OPTS)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; invalid JSON, invalid UTF-8 or nesting deeper than orjson allows is poison."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise PermanentError(f"invalid JSON: {exc}", reason="invalid_json") from exc


def loads_object(data: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """Parse JSON that must be an object."""
    value = loads(data)
    if not isinstance(value, dict):
        raise PermanentError(
            f"expected a JSON object, got {type(value).__name__}", reason="not_an_object"
        )
    return value


def to_jsonable(obj: Any) -> Any:
    """Round-trip through JSON: plain dicts/lists for stores that want them."""
    return orjson.loads(dumps(obj))
