"""Sink type -> build function, importing a sink's module only when a config uses it.

Lazy imports keep start-up light and keep optional dependencies optional: a
deployment that only writes JSON lines never imports aiohttp or the AWS clients.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, cast

from pipeline.context import RuntimeContext
from pipeline.errors import ConfigError
from sinks.base import Sink

# type -> module holding a module-level ``build(config, ctx) -> Sink``.
SINK_MODULES: dict[str, str] = {
    "jsonl": "sinks.jsonl",
    "splunk_hec": "sinks.splunk_hec",
    "datadog": "sinks.datadog",
    "webhook": "sinks.webhook",
    "security_hub": "sinks.security_hub",
    "sns": "sinks.sns",
    "eventbridge": "sinks.eventbridge",
}

BuildFn = Callable[[Any, RuntimeContext], Sink]


def register(sink_type: str, module: str) -> None:
    """Add (or replace) a sink type, e.g. from a plug-in package."""
    SINK_MODULES[sink_type] = module


def builder(sink_type: str) -> BuildFn:
    module_name = SINK_MODULES.get(sink_type)
    if module_name is None:
        known = ", ".join(sorted(SINK_MODULES))
        raise ConfigError(f"unknown sink type {sink_type!r}; known: {known}",
                          reason="unknown_sink_type", component="sinks")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"sink type {sink_type!r} is not available: {exc}",
                          reason="sink_unavailable", component="sinks") from exc
    build = getattr(module, "build", None)
    if not callable(build):
        raise ConfigError(f"{module_name} has no build(config, ctx) function",
                          reason="sink_unavailable", component="sinks")
    return cast(BuildFn, build)


def build_sink(config: Any, ctx: RuntimeContext) -> Sink:
    """Build the sink for one entry of ``config.sinks``."""
    return builder(str(config.type))(config, ctx)
