"""Records: value semantics at runtime, and frozen to the type checker."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mypy import api as mypy_api

from pipeline.models import Event, EventKind, ResourceRef
from pipeline.records import record
from tests.unit.cloudtrail_cases import derive, normalized


def test_records_compare_and_hash_by_value() -> None:
    a = ResourceRef("ec2.instance", "i-0123456789abcdef0", account="123456789012")
    b = ResourceRef("ec2.instance", "i-0123456789abcdef0", account="123456789012")
    assert a == b and replace(a, id="i-1") != a
    assert not hasattr(a, "__dict__")  # slotted

    @record
    class Key:
        kind: str
        id: str

    assert hash(Key("a", "b")) == hash(Key("a", "b")) and len({Key("a", "b"), Key("a", "b")}) == 1


def test_replace_copies_and_leaves_the_original_alone() -> None:
    event = normalized(derive("panther-getcalleridentity-awscli.json", {}))
    changed = replace(event, observe_only=True, observe_reason="test")
    assert changed.observe_only and not event.observe_only
    assert changed.id == event.id and changed.kind is EventKind.CLOUDTRAIL
    assert isinstance(changed, Event)


def test_assigning_a_field_is_a_type_error(tmp_path: Path) -> None:
    # Records are not frozen at runtime (that is what makes them cheap to build): the
    # guarantee is mypy --strict's, which CI runs. This checks that the decorator still
    # gives it: an assignment is refused, and a correct use is not.
    source = tmp_path / "uses_a_record.py"
    source.write_text(
        "from pipeline.records import record\n\n\n"
        "@record\nclass Point:\n    x: int\n    y: int = 0\n\n\n"
        "p = Point(1)\n"
        "q = Point(x=2, y=3)\n"
        "p.x = 2\n")
    out, err, status = mypy_api.run(["--strict", "--no-incremental", "--follow-imports=silent",
                                     "--cache-dir", str(tmp_path / "cache"), str(source)])
    assert status == 1, out + err
    assert out.count("error:") == 1
    assert f"{source.name}:12: error: Property \"x\" defined in \"Point\" is read-only" in out


def test_a_record_is_not_frozen_at_runtime() -> None:
    # Documented trade-off (pipeline/records.py): no FrozenInstanceError, so nothing in
    # the project may rely on one.
    @record
    class Point:
        x: int

    p = Point(1)
    p.x = 2  # type: ignore[misc]  # no FrozenInstanceError
    assert p.x == 2
