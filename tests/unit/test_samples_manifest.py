"""The project's sample copies: licences, provenance, byte-exactness and derivations.

The copies in ``tests/fixtures/samples`` and ``pipeline/demo_data`` must be exactly
the shared files (when the shared set is present to compare against), must only
be permissively licensed, must each be listed in their trimmed manifest and
PROVENANCE.md, and the derived fixtures must be what ``derive.py`` produces.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import FIXTURES, ROOT, shared_samples_or_skip

SAMPLES = FIXTURES / "samples"
DERIVED = FIXTURES / "derived"
DEMO = ROOT / "pipeline" / "demo_data"
PERMISSIVE_PREFIXES = ("Apache-2.0", "MIT", "MIT-0")


def entries(root: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(
        (root / "manifest.json").read_text(encoding="utf-8"))["files"]
    return data


def json_files(root: Path, *, skip_dirs: tuple[str, ...] = ()) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.json")
            if p.name != "manifest.json" and p.relative_to(root).parts[0] not in skip_dirs}


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("root", "skip"), [(SAMPLES, ()), (DEMO, ("derived",))],
                         ids=["tests-fixtures", "demo-data"])
def test_copies_match_their_trimmed_manifest_and_provenance(root: Path,
                                                            skip: tuple[str, ...]) -> None:
    listed = entries(root)
    assert json_files(root, skip_dirs=skip) == {e["file"] for e in listed}
    provenance = (root / "PROVENANCE.md").read_text(encoding="utf-8")
    for entry in listed:
        src = entry["source"]
        assert f"`{entry['file']}`" in provenance
        assert (src.get("doc_url") or src["commit"]) in provenance
        assert src["license"] in provenance
        licence = src["license"]
        assert licence.startswith(PERMISSIVE_PREFIXES) or "sample code MIT-0" in licence


@pytest.mark.parametrize("root", [FIXTURES, DEMO], ids=["tests-fixtures", "demo-data"])
def test_no_agpl_sample_is_ever_copied(root: Path) -> None:
    assert not [p for p in root.rglob("*") if p.name.startswith("panther-go-")]
    for manifest in root.rglob("manifest.json"):
        for entry in json.loads(manifest.read_text(encoding="utf-8")).get("files", []):
            licence = entry.get("license") or entry.get("source", {}).get("license", "")
            assert "GPL" not in str(licence), entry.get("file")


def test_demo_copies_are_the_test_copies() -> None:
    for entry in entries(DEMO):
        assert (DEMO / entry["file"]).read_bytes() == (SAMPLES / entry["file"]).read_bytes()
    for name in json_files(DERIVED):
        assert (DEMO / "derived" / name).read_bytes() == (DERIVED / name).read_bytes()


def test_copies_are_byte_exact_and_manifest_entries_unchanged() -> None:
    shared = shared_samples_or_skip()
    shared_entries = {e["file"]: e for e in entries(shared)}
    for entry in entries(SAMPLES):
        assert (SAMPLES / entry["file"]).read_bytes() == (shared / entry["file"]).read_bytes()
        assert entry == shared_entries[entry["file"]]
    # Every permissive shared file was copied; every AGPL one was not.
    for name, entry in shared_entries.items():
        agpl = "AGPL" in entry["source"]["license"]
        assert (SAMPLES / name).exists() is (not agpl), name


def test_derived_fixtures_are_documented_and_reproducible() -> None:
    listed = entries(DERIVED)
    assert json_files(DERIVED) == {e["file"] for e in listed}
    provenance = (DERIVED / "PROVENANCE.md").read_text(encoding="utf-8")
    derive = load_module(DERIVED / "derive.py", "derive_fixtures")
    for entry in listed:
        assert (SAMPLES / entry["derived_from"]).is_file()
        assert f"`{entry['file']}`" in provenance and entry["changes"] in provenance
        data = (DERIVED / entry["file"]).read_text(encoding="utf-8")
        assert "GeneratedFinding" not in data
        _origin, build, _changes, _expect = derive.CHANGES[entry["file"]]
        assert json.loads(data) == build()
    assert (DEMO / "derived" / "PROVENANCE.md").read_text(encoding="utf-8") == provenance
