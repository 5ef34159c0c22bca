"""A local HTTP server answering SQS (JSON protocol) and Kinesis (JSON 1.1) with canned data.

Benchmarks run it in a separate process so that the pipeline process's CPU time
measures the pipeline, not the stand-in: moto is far too slow to be the source of
throughput figures. It serves an endless supply of the same real sample event.

    python bench/canned_aws.py PORT SAMPLE_FILE
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


def _sqs(target: str, body: dict[str, Any], sample: bytes) -> dict[str, Any]:
    if target == "ReceiveMessage":
        n = int(body.get("MaxNumberOfMessages", 1))
        text = sample.decode()
        md5 = hashlib.md5(sample).hexdigest()  # noqa: S324 - the protocol's checksum
        now_ms = str(int(time.time() * 1000))
        return {"Messages": [{
            "MessageId": f"m-{i}", "ReceiptHandle": f"rh-{i}", "MD5OfBody": md5, "Body": text,
            "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": now_ms}}
            for i in (next(_counter) for _ in range(n))]}
    if target in ("DeleteMessageBatch", "ChangeMessageVisibilityBatch"):
        return {"Successful": [{"Id": e["Id"]} for e in body.get("Entries", [])], "Failed": []}
    if target == "GetQueueAttributes":
        return {"Attributes": {"QueueArn": "arn:aws:sqs:us-east-1:123456789012:bench"}}
    return {}


def _kinesis(target: str, body: dict[str, Any], sample: bytes) -> dict[str, Any]:
    if target == "ListShards":
        return {"Shards": [{
            "ShardId": "shardId-000000000000",
            "HashKeyRange": {"StartingHashKey": "0",
                             "EndingHashKey": "340282366920938463463374607431768211455"},
            "SequenceNumberRange": {"StartingSequenceNumber": "1"}}]}
    if target == "GetShardIterator":
        return {"ShardIterator": "it-0"}
    if target == "GetRecords":
        limit = int(body.get("Limit", 1000))
        data = base64.b64encode(sample).decode()
        now = time.time()
        start = int(str(body.get("ShardIterator", "it-0")).removeprefix("it-"))
        records = [{"SequenceNumber": f"{start + i + 1:020d}", "ApproximateArrivalTimestamp": now,
                    "Data": data, "PartitionKey": "k"} for i in range(limit)]
        return {"Records": records, "NextShardIterator": f"it-{start + limit}",
                "MillisBehindLatest": 0}
    if target == "DescribeStreamSummary":
        return {"StreamDescriptionSummary": {"StreamName": "bench", "OpenShardCount": 1}}
    return {}


def make_app(sample: bytes) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        body = orjson.loads(await request.read() or b"{}")
        service, _, op = target.partition(".")
        answer = _sqs(op, body, sample) if service == "AmazonSQS" else _kinesis(op, body, sample)
        ctype = "application/x-amz-json-1.0" if service == "AmazonSQS" \
            else "application/x-amz-json-1.1"
        return web.Response(body=orjson.dumps(answer), content_type=ctype)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/", handle)
    return app


def main() -> None:
    port = int(sys.argv[1])
    sample = orjson.dumps(orjson.loads(open(sys.argv[2], "rb").read()))  # noqa: PTH123, SIM115
    web.run_app(make_app(sample), host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
