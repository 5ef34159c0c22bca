"""GC settings for a run: applied when the runner starts, put back when it ends."""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from pipeline.chain import Chain
from pipeline.config import parse_config
from pipeline.errors import ConfigError
from pipeline.gctune import GcPolicy, GcTuning
from pipeline.worker import Runner
from tests.unit.test_chain_and_runner import ListSource


@pytest.fixture(autouse=True)
def _python_defaults() -> Iterator[None]:
    """Each test starts from (and leaves) Python's own settings."""
    before = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


@pytest.mark.parametrize(("policy", "threshold0", "frozen"), [
    (GcPolicy(), 50_000, True),
    (GcPolicy(young_threshold=0, freeze=True), None, True),  # None: unchanged
    (GcPolicy(young_threshold=12_345, freeze=False), 12_345, False),
])
def test_policy_applies_and_restores(policy: GcPolicy, threshold0: int | None,
                                     frozen: bool) -> None:
    before = gc.get_threshold()
    kept = [object()]  # something alive from "start-up"
    tuning = GcTuning(policy)
    tuning.apply()
    tuning.apply()  # idempotent: the saved settings stay Python's own
    assert gc.get_threshold() == ((threshold0 or before[0]), *before[1:])
    assert (gc.get_freeze_count() > 0) is frozen
    tuning.restore()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    tuning.restore()  # nothing left to restore
    assert gc.get_threshold() == before and kept


class SeeGc:
    """A stage that records the collector's settings while messages are processed."""

    name = "see-gc"

    def __init__(self) -> None:
        self.seen: list[tuple[tuple[int, int, int], int]] = []

    async def process(self, item: Any) -> Sequence[Any]:
        self.seen.append((gc.get_threshold(), gc.get_freeze_count()))
        return []


async def test_runner_runs_under_the_policy_and_restores_it_after() -> None:
    before = gc.get_threshold()
    stage = SeeGc()
    runner = Runner([ListSource(["a", "b"])], Chain([stage], []), concurrency=2,
                    gc_policy=GcPolicy(young_threshold=40_000))
    await runner.run()
    assert [t for t, _ in stage.seen] == [(40_000, *before[1:])] * 2
    assert all(frozen > 0 for _, frozen in stage.seen)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


async def test_runner_without_a_policy_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    stage = SeeGc()
    await Runner([ListSource(["a"])], Chain([stage], [])).run()
    assert stage.seen == [(before, 0)]


def test_service_config_gives_the_policy_and_rejects_bad_values() -> None:
    service = parse_config({}, env={}).service
    assert service.gc_policy() == GcPolicy(young_threshold=50_000, freeze=True)
    custom = parse_config({"service": {"gc_young_threshold": 0, "gc_freeze": False}},
                          env={}).service
    assert custom.gc_policy() == GcPolicy(young_threshold=0, freeze=False)
    with pytest.raises(ConfigError):
        parse_config({"service": {"gc_young_threshold": -1}}, env={})


def test_a_callers_own_freeze_is_left_to_the_caller() -> None:
    gc.freeze()
    frozen = gc.get_freeze_count()  # frozen objects may still be freed: it can only drop
    young: list[list[int]] = [[] for _ in range(1000)]  # what a second freeze would take in
    tuning = GcTuning(GcPolicy())
    tuning.apply()
    assert 0 < gc.get_freeze_count() <= frozen  # nothing frozen on its behalf
    tuning.restore()
    assert 0 < gc.get_freeze_count() <= frozen  # and nothing unfrozen either
    assert len(young) == 1000
