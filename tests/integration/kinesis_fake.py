"""A local HTTP fake of the Kinesis JSON 1.1 API, for what moto's server cannot show.

moto 5.2 reshards only partly (a closed parent keeps returning a
``NextShardIterator`` and never ``ChildShards``; new records keep landing in the
old shards), never expires iterators and never throttles. This fake serves the
real request/response shapes of ``ListShards`` (paginated, ``NextToken`` without
``StreamName``), ``GetShardIterator`` (all five iterator types) and ``GetRecords``
(``X-Amz-Target: Kinesis_20131202.*``) on 127.0.0.1, with shard states driven
explicitly by the test: close a shard, give it children, expire the next
iterator, throttle the next calls. It records every call so tests can check
ordering and the per-shard GetRecords rate.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from pipeline.aws import AwsClients
from pipeline.localaws import environment_for
from tests.loopback import start_app

MAX_HASH = str(2**128 - 1)
_JSON = "application/x-amz-json-1.1"


@dataclass
class FakeRecord:
    sequence: str
    data: bytes
    partition_key: str
    arrival: float


@dataclass
class FakeShard:
    shard_id: str
    parent: str | None = None
    adjacent_parent: str | None = None
    records: list[FakeRecord] = field(default_factory=list)
    closed: bool = False
    children: list[str] = field(default_factory=list)


@dataclass
class Call:
    op: str
    shard: str | None
    at: float  # time.monotonic() when the fake received it
    body: dict[str, Any]


class KinesisFake:
    """Serves one stream. ``end_style`` says how a closed shard's end is signalled:
    ``"null"`` (no NextShardIterator, ChildShards listed, as AWS does) or ``"children"``
    (ChildShards listed but a NextShardIterator still returned)."""

    def __init__(self, stream: str = "fake-stream", *, page_size: int = 100,
                 end_style: str = "null") -> None:
        self.stream = stream
        self.page_size = page_size
        self.end_style = end_style
        self.shards: dict[str, FakeShard] = {}
        self.calls: list[Call] = []
        self.expire_next: set[str] = set()
        self.throttle_next: dict[str, int] = {}
        self.throttle_code = "ProvisionedThroughputExceededException"
        self._seq = itertools.count(10**20)
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- driving the fake ------------------------------------------------------------------
    def add_shard(self, shard_id: str, *, parent: str | None = None,
                  adjacent_parent: str | None = None) -> FakeShard:
        shard = FakeShard(shard_id, parent, adjacent_parent)
        self.shards[shard_id] = shard
        return shard

    def put(self, shard_id: str, data: bytes, partition_key: str = "pk") -> str:
        shard = self.shards[shard_id]
        assert not shard.closed, f"{shard_id} is closed"
        record = FakeRecord(str(next(self._seq)), data, partition_key, time.time())
        shard.records.append(record)
        return record.sequence

    def close(self, shard_id: str, children: list[str]) -> None:
        self.shards[shard_id].closed = True
        self.shards[shard_id].children = list(children)

    def get_records_calls(self, shard_id: str) -> list[float]:
        return [c.at for c in self.calls if c.op == "GetRecords" and c.shard == shard_id]

    def iterator_requests(self, shard_id: str) -> list[dict[str, Any]]:
        return [c.body for c in self.calls if c.op == "GetShardIterator" and c.shard == shard_id]

    # --- server ----------------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner, self.url = await start_app(app, access_log=None)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        prefix = "Kinesis_20131202."
        if not target.startswith(prefix) or request.content_type != _JSON:
            return _error(400, "UnknownOperationException", f"bad target {target!r}")
        if not request.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256"):
            return _error(400, "MissingAuthenticationTokenException", "unsigned request")
        op = target[len(prefix):]
        body = orjson.loads(await request.read())
        handler = {"ListShards": self._list_shards, "GetShardIterator": self._get_iterator,
                   "GetRecords": self._get_records}.get(op)
        if handler is None:
            return _error(400, "UnknownOperationException", op)
        return handler(body)

    def _list_shards(self, body: dict[str, Any]) -> web.Response:
        self.calls.append(Call("ListShards", None, time.monotonic(), body))
        token = body.get("NextToken")
        if token and body.get("StreamName"):
            return _error(400, "InvalidArgumentException",
                          "NextToken and StreamName cannot be provided together.")
        if not token and body.get("StreamName") != self.stream:
            return _error(400, "ResourceNotFoundException", "Stream not found")
        start = int(token.split(":")[1]) if token else 0
        ids = sorted(self.shards)
        page = ids[start:start + self.page_size]
        out: dict[str, Any] = {"Shards": [self._shard_json(self.shards[s]) for s in page]}
        if start + self.page_size < len(ids):
            out["NextToken"] = f"{self.stream}:{start + self.page_size}"
        return _ok(out)

    def _shard_json(self, shard: FakeShard) -> dict[str, Any]:
        seq_range: dict[str, str] = {
            "StartingSequenceNumber": shard.records[0].sequence if shard.records else "0"}
        if shard.closed:
            seq_range["EndingSequenceNumber"] = (shard.records[-1].sequence if shard.records
                                                 else "1")
        out: dict[str, Any] = {
            "ShardId": shard.shard_id,
            "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": MAX_HASH},
            "SequenceNumberRange": seq_range,
        }
        if shard.parent:
            out["ParentShardId"] = shard.parent
        if shard.adjacent_parent:
            out["AdjacentParentShardId"] = shard.adjacent_parent
        return out

    def _get_iterator(self, body: dict[str, Any]) -> web.Response:
        shard_id = body.get("ShardId")
        self.calls.append(Call("GetShardIterator", shard_id, time.monotonic(), body))
        shard = self.shards.get(str(shard_id))
        if body.get("StreamName") != self.stream or shard is None:
            return _error(400, "ResourceNotFoundException", "Shard not found")
        kind = body.get("ShardIteratorType")
        records = shard.records
        if kind == "TRIM_HORIZON":
            pos = 0
        elif kind == "LATEST":
            pos = len(records)
        elif kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
            seq = int(body["StartingSequenceNumber"])
            after = kind == "AFTER_SEQUENCE_NUMBER"
            pos = next((i for i, r in enumerate(records)
                        if int(r.sequence) > seq or (not after and int(r.sequence) == seq)),
                       len(records))
        elif kind == "AT_TIMESTAMP":
            ts = float(body["Timestamp"])
            pos = next((i for i, r in enumerate(records) if r.arrival >= ts), len(records))
        else:
            return _error(400, "InvalidArgumentException", f"bad iterator type {kind}")
        return _ok({"ShardIterator": _token(shard.shard_id, pos)})

    def _get_records(self, body: dict[str, Any]) -> web.Response:
        try:
            shard_id, pos = _untoken(body["ShardIterator"])
        except (KeyError, ValueError):
            return _error(400, "InvalidArgumentException", "bad iterator")
        self.calls.append(Call("GetRecords", shard_id, time.monotonic(), body))
        if self.throttle_next.get(shard_id, 0) > 0:
            self.throttle_next[shard_id] -= 1
            return _error(400, self.throttle_code, "Rate exceeded for shard")
        if shard_id in self.expire_next:
            self.expire_next.discard(shard_id)
            return _error(400, "ExpiredIteratorException", "Iterator expired")
        shard = self.shards[shard_id]
        limit = int(body.get("Limit", 10000))
        batch = shard.records[pos:pos + limit]
        new_pos = pos + len(batch)
        out: dict[str, Any] = {
            "Records": [{"SequenceNumber": r.sequence, "ApproximateArrivalTimestamp": r.arrival,
                         "Data": base64.b64encode(r.data).decode(),
                         "PartitionKey": r.partition_key} for r in batch],
            "MillisBehindLatest": 0 if new_pos >= len(shard.records) else 1000,
        }
        at_end = shard.closed and new_pos >= len(shard.records)
        if at_end:
            out["ChildShards"] = [
                {"ShardId": c, "ParentShards": [shard_id],
                 "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": MAX_HASH}}
                for c in shard.children]
        if not at_end or self.end_style == "children":
            out["NextShardIterator"] = _token(shard_id, new_pos)
        return _ok(out)


def _token(shard_id: str, pos: int) -> str:
    return base64.b64encode(orjson.dumps([shard_id, pos])).decode()


def _untoken(token: str) -> tuple[str, int]:
    shard_id, pos = orjson.loads(base64.b64decode(token))
    return str(shard_id), int(pos)


def _ok(payload: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type=_JSON)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, content_type=_JSON,
                        body=orjson.dumps({"__type": code, "message": message}))


@contextlib.asynccontextmanager
async def serving(fake: KinesisFake, monkeypatch: pytest.MonkeyPatch
                  ) -> AsyncIterator[AwsClients]:
    """Start ``fake`` and yield AWS clients whose Kinesis calls reach it (and nothing else)."""
    url = await fake.start()
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for key, value in environment_for(url).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", url)
    clients = AwsClients("us-east-1")
    try:
        yield clients
    finally:
        await clients.aclose()
        await fake.stop()
