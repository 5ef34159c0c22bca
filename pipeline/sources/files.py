"""Archived events from local files and S3 prefixes, streamed one message body at a time.

Understood layouts (the ones security teams actually keep):

* a JSON document per file: one EventBridge event, one raw finding, a CloudTrail
  log file ``{"Records": [...]}``, or a JSON array of any of those;
* JSON lines (``.jsonl``, ``.ndjson``, or any file whose first line is a whole
  object): one message body per line;
* SQS message dumps (``aws sqs receive-message`` output: ``{"Messages": [{"Body": ...}]}``);
* any of these gzipped (``.gz``), decompressed as a stream;
* S3 prefixes (``s3://bucket/prefix``), listed page by page, optionally filtered by
  the ``AWSLogs/<account>/CloudTrail/<region>/YYYY/MM/DD/`` date path.

Bodies are produced lazily and files are decompressed as they are read
(``Unpacker``): memory follows the largest single file, not the size of the
archive. S3 objects are fetched a few at a time but handed out in listing order,
so the result does not depend on network timing. A file that cannot be read
(truncated gzip, not JSON) is reported through ``on_error`` and counted, and the
run goes on. CloudTrail log files come out parsed (``Body.records``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from pipeline import metrics
from pipeline.aws import AwsClients
from pipeline.config import FilesSourceConfig
from pipeline.context import RuntimeContext
from pipeline.sources.base import InFlightBudget, Message, Outcome

log = logging.getLogger(__name__)

_SUFFIXES = (".json", ".jsonl", ".ndjson", ".gz", ".log")
_CHUNK = 1 << 20
_MAX_BYTES = 256 * 1024 * 1024
_DATE_PATH = re.compile(r"/(\d{4})/(\d{2})/(\d{2})/")


@dataclass(frozen=True, slots=True)
class Body:
    """One message body from an archive, named by where it came from."""

    name: str
    data: bytes
    # A CloudTrail log file's records, already parsed: replay hands them straight to
    # normalize (what the decode stage would make of this file), so a large log file is
    # parsed once and is not held to the per-message size limit of a queue.
    records: list[dict[str, Any]] | None = None


ErrorHook = Callable[[str, str, str], None]  # (name, reason, detail)


def _is_gzip(data: bytes) -> bool:
    return data[:2] == b"\x1f\x8b"


def split_document(name: str, data: bytes, on_error: ErrorHook) -> Iterator[Body]:
    """The message bodies inside one file's (decompressed) bytes."""
    stripped = data.strip()
    if not stripped:
        on_error(name, "empty_file", "")
        return
    try:
        doc = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        doc = None
    if doc is None:
        # Not one document: JSON lines, if the first line is a whole JSON value.
        lines = [line for line in stripped.splitlines() if line.strip()]
        try:
            orjson.loads(lines[0])
        except orjson.JSONDecodeError as exc:
            on_error(name, "invalid_json", str(exc))
            return
        for i, line in enumerate(lines):
            yield Body(f"{name}#L{i + 1}", line)
        return
    if isinstance(doc, list):
        for i, element in enumerate(doc):
            yield Body(f"{name}#{i}", orjson.dumps(element))
        return
    if isinstance(doc, dict) and is_cloudtrail_file(doc):
        records = [r for r in doc["Records"] if isinstance(r, dict)]
        if len(records) != len(doc["Records"]):
            on_error(name, "cloudtrail_record_not_object",
                     f"{len(doc['Records']) - len(records)} records are not objects")
        if records:
            yield Body(name, b"", records)
        return
    if isinstance(doc, dict) and isinstance(doc.get("Messages"), list):
        for i, msg in enumerate(doc["Messages"]):
            body = msg.get("Body") if isinstance(msg, dict) else None
            if isinstance(body, str):
                yield Body(f"{name}#{i}", body.encode())
            else:
                on_error(f"{name}#{i}", "bad_sqs_dump", "message without a Body string")
        return
    yield Body(name, stripped)


def is_cloudtrail_file(doc: dict[str, Any]) -> bool:
    """``{"Records": [...]}`` of CloudTrail records (not an S3/SQS/SNS Lambda batch)."""
    records = doc.get("Records")
    if not isinstance(records, list) or not records or not isinstance(records[0], dict):
        return False
    first = records[0]
    source = first.get("eventSource") or first.get("EventSource") or ""
    return ("eventName" in first and ("eventTime" in first or "eventVersion" in first)
            and not str(source).startswith("aws:"))


