"""Helpers shared by the CloudTrail detection tests: derived records to normalized Events.

Records are built from the real samples in ``tests/fixtures/cloudtrail_rules/base``
by the edits listed in ``cases.json`` and run through the real normalize stage, so
the rules see exactly what they see in production.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson

from pipeline.aws import AwsClients
from pipeline.clock import WALL_CLOCK, Clock
from pipeline.config import RiposteConfig
from pipeline.context import RuntimeContext
from pipeline.detections.config import DetectionsConfig
from pipeline.models import Event, RawRecord
from pipeline.stages.normalize import NormalizeStage
from pipeline.state.base import StateStore
from pipeline.state.memory import MemoryStore

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cloudtrail_rules"
BASE = FIXTURES / "base"
# Same place and skip message as tests/conftest.py's helper (conftest is not importable
# by name under every runner, so it is repeated here).

_MISSING = object()


def load_base(name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((BASE / name).read_bytes())
    return data


def _walk(doc: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    parts = path.split(".")
    node = doc
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = node[part] = {}
        node = nxt
    return node, parts[-1]


def derive(base: str, set_: dict[str, Any] | None = None,
           unset: list[str] | None = None) -> dict[str, Any]:
    """A copy of base record ``base`` with fields set and removed."""
    doc = copy.deepcopy(load_base(base))
    for path, value in (set_ or {}).items():
        node, key = _walk(doc, path)
        node[key] = value
    for path in unset or ():
        node, key = _walk(doc, path)
        node.pop(key, None)
    return doc


def normalized(record: dict[str, Any]) -> Event:
    events = NormalizeStage().normalize(RawRecord(payload=record, message_id="test"))
    assert len(events) == 1
    return events[0]


def load_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = orjson.loads((FIXTURES / "cases.json").read_bytes())["cases"]
    return cases


def make_ctx(store: StateStore | None = None, clock: Clock = WALL_CLOCK,
             **detections: Any) -> RuntimeContext:
    config = RiposteConfig(detections=DetectionsConfig(**detections))
    return RuntimeContext(config=config, store=store or MemoryStore(clock), aws=AwsClients(),
                          clock=clock)
