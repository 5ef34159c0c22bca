"""Generate docs/configuration.md from the configuration models themselves.

Each setting's description is the comment written above the field in the model's
source (or the field's ``description``), so the reference cannot drift from the
code: ``tests/unit/test_configdoc.py`` fails when the committed file is stale.

    python -m pipeline.configdoc > docs/configuration.md
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from pipeline.config import RiposteConfig

_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:")


def _comments(model: type[BaseModel]) -> dict[str, str]:
    """Field name → the comment block directly above its definition."""
    found: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            lines = inspect.getsource(cls).splitlines()
        except (OSError, TypeError):
            continue
        pending: list[str] = []
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("#"):
                pending.append(stripped.lstrip("#").strip())
                continue
            match = _FIELD_LINE.match(line)
            if match and pending:
                found[match.group(1)] = " ".join(pending)
            if stripped:
                pending = []
    return found


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(get_args(annotation)[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a!r}`".replace("'", '"') for a in get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in get_args(annotation))
    if origin in (list, dict, tuple, set, frozenset):
        inner = ", ".join(_type_name(a) for a in get_args(annotation))
        return f"{origin.__name__}[{inner}]"
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> str:
    if info.default is PydanticUndefined:
        if info.default_factory is not None:
            try:
                value = info.default_factory()  # type: ignore[call-arg]
            except TypeError:
                return ""
            return _render_value(value)
        return "**required**"
    return _render_value(info.default)


def _render_value(value: Any) -> str:
    if isinstance(value, BaseModel):
        return "(table)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return "(list of tables)"
    text = repr(value).replace("'", '"').replace("|", "\\|")
    return f"`{text}`" if len(text) < 60 else f"`{text[:57]}...`"


def _submodels(annotation: Any) -> list[type[BaseModel]]:
    out: list[type[BaseModel]] = []
    stack = [annotation]
    while stack:
        current = stack.pop()
        if isinstance(current, type) and issubclass(current, BaseModel):
            out.append(current)
        else:
            stack.extend(get_args(current))
    return out


def _section(model: type[BaseModel], path: str, lines: list[str], seen: set[str]) -> None:
    key = f"{path}:{model.__qualname__}"
    if key in seen:
        return
    seen.add(key)
    comments = _comments(model)
    doc = inspect.cleandoc(model.__doc__ or "") if model.__doc__ else ""
    lines.append(f"## `{path}` ({model.__name__})" if path else "## Top level")
    lines.append("")
    if doc and not doc.startswith(("Usage docs", "!!!")):
        lines += [doc, ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    nested: list[tuple[type[BaseModel], str]] = []
    for name, info in model.model_fields.items():
        meaning = info.description or comments.get(name, "")
        lines.append(f"| `{name}` | {_type_name(info.annotation)} | {_default(info)} | "
                     f"{meaning.replace('|', '/')} |")
        for sub in _submodels(info.annotation):
            nested.append((sub, f"{path}.{name}" if path else name))
    lines.append("")
    for sub, sub_path in nested:
        _section(sub, sub_path, lines, seen)


def render() -> str:
    lines = ["# Configuration reference", "",
             "Generated from the configuration models by `python -m pipeline.configdoc`; "
             "do not edit by hand.", "",
             "Riposte reads one TOML file (`riposte run -c FILE`) and then applies "
             "`RIPOSTE__SECTION__KEY=value` environment overrides. Unknown keys are errors. "
             "Secrets may be literal, `env:NAME` or `secretsmanager:ID[#key]`. Tables that "
             "appear under several `type`s (sources, sinks, state) take the keys of the "
             "chosen type.", ""]
    _section(RiposteConfig, "", lines, set())
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