def _local_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        if path.is_file() and (path.suffix in _SUFFIXES or path.name.endswith(".json.gz")):
            yield path


def count_local_files(paths: Sequence[str]) -> int:
    """How many files ``iter_local`` will open (for a progress ETA)."""
    return sum(1 for p in paths if Path(p).exists() for _ in _local_files(Path(p)))


def read_local(path: Path, on_error: ErrorHook, max_bytes: int = _MAX_BYTES) -> bytes | None:
    """One file's (decompressed) bytes, read in chunks; None when reported as unusable."""
    unpacker = Unpacker(str(path), on_error, max_bytes)
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                if not unpacker.feed(chunk):
                    return None
    except OSError as exc:
        on_error(str(path), "unreadable", str(exc))
        return None
    return unpacker.finish()


def iter_local(paths: Sequence[str], on_error: ErrorHook,
               max_bytes: int = _MAX_BYTES) -> Iterator[Body]:
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            on_error(raw, "missing_input", "no such file or directory")
            continue
        found = False
        for path in _local_files(root):
            found = True
            data = read_local(path, on_error, max_bytes)
            if data is not None:
                yield from split_document(str(path), data, on_error)
        if not found:
            on_error(raw, "empty_input", "no event files found")


def date_of_key(key: str) -> date | None:
    """The ``YYYY/MM/DD`` in a CloudTrail-style object key, if there is one."""
    match = _DATE_PATH.search(key)
    if not match:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def parse_s3_url(url: str) -> tuple[str, str]:
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix


async def iter_s3(url: str, aws: AwsClients, on_error: ErrorHook, *,
                  since: datetime | None = None, until: datetime | None = None,
                  max_object_bytes: int = 256 * 1024 * 1024,
                  read_ahead: int = 8) -> AsyncIterator[Body]:
    """Stream the bodies under an S3 prefix, skipping objects outside [since, until].

    Up to ``read_ahead`` objects are fetched at once (S3 reads are latency-bound), but
    bodies and errors come out in listing order, so a replay stays deterministic.
    """
    bucket, prefix = parse_s3_url(url)
    if not bucket:
        on_error(url, "bad_s3_url", "expected s3://bucket/prefix")
        return
    s3 = await aws.client("s3")
    paginator = s3.get_paginator("list_objects_v2")
    listed = 0
    pending: deque[asyncio.Task[tuple[str, bytes | None, list[tuple[str, str, str]]]]] = deque()
    pages = paginator.paginate(Bucket=bucket, Prefix=prefix).__aiter__()
    try:
        while True:
            try:
                page = await pages.__anext__()
            except StopAsyncIteration:
                break
            except Exception as exc:
                on_error(url, "s3_list_failed", f"{type(exc).__name__}: {exc}")
                listed = -1
                break
            for obj in page.get("Contents", []):
                listed += 1
                if not _wanted(obj, since, until):
                    continue
                name = f"s3://{bucket}/{obj['Key']}"
                if obj.get("Size", 0) > max_object_bytes:
                    on_error(name, "object_too_large", f"{obj.get('Size')} bytes")
                    continue
                pending.append(asyncio.create_task(
                    _fetch(s3, bucket, obj["Key"], name, max_object_bytes)))
                while len(pending) >= read_ahead:
                    for body in _settled(await pending.popleft(), on_error):
                        yield body
        while pending:
            for body in _settled(await pending.popleft(), on_error):
                yield body
    finally:
        for task in pending:
            task.cancel()
    if listed == 0:
        on_error(url, "empty_input", "no objects under the prefix")


def _wanted(obj: dict[str, Any], since: datetime | None, until: datetime | None) -> bool:
    """Whether an object's date path and write time can hold events in [since, until]."""
    day = date_of_key(obj["Key"])
    if day is not None and since is not None and day < utc(since).date():
        return False
    if day is not None and until is not None and day > utc(until).date():
        return False
    modified = obj.get("LastModified")
    # Written before the range began: it cannot hold a later event.
    return not (since is not None and isinstance(modified, datetime) and modified < utc(since))


