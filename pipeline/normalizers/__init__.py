"""Per-producer normalizers: GuardDuty, Inspector2, CloudTrail, ASFF and the EventBridge envelope.

Each module validates only the fields it reads (a small lenient pydantic model
with ``extra="allow"``, plus defensive reads of the wide nested parts) and maps
the producer's vocabulary onto :class:`pipeline.models.Event`. Dispatch between
them lives in :mod:`pipeline.stages.normalize`.
"""
