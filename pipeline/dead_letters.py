"""Dead letters in the state store: list them, and send them again.

A Kinesis record that kept failing is written to the state store (see
``pipeline.sources.kinesis``) because Kinesis cannot redeliver one record. Once
the cause is fixed, operators need to see what is there and replay it through
the normal path; ``riposte dead-letters`` does both through the configured
store's ``scan``, so it works the same on SQLite and DynamoDB.

Redrive is at-least-once by construction: a record goes back with PutRecords
first, and its dead letter is deleted only after PutRecords accepted that very
record. A record PutRecords refused (per-record ``ErrorCode``) or a call that
failed keeps its dead letter for the next attempt. If the delete itself fails
after a successful put, the letter stays and a second redrive sends the record
again: downstream deduplication (the action ledger, the delivery ledger)
absorbs such a duplicate, whereas a lost record would be lost for good.

A sink's dead letter (an item the sink refused for good: a 400, a 413, a bad
token) keeps the item as JSON. Once the cause is fixed, ``redrive --sink`` sends
those items to that sink again through its own runner, and deletes a letter only
once the sink accepted its item (see :func:`redrive_sink`).

Listing never shows a record's payload unless asked: poison records are
often exactly the events that carry credentials or personal data.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from pipeline.aws import aws_error_code
from pipeline.item_codec import item_from_json
from pipeline.sources.kinesis import DEADLETTER_PREFIX as KINESIS_PREFIX
from pipeline.sources.kinesis import deadletter_prefix
from pipeline.state.base import StateStore, Stored
from sinks._runner import Outcome, SinkRunner
from sinks.delivery_ledger import DEAD_LETTER_PREFIX as SINK_PREFIX

SourceKind = Literal["kinesis", "sink"]

# PutRecords limits: 500 records and 5 MiB (data plus partition keys) per call.
MAX_BATCH_RECORDS = 500
MAX_BATCH_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One stored dead letter, as read from the state store."""

    key: str
    source: SourceKind
    # The stream (Kinesis) or sink the letter belongs to.
    origin: str
    reason: str
    # Epoch seconds when it was dead-lettered, and when the store expires it (None = never).
    at: float | None
    expires_at: float | None
    # Bytes of the payload: the decoded record (Kinesis) or the serialised item (sink).
    size: int
    version: int
    value: Mapping[str, Any] = field(repr=False)

    def payload(self) -> bytes:
        """The record's bytes (Kinesis) or the refused item as JSON (sink)."""
        if self.source == "kinesis":
            return _decode(self.value.get("data"))
        return orjson.dumps(self.value.get("item"))

    def summary(self, *, show_payload: bool = False) -> dict[str, Any]:
        """Everything but the payload (unless asked): safe to print or ship to a ticket."""
        out: dict[str, Any] = {
            "key": self.key, "source": self.source, "origin": self.origin,
            "reason": self.reason, "at": self.at, "expires_at": self.expires_at,
            "size": self.size}
        if self.source == "kinesis":
            for name in ("shard", "sequence", "partition_key", "cause", "attempts", "detail",
                         "worker"):
                out[name] = self.value.get(name)
        else:
            out["item_id"] = self.value.get("item_id")
            out["item_kind"] = self.value.get("item_kind")
        if show_payload:
            out["payload"] = _printable(self.payload())
        return out


