"""The JSON-lines sink: one JSON object per line, appended, optionally fsynced."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.models import Item
from sinks.config import JsonLinesSinkConfig
from sinks.jsonl import JsonLinesSink
from tests.sink_items import action, detection, incident


@pytest.mark.parametrize("fsync", [False, True])
async def test_lines_are_appended_and_parse(tmp_path: Path, fsync: bool) -> None:
    path = tmp_path / "out" / "riposte.jsonl"
    sink = JsonLinesSink(JsonLinesSinkConfig(path=str(path), fsync=fsync))
    await sink.healthcheck()
    items: list[Item] = [incident(1), detection(2), action(3)]
    results = await asyncio.gather(sink.send(items[:2]), sink.send(items[2:]))
    assert sum(len(r.delivered) for r in results) == 3
    await sink.aclose()
    sink = JsonLinesSink(JsonLinesSinkConfig(path=str(path)))
    await sink.send([incident(4)])
    await sink.aclose()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == ["act-3", "det-2", "inc-1", "inc-4"]
    assert {line["item_kind"] for line in lines} == {"incident", "detection", "action"}


async def test_unwritable_path_fails_the_healthcheck(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    sink = JsonLinesSink(JsonLinesSinkConfig(path=str(blocker / "x.jsonl")))
    with pytest.raises(ConfigError, match="cannot open"):
        await sink.healthcheck()


async def test_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    sink = JsonLinesSink(JsonLinesSinkConfig(path="-"))
    result = await sink.send([incident(9)])
    await sink.aclose()
    assert len(result.delivered) == 1
    assert json.loads(capsys.readouterr().out)["id"] == "inc-9"
