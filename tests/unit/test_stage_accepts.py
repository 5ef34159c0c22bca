"""A stage's ``accepts`` test is sound: whatever it turns away, ``process`` hands back as is.

Replay skips ``process`` for items a stage does not accept (pipeline/chain.py, Stage),
so a test that said False for an item the stage would change, drop or act on would
silently lose work. Every item the real chain makes from the project's samples (events
of each kind, detections, incidents, action records) is offered to every laned stage
that declares the test, as built for ``riposte run`` and as replay wraps containment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.assemble import build_stages
from pipeline.chain import Stage, acceptor
from pipeline.clock import EventTimeClock
from pipeline.config import parse_config
from pipeline.context import RuntimeContext
from pipeline.models import ActionRecord, Event, EventKind, Incident, RawRecord
from pipeline.readonly_aws import ReadOnlyAwsClients
from pipeline.replay import SimulatedResponse
from pipeline.state.memory import MemoryStore

SAMPLES = Path(__file__).resolve().parent.parent / "fixtures" / "samples"
DERIVED = Path(__file__).resolve().parent.parent / "fixtures" / "derived"

pytestmark = pytest.mark.usefixtures("moto_server")


def _payloads() -> list[Any]:
    out = []
    for root in (SAMPLES, DERIVED):
        for path in sorted(root.rglob("*.json")):
            if path.name == "manifest.json":
                continue
            out.append(orjson.loads(path.read_bytes()))
    return out


async def _chain() -> tuple[RuntimeContext, list[Stage], list[Stage]]:
    clock = EventTimeClock()
    # A policy for every incident, so containment plans actions too (dry-run: nothing runs).
    config = parse_config({"service": {"region": "us-east-1"}, "containment": {
        "policies": [{"name": "all", "actions": [{"kind": "notify"}]}]}}, env={})
    ctx = RuntimeContext(config=config, store=MemoryStore(clock),
                         aws=ReadOnlyAwsClients("us-east-1"), clock=clock, simulate=True)
    prefix, laned, fanout = build_stages(config, ctx)
    core = [s for s in laned if s is not fanout]
    replayed = [SimulatedResponse(s, config.containment, ctx.store, clock)
                if s.name == "contain" else s for s in core]
    return ctx, prefix, [*core, *replayed[-1:]]


async def _items(prefix: list[Stage], laned: list[Stage]) -> list[Any]:
    """Everything the chain makes from the samples, stage after stage."""
    seen: list[Any] = []
    for payload in _payloads():
        items: list[Any] = [RawRecord(payload=payload, message_id="m")]
        for stage in prefix[1:]:  # decode is for whole messages; these are decoded
            nxt: list[Any] = []
            for item in items:
                try:
                    nxt.extend(await stage.process(item))
                except Exception:
                    continue
            items = nxt
        for stage in laned[:-1]:  # the replay wrapper's own run would repeat contain's
            nxt = []
            for item in items:
                nxt.extend(await stage.process(item))
            items = nxt
            seen.extend(items)
    return seen


async def test_what_a_stage_turns_away_it_would_hand_back_unchanged() -> None:
    ctx, prefix, laned = await _chain()
    try:
        items = await _items(prefix, laned)
        checked = await _check(laned, items)
    finally:
        await ctx.aws.aclose()
    assert checked > len(items)


async def _check(laned: list[Stage], items: list[Any]) -> int:
    kinds = {type(i).__name__ if not isinstance(i, Event) else i.kind.value for i in items}
    # The samples reach every kind of item, so both answers of every test are exercised.
    assert {"Incident", "ActionRecord", EventKind.GUARDDUTY.value, EventKind.INSPECTOR.value,
            EventKind.CLOUDTRAIL.value, EventKind.DETECTION.value} <= kinds, kinds
    checked = 0
    for stage in laned:
        accepts = acceptor(stage)
        assert accepts is not None, stage.name
        assert {accepts(item) for item in items} == {True, False}, stage.name
        for item in items:
            if accepts(item):
                continue
            out = await stage.process(item)
            assert len(out) == 1 and out[0] is item, (stage.name, item)
            checked += 1
    # What each stage is for, spelled out once: detect takes calls, score incidents.
    detect, _, score = (acceptor(s) for s in laned[:3])
    assert detect is not None and score is not None
    assert all(isinstance(i, Event) and i.kind is EventKind.CLOUDTRAIL
               for i in items if detect(i))
    assert all(isinstance(i, Incident) for i in items if score(i))
    assert not any(isinstance(i, ActionRecord) for i in items if detect(i) or score(i))
    return checked
