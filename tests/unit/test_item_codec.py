"""Items back from their JSON: exact for everything the chain makes, clear errors otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.config import parse_config
from pipeline.item_codec import item_from_json
from pipeline.models import ActionRecord, Event, Incident
from pipeline.replay import ReplayOptions, run_replay
from pipeline.serde import dumps

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

pytestmark = pytest.mark.usefixtures("moto_server")


@pytest.fixture(scope="module")
def sent_lines(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Every item the chain sends for the project's real and derived samples, as a sink
    received it: detections, incidents with their triggers, and containment records."""
    import asyncio

    out = tmp_path_factory.mktemp("codec") / "items.jsonl"
    config = parse_config({
        "service": {"region": "us-east-1"},
        "containment": {"mode": "dry-run", "policies": [
            {"name": "isolate", "match": {"resource_types": ["ec2.instance"]},
             "actions": [{"kind": "ec2.isolate"}]},
            {"name": "keys", "match": {"resource_types": ["iam.access_key"]},
             "actions": [{"kind": "iam.deactivate_access_key"}]}]},
        "sinks": [{"type": "jsonl", "name": "all", "path": str(out), "routing": {
            "kinds": ["event", "detection", "incident", "action"]}}],
    }, env={})
    inputs = [str(FIXTURES / "samples"), str(FIXTURES / "derived")]
    asyncio.run(run_replay(config, ReplayOptions(inputs=inputs, send_to_sinks=True)))
    return out.read_bytes().splitlines()


def test_the_corpus_has_every_kind_of_item(sent_lines: list[bytes]) -> None:
    kinds = {orjson.loads(line)["item_kind"] for line in sent_lines}
    assert kinds >= {"event", "detection", "incident", "action"}, kinds
    assert any(orjson.loads(line).get("trigger") for line in sent_lines
               if orjson.loads(line)["item_kind"] == "incident")


def test_every_item_decodes_to_the_same_json(sent_lines: list[bytes]) -> None:
    types = {"event": Event, "detection": Event, "incident": Incident, "action": ActionRecord}
    for line in sent_lines:
        doc = orjson.loads(line)
        item = item_from_json(doc)
        assert isinstance(item, types[doc["item_kind"]])
        assert dumps(item) == line, doc.get("id")


def _an_incident(sent_lines: list[bytes]) -> dict[str, Any]:
    for line in sent_lines:
        doc: dict[str, Any] = orjson.loads(line)
        if doc["item_kind"] == "incident":
            return doc
    raise AssertionError("no incident in the corpus")


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(item_kind="alert"), "item_kind 'alert'"),
    (lambda d: d.pop("id"), "item.id: required field missing"),
    (lambda d: d.update(revision="2"), "item.revision: expected int"),
    (lambda d: d.update(first_seen=17), "item.first_seen: expected an ISO 8601 time"),
    (lambda d: d.update(findings={}), "item.findings: expected a list"),
    (lambda d: d["findings"][0].update(kind="nope"), "item.findings[0].kind"),
    (lambda d: d.update(phase="gone"), "item.phase"),
])
def test_what_is_not_an_item_is_a_clear_error(sent_lines: list[bytes], change: Any,
                                              message: str) -> None:
    doc = _an_incident(sent_lines)
    change(doc)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        item_from_json(doc)


def test_not_an_object() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        item_from_json(["item_kind", "event"])