async def _fetch(s3: Any, bucket: str, key: str, name: str, limit: int
                 ) -> tuple[str, bytes | None, list[tuple[str, str, str]]]:
    errors: list[tuple[str, str, str]] = []

    def record(n: str, reason: str, detail: str) -> None:
        errors.append((n, reason, detail))

    unpacker = Unpacker(name, record, limit)
    try:
        answer = await s3.get_object(Bucket=bucket, Key=key)
        async with answer["Body"] as stream:
            while chunk := await stream.read(_CHUNK):
                if not unpacker.feed(chunk):
                    break
    except Exception as exc:
        record(name, "s3_read_failed", f"{type(exc).__name__}: {exc}")
        return name, None, errors
    return name, unpacker.finish(), errors


def _settled(fetched: tuple[str, bytes | None, list[tuple[str, str, str]]],
             on_error: ErrorHook) -> Iterator[Body]:
    name, data, errors = fetched
    for error in errors:
        on_error(*error)
    if data is not None:
        yield from split_document(name, data, on_error)


class Unpacker:
    """Bytes of one object as they arrive, gunzipped on the fly when they start as gzip.

    Only the decompressed document is held, never the compressed copy beside it; a
    document over ``limit`` bytes or a truncated gzip stream is reported and dropped.
    """

    def __init__(self, name: str, on_error: ErrorHook, limit: int) -> None:
        self.name, self.on_error, self.limit = name, on_error, limit
        self._out = bytearray()
        self._gz: Any = None
        self._first = True
        self._head = bytearray()
        self._failed = False

    def feed(self, chunk: bytes) -> bool:
        """Take the next chunk; False once the object is known to be unusable."""
        if self._failed:
            return False
        if self._first:
            # Decide gzip or not on the first two bytes, however the stream is chunked.
            self._head += chunk
            if len(self._head) < 2:
                return True
            self._first = False
            chunk, self._head = bytes(self._head), bytearray()
            if _is_gzip(chunk):
                self._gz = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            while chunk:
                if self._gz is None:
                    self._out += chunk
                    break
                self._out += self._gz.decompress(chunk, self.limit + 1 - len(self._out))
                chunk = self._gz.unconsumed_tail
                if self._gz.eof and self._gz.unused_data:  # another gzip member follows
                    chunk = self._gz.unused_data + chunk
                    self._gz = zlib.decompressobj(16 + zlib.MAX_WBITS)
                if len(self._out) > self.limit:
                    break
        except zlib.error as exc:
            return self._fail("bad_gzip", str(exc))
        if len(self._out) > self.limit:
            return self._fail("object_too_large", f"over {self.limit} bytes once decompressed")
        return True

    def _fail(self, reason: str, detail: str) -> bool:
        self._failed = True
        self._out = bytearray()
        self.on_error(self.name, reason, detail)
        return False

    def finish(self) -> bytes | None:
        """The whole document, or None when it was reported as unusable."""
        if self._failed:
            return None
        if self._first:  # fewer than two bytes in all: not gzip
            return bytes(self._head)
        if self._gz is not None and not self._gz.eof:
            self._fail("bad_gzip", "truncated gzip stream (no end of stream)")
            return None
        return bytes(self._out)


class FilesSource:
    """A finite ``Source`` over local files, for `run` on archives and for tests.

    Every message is acknowledged in memory only: files are not modified. Dead
    letters and retries are logged and counted like any other source's.
    """

    def __init__(self, config: FilesSourceConfig, budget: InFlightBudget) -> None:
        self.name = config.name
        self.config = config
        self.budget = budget
        self._stopped = False
        self.outcomes: dict[str, Outcome] = {}
        self._received = metrics.RECEIVED.labels(source=self.name)
        self._errors: list[tuple[str, str, str]] = []

    def _on_error(self, name: str, reason: str, detail: str) -> None:
        self._errors.append((name, reason, detail))
        metrics.DEAD_LETTERED.labels(source=self.name, reason=reason).inc()
        log.warning("unreadable input", extra={"input": name, "reason": reason,
                                                "detail": detail[:300]})

    async def messages(self) -> AsyncIterator[Message]:
        for body in iter_local(self.config.paths, self._on_error):
            if self._stopped:
                return
            await self.budget.acquire(1)
            self._received.inc()
            yield Message(id=body.name, body=body.data, source=self.name,
                          received_at=time.time())

    async def settle(self, message: Message, outcome: Outcome) -> None:
        self.outcomes[message.id] = outcome
        self.budget.release(1)

    async def stop(self) -> None:
        self._stopped = True

    async def aclose(self) -> None:
        return None


def build(config: Any, ctx: RuntimeContext, budget: InFlightBudget) -> FilesSource:
    return FilesSource(config, budget)


def utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
