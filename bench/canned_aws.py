"""A local HTTP server answering SQS (JSON protocol) and Kinesis (JSON 1.1) with canned data.

Benchmarks run it in a separate process so that the pipeline process's CPU time
measures the pipeline, not the stand-in: moto is far too slow to be the source of
throughput figures. It serves an endless supply of the same real sample event.

    python bench/canned_aws.py PORT SAMPLE_FILE [SHARDS [VARIANTS]]

SHARDS (default 1) is how many Kinesis shards ``ListShards`` reports; every shard
serves the same endless records. VARIANTS (default 1: the sample as it is) makes
that many copies of a GuardDuty sample, each about another instance and with its
own finding id, served in turn: events about one resource are processed in order
(one lane), so a fleet benchmark needs many resources to run anything concurrently.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import sys
import time
from typing import Any

import orjson
from aiohttp import web

_counter = itertools.count()


class Variants:
    """The bodies served in turn, with their SQS checksum and Kinesis encoding precomputed."""

    def __init__(self, sample: bytes, count: int = 1) -> None:
        bodies = [sample] if count <= 1 else [_variant(sample, n) for n in range(count)]
        self.texts = [b.decode() for b in bodies]
        self.md5s = [hashlib.md5(b).hexdigest() for b in bodies]  # the protocol's checksum
        self.b64s = [base64.b64encode(b).decode() for b in bodies]


def _variant(sample: bytes, n: int) -> bytes:
    event = orjson.loads(sample)
    detail = dict(event.get("detail", {}))
    detail["id"] = f"bench{n:08d}"
    detail["resource"] = {"resourceType": "Instance",
                          "instanceDetails": {"instanceId": f"i-{n:017x}"}}
    event["detail"] = detail
    event["id"] = f"bench-evt-{n:08d}"
    return orjson.dumps(event)


def _sqs(target: str, body: dict[str, Any], sample: bytes | Variants) -> dict[str, Any]:
    variants = sample if isinstance(sample, Variants) else Variants(sample)
    if target == "ReceiveMessage":
        n = int(body.get("MaxNumberOfMessages", 1))
        now_ms = str(int(time.time() * 1000))
        count = len(variants.texts)
        return {"Messages": [{
            "MessageId": f"m-{i}", "ReceiptHandle": f"rh-{i}",
            "MD5OfBody": variants.md5s[i % count], "Body": variants.texts[i % count],
            "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": now_ms}}
            for i in (next(_counter) for _ in range(n))]}
    if target in ("DeleteMessageBatch", "ChangeMessageVisibilityBatch"):
        return {"Successful": [{"Id": e["Id"]} for e in body.get("Entries", [])], "Failed": []}
    if target == "GetQueueAttributes":
        return {"Attributes": {"QueueArn": "arn:aws:sqs:us-east-1:123456789012:bench"}}
    return {}


_MAX_HASH = 2**128 - 1


def _shards(count: int) -> list[dict[str, Any]]:
    width = (_MAX_HASH + 1) // count
    return [{
        "ShardId": f"shardId-{n:012d}",
        "HashKeyRange": {"StartingHashKey": str(n * width),
                         "EndingHashKey": str(_MAX_HASH if n == count - 1
                                              else (n + 1) * width - 1)},
        "SequenceNumberRange": {"StartingSequenceNumber": "1"}} for n in range(count)]


def _kinesis(target: str, body: dict[str, Any], sample: bytes | Variants, shards: int = 1
             ) -> dict[str, Any]:
    variants = sample if isinstance(sample, Variants) else Variants(sample)
    if target == "ListShards":
        return {"Shards": _shards(shards)}
    if target == "GetShardIterator":
        return {"ShardIterator": "it-0"}
    if target == "GetRecords":
        limit = int(body.get("Limit", 1000))
        now = time.time()
        start = int(str(body.get("ShardIterator", "it-0")).removeprefix("it-"))
        count = len(variants.b64s)
        records = [{"SequenceNumber": f"{start + i + 1:020d}", "ApproximateArrivalTimestamp": now,
                    "Data": variants.b64s[(start + i) % count], "PartitionKey": "k"}
                   for i in range(limit)]
        return {"Records": records, "NextShardIterator": f"it-{start + limit}",
                "MillisBehindLatest": 0}
    if target == "DescribeStreamSummary":
        return {"StreamDescriptionSummary": {"StreamName": "bench", "OpenShardCount": 1}}
    return {}


def make_app(sample: bytes, shards: int = 1, variants: int = 1) -> web.Application:
    served = Variants(sample, variants)

    async def handle(request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        body = orjson.loads(await request.read() or b"{}")
        service, _, op = target.partition(".")
        answer = _sqs(op, body, served) if service == "AmazonSQS" \
            else _kinesis(op, body, served, shards)
        ctype = "application/x-amz-json-1.0" if service == "AmazonSQS" \
            else "application/x-amz-json-1.1"
        return web.Response(body=orjson.dumps(answer), content_type=ctype)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/", handle)
    return app


def main() -> None:
    port = int(sys.argv[1])
    sample = orjson.dumps(orjson.loads(open(sys.argv[2], "rb").read()))  # noqa: SIM115
    shards = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    variants = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    web.run_app(make_app(sample, shards, variants), host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
