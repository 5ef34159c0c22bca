"""docs/configuration.md is generated from the models and must not drift from them."""

from __future__ import annotations

from pathlib import Path

from pipeline import configdoc

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_reference_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == configdoc.render(), (
        "docs/configuration.md is stale: run `python -m pipeline.configdoc > "
        "docs/configuration.md`")


def test_reference_documents_every_section_and_source_type() -> None:
    text = configdoc.render()
    for heading in ("## `service`", "## `sources`", "## `sinks`", "## `containment`",
                    "## `detections`", "## `correlate`", "## `score`", "## `state`"):
        assert heading in text
    assert "queue_url" in text and "stream_name" in text and "**required**" in text