def _decode(data: Any) -> bytes:
    if not isinstance(data, str):
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _printable(data: bytes) -> str:
    """UTF-8 text when the payload is text, else ``base64:`` and its base64."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode("ascii")


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _from_stored(stored: Stored) -> DeadLetter:
    value = stored.value
    if stored.key.startswith(KINESIS_PREFIX):
        return DeadLetter(
            key=stored.key, source="kinesis", origin=str(value.get("stream", "")),
            reason=str(value.get("reason", "")), at=_float(value.get("dead_lettered_at")),
            expires_at=stored.expires_at, size=len(_decode(value.get("data"))),
            version=stored.version, value=value)
    return DeadLetter(
        key=stored.key, source="sink", origin=str(value.get("sink", "")),
        reason=str(value.get("reason", "")), at=_float(value.get("at")),
        expires_at=stored.expires_at, size=len(orjson.dumps(value.get("item"))),
        version=stored.version, value=value)


async def list_dead_letters(store: StateStore, *, source: SourceKind = "kinesis",
                            stream: str | None = None, limit: int | None = None
                            ) -> list[DeadLetter]:
    """Live dead letters in key order (expired ones are invisible, as for every read)."""
    if source == "kinesis":
        prefix = deadletter_prefix(stream)
    elif stream is not None:
        raise ValueError("a stream applies to Kinesis dead letters only")
    else:
        prefix = SINK_PREFIX
    return [_from_stored(s) for s in await store.scan(prefix, limit=limit)]


# --- redrive ------------------------------------------------------------------------------------
RedriveStatus = Literal["redriven", "failed", "would_redrive", "put_not_deleted"]


@dataclass(frozen=True, slots=True)
class RedriveOutcome:
    key: str
    status: RedriveStatus
    # Why it failed, or the new sequence number of a redriven record.
    detail: str = ""


@dataclass(slots=True)
class RedriveReport:
    # The stream (Kinesis) or sink (``target_kind == "sink"``) the letters went back to.
    target: str
    dry_run: bool
    outcomes: list[RedriveOutcome] = field(default_factory=list)
    target_kind: Literal["stream", "sink"] = "stream"

    def count(self, status: RedriveStatus) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def ok(self) -> bool:
        """True when every dead letter was redriven (or, in a dry run, could be)."""
        return all(o.status in ("redriven", "would_redrive") for o in self.outcomes)

    def as_dict(self) -> dict[str, Any]:
        return {self.target_kind: self.target, "dry_run": self.dry_run,
                "counts": {s: self.count(s) for s in
                           ("redriven", "failed", "would_redrive", "put_not_deleted")},
                "outcomes": [{"key": o.key, "status": o.status, "detail": o.detail}
                             for o in self.outcomes]}


@dataclass(frozen=True, slots=True)
class _Entry:
    letter: DeadLetter
    data: bytes
    partition_key: str

    @property
    def size(self) -> int:
        return len(self.data) + len(self.partition_key.encode("utf-8"))


def _order(letter: DeadLetter) -> tuple[str, int, str]:
    """Shard, then sequence number as a number: the order the records were first read."""
    sequence = str(letter.value.get("sequence", ""))
    return (str(letter.value.get("shard", "")),
            int(sequence) if sequence.isdigit() else -1, letter.key)


def _batches(entries: Sequence[_Entry]) -> Iterator[list[_Entry]]:
    batch: list[_Entry] = []
    size = 0
    for entry in entries:
        if batch and (len(batch) >= MAX_BATCH_RECORDS or size + entry.size > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry.size
    if batch:
        yield batch



def _error_code(exc: BaseException) -> str:
    return aws_error_code(exc) or type(exc).__name__


async def redrive_kinesis(store: StateStore, client: Any, stream: str, *,
                          dry_run: bool = False, limit: int | None = None) -> RedriveReport:
    """Put ``stream``'s dead letters back on it with PutRecords; see the module docstring.

    ``client`` is an aiobotocore Kinesis client for the stream's region. Each record
    goes back with the data and partition key it was read with; Kinesis gives it a
    new sequence number and the source reads it as a new record.
    """
    report = RedriveReport(target=stream, dry_run=dry_run)
    letters = sorted(await list_dead_letters(store, source="kinesis", stream=stream,
                                             limit=limit), key=_order)
    entries: list[_Entry] = []
    for letter in letters:
        raw = letter.value.get("data")
        partition_key = str(letter.value.get("partition_key") or "")
        if not isinstance(raw, str) or (not _decode(raw) and raw):
            report.outcomes.append(RedriveOutcome(letter.key, "failed",
                                                  "stored data is not base64"))
        elif not partition_key:
            report.outcomes.append(RedriveOutcome(letter.key, "failed",
                                                  "stored partition key is empty"))
        elif dry_run:
            report.outcomes.append(RedriveOutcome(letter.key, "would_redrive"))
        else:
            entries.append(_Entry(letter, _decode(raw), partition_key))
    batches = list(_batches(entries))
    for index, batch in enumerate(batches):
        try:
            answer = await client.put_records(StreamName=stream, Records=[
                {"Data": e.data, "PartitionKey": e.partition_key} for e in batch])
        except Exception as exc:
            # The whole call failed (missing stream, no permission, throttled): nothing in
            # this batch was written, and later batches would fail the same way.
            reason = f"PutRecords failed: {_error_code(exc)}"
            for rest in batches[index:]:
                report.outcomes.extend(RedriveOutcome(e.letter.key, "failed", reason)
                                       for e in rest)
            break
        results = answer.get("Records") or []
        for position, entry in enumerate(batch):
            result = results[position] if position < len(results) else {}
            if result.get("ErrorCode") or not result.get("SequenceNumber"):
                code = result.get("ErrorCode") or "no result for this record"
                message = result.get("ErrorMessage") or ""
                report.outcomes.append(RedriveOutcome(
                    entry.letter.key, "failed", f"{code}: {message}" if message else code))
                continue
            sequence = str(result["SequenceNumber"])
            try:
                await store.delete(entry.letter.key, expected_version=entry.letter.version)
            except Exception as exc:
                report.outcomes.append(RedriveOutcome(
                    entry.letter.key, "put_not_deleted",
                    f"put as {sequence}, but deleting the dead letter failed "
                    f"({_error_code(exc)}): a second redrive sends it again"))
                continue
            report.outcomes.append(RedriveOutcome(entry.letter.key, "redriven", sequence))
    return report


async def redrive_sink(store: StateStore, runner: SinkRunner, *, dry_run: bool = False,
                       limit: int | None = None) -> RedriveReport:
    """Send a sink the items it refused, once the cause is fixed (a token, a limit...).

    Each dead letter's item is decoded back into the record it was
    (:mod:`pipeline.item_codec`) and submitted through the sink's own runner, so it is
    batched, rate-limited, retried and checked against the delivery ledger like live
    traffic. A letter is deleted only once the sink accepted its item (or the ledger
    shows it was accepted already). An item refused again gets its dead letter
    rewritten by the runner, with the new reason and answer; one the sink could not take
    within its retry budget keeps its letter as it was.
    """
    report = RedriveReport(target=runner.name, dry_run=dry_run, target_kind="sink")
    stored = await store.scan(f"{SINK_PREFIX}{runner.name}:", limit=limit)
    pending: list[tuple[DeadLetter, asyncio.Future[Outcome]]] = []
    for letter in (_from_stored(s) for s in stored):
        try:
            item = item_from_json(letter.value.get("item"))
        except ValueError as exc:
            report.outcomes.append(RedriveOutcome(letter.key, "failed",
                                                  f"stored item unreadable: {exc}"))
            continue
        if dry_run:
            report.outcomes.append(RedriveOutcome(letter.key, "would_redrive"))
        else:
            pending.append((letter, await runner.submit(item)))
    for letter, future in pending:
        outcome = await future
        if outcome is Outcome.REJECTED:
            report.outcomes.append(RedriveOutcome(
                letter.key, "failed", "refused again; the dead letter holds the new answer"))
        elif outcome is Outcome.RELEASED:
            report.outcomes.append(RedriveOutcome(
                letter.key, "failed", f"not accepted within the retry budget "
                                      f"({runner.stopped or 'transient failures'}); kept"))
        else:
            try:
                await store.delete(letter.key, expected_version=letter.version)
            except Exception as exc:
                report.outcomes.append(RedriveOutcome(
                    letter.key, "put_not_deleted",
                    f"sent, but deleting the dead letter failed ({_error_code(exc)}): "
                    "the delivery ledger keeps a second redrive from sending it again"))
                continue
            report.outcomes.append(RedriveOutcome(letter.key, "redriven", outcome.value))
    return report
