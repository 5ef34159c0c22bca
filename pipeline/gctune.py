"""Garbage-collector settings for a long-running pipeline process.

CPython frees almost everything by reference counting; its cyclic collector only
exists for reference cycles, yet by default it runs a young-generation pass every
700 net allocations and promotes whatever is alive at that moment. A busy pipeline
allocates thousands of objects per message, and each message is alive for tens of
milliseconds (it waits for sinks), so its objects get promoted, the older
generations fill, and full collections rescan the whole heap: botocore's service
models, caches, every in-flight event. Measured on the full chain benchmark, the
collector took about 40% of the process's CPU (docs/performance.md).

Two remedies, both standard for long-lived Python services:

* a larger young-generation threshold, so a pass happens after the short-lived
  objects of many messages have already been freed by reference counting;
* ``gc.freeze()`` once start-up is done, which moves everything allocated so far
  (SDK models, configuration, clients) into a permanent generation that
  collections never scan again.

Cycles are still collected, only less often; memory held by cyclic garbage is
bounded by the threshold.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GcPolicy:
    """``young_threshold`` 0 keeps Python's own thresholds; ``freeze`` freezes start-up."""

    young_threshold: int = 50_000
    freeze: bool = True


@dataclass(frozen=True, slots=True)
class _Saved:
    thresholds: tuple[int, int, int]
    froze: bool


class GcTuning:
    """Applies a :class:`GcPolicy` for the life of a run and puts things back after.

    Restoring matters where several runs share a process (tests, the demo): a run
    leaves the collector as it found it.
    """

    def __init__(self, policy: GcPolicy) -> None:
        self.policy = policy
        self._saved: _Saved | None = None

    def apply(self) -> None:
        if self._saved is not None:
            return
        thresholds = gc.get_threshold()
        if self.policy.young_threshold:
            gc.set_threshold(self.policy.young_threshold, thresholds[1], thresholds[2])
        # A caller that froze objects itself keeps them frozen, and unfreezes them itself.
        freeze = self.policy.freeze and gc.get_freeze_count() == 0
        if freeze:
            gc.collect()  # start-up garbage is freed, not frozen
            gc.freeze()
        self._saved = _Saved(thresholds, freeze)
        log.debug("garbage collector tuned", extra={
            "gc_thresholds": gc.get_threshold(), "gc_frozen": gc.get_freeze_count()})

    def restore(self) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        gc.set_threshold(*saved.thresholds)
        if saved.froze:
            gc.unfreeze()
