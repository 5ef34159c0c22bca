"""Fast local stand-ins for one full-chain run: SQS feed, EC2, Security Hub, Splunk HEC, Datadog.

Run by the benchmarks in a *separate process* (one aiohttp server, one port) so
that the pipeline process's CPU time measures the pipeline alone. It answers the
real wire shapes the project's clients speak, and nothing more:

* SQS (JSON protocol, ``X-Amz-Target: AmazonSQS.*``): ``ReceiveMessage`` serves
  real sample events (GuardDuty EC2 finding, Inspector2 EC2 finding, CloudTrail
  call via EventBridge) with unique ids and resources, either as fast as asked or
  at an offered rate (message ``n`` becomes visible at ``t0 + n / rate``; long
  polls wait for it). ``SentTimestamp`` is that moment.
* EC2 (query API, XML): ``DescribeInstances``, ``DescribeSecurityGroups``,
  ``ModifyInstanceAttribute``, ``ModifyNetworkInterfaceAttribute`` — enough for
  ``ec2.isolate`` to plan, apply and verify; each modify is timestamped on arrival.
* Security Hub (REST JSON): ``BatchImportFindings`` (``POST /findings/import``,
  the real ``SuccessCount``/``FailedCount``/``FailedFindings`` answer) and
  ``DescribeHub`` (``GET /accounts``).
* Splunk HEC: ``/services/collector/event`` (``Authorization: Splunk <token>``)
  and ``/services/collector/health``; Datadog: ``/api/v2/logs`` (``DD-API-KEY``,
  gzip) and ``/api/v1/validate``.

Every sample carries a marker ``rpb<N>x`` in its ids; each intake records the
first arrival of each marker, so ``GET /_bench/stats`` reports per-event latency
from "sent" (the SQS timestamp) to arrival at each sink, and from "sent" to the
isolation call. Both ends are stamped by this process's clock.

    python bench/fast_intakes.py PORT [--rate R] [--total N] [--mix gd,insp,ct]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "fixtures" / "samples"
ACCOUNT = "123456789012"
REGION = "us-east-1"
HEC_TOKEN = "bench-hec-token"
DD_KEY = "bench-dd-key"
EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
MARKER = re.compile(rb"rpb(\d+)x")
SEQ = "@@SEQ@@"
RES = "@@RES@@"


# --- the events served --------------------------------------------------------------------------
def _guardduty() -> dict[str, Any]:
    event = orjson.loads((SAMPLES / "guardduty" / "custodian-ec2-duty-event.json").read_bytes())
    detail = event["detail"]
    finding = f"rpb{SEQ}x"
    detail["id"] = finding
    detail["arn"] = f"arn:aws:guardduty:{REGION}:{ACCOUNT}:detector/d1/finding/{finding}"
    detail["accountId"] = ACCOUNT
    detail["resource"]["instanceDetails"]["instanceId"] = RES
    # A real (not sample) finding, so trust, correlate and contain treat it as actionable.
    detail["service"]["additionalInfo"]["sample"] = False
    detail["severity"] = 8
    event.update(id=f"eb-rpb{SEQ}x", account=ACCOUNT, time="2026-11-23T10:00:00Z")
    event.pop("debug", None)
    return dict(event)


def _inspector() -> dict[str, Any]:
    path = SAMPLES / "inspector2" / "awsdocs-inspector2-ec2-package-vulnerability.json"
    event = orjson.loads(path.read_bytes())
    detail = event["detail"]
    detail["findingArn"] = f"arn:aws:inspector2:{REGION}:{ACCOUNT}:finding/rpb{SEQ}x"
    detail["status"] = "ACTIVE"
    detail["awsAccountId"] = ACCOUNT
    for resource in detail["resources"]:
        resource["id"] = RES
        resource["region"] = REGION
    event.update(id=f"eb-rpb{SEQ}x", account=ACCOUNT, region=REGION)
    return dict(event)


def _cloudtrail() -> dict[str, Any]:
    path = SAMPLES / "cloudtrail" / "panther-attachuserpolicy-admin.json"
    record = orjson.loads(path.read_bytes())
    record["eventID"] = f"rpb{SEQ}x"
    # Many principals and target users, as in a real account: one shared key would put
    # every call in one lane (see docs/performance.md on hot lanes).
    record["userIdentity"]["accessKeyId"] = f"AKIA{RES}"
    record["userIdentity"]["arn"] = f"arn:aws:sts::{ACCOUNT}:assumed-role/tester/{RES}"
    record["requestParameters"]["userName"] = f"user-{RES}"
    record["recipientAccountId"] = ACCOUNT
    return {"version": "0", "id": f"eb-rpb{SEQ}x", "detail-type": "AWS API Call via CloudTrail",
            "source": "aws.iam", "account": ACCOUNT, "time": record["eventTime"],
            "region": record["awsRegion"], "resources": [], "detail": record}


TEMPLATES = {"gd": _guardduty, "insp": _inspector, "ct": _cloudtrail}


class Feed:
    """The SQS queue: an endless (or ``total``-long) series of templated messages."""

    def __init__(self, mix: list[str], resources: int, rate: float | None, total: int | None
                 ) -> None:
        self.kinds = mix
        self.templates = {k: orjson.dumps(TEMPLATES[k]()).decode() for k in set(mix)}
        self.resources = resources
        self.rate = rate
        self.total = total
        self.next = 0
        self.t0: float | None = None
        self.sent: dict[int, float] = {}
        self.kind_of: dict[int, str] = {}
        self.first_seq_of_instance: dict[str, int] = {}

    def resource(self, seq: int) -> str:
        return f"i-{(seq * 7919) % self.resources:017x}"

    def available(self, now: float) -> int:
        limit = self.total if self.total is not None else 1 << 62
        if self.rate is None:
            return limit - self.next
        assert self.t0 is not None
        return min(limit, int((now - self.t0) * self.rate) + 1) - self.next

    async def receive(self, max_messages: int, wait: float) -> list[dict[str, Any]]:
        now = time.time()
        if self.t0 is None:
            self.t0 = now
        deadline = now + wait
        while self.available(now) <= 0:
            if now >= deadline or (self.total is not None and self.next >= self.total):
                if self.total is not None and self.next >= self.total and wait:
                    await asyncio.sleep(min(wait, 0.05))
                return []
            step = 1 / self.rate if self.rate else 0.01
            await asyncio.sleep(min(step, max(0.0, deadline - now)))
            now = time.time()
        count = min(max_messages, self.available(now))
        messages = []
        for _ in range(count):
            seq = self.next
            self.next += 1
            kind = self.kinds[seq % len(self.kinds)]
            res = self.resource(seq)
            body = self.templates[kind].replace(SEQ, str(seq)).replace(RES, res)
            sent = now if self.rate is None or self.t0 is None else self.t0 + seq / self.rate
            self.sent[seq] = sent
            self.kind_of[seq] = kind
            if kind == "gd":
                self.first_seq_of_instance.setdefault(res, seq)
            raw = body.encode()
            messages.append({
                "MessageId": f"m-{seq}", "ReceiptHandle": f"rh-{seq}",
                "MD5OfBody": hashlib.md5(raw).hexdigest(),  # SQS's checksum
                "Body": body,
                "Attributes": {"ApproximateReceiveCount": "1",
                               "SentTimestamp": str(int(sent * 1000))}})
        return messages


class Recorder:
    """First arrival of each marker at each sink, and of each isolation call."""

    def __init__(self) -> None:
        self.first: dict[str, dict[int, float]] = {"splunk_hec": {}, "datadog": {},
                                                   "security_hub": {}}
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.modify: dict[str, float] = {}
        self.ec2_calls: Counter[str] = Counter()
        self.ec2_ids = 0  # instance ids asked for across DescribeInstances calls

    def record(self, sink: str, body: bytes) -> None:
        now = time.time()
        self.requests[sink] += 1
        self.bytes[sink] += len(body)
        seen = self.first[sink]
        for match in MARKER.finditer(body):
            seq = int(match.group(1))
            if seq not in seen:
                seen[seq] = now


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]

    return {"n": len(ordered), "p50": rank(50), "p90": rank(90), "p99": rank(99),
            "max": ordered[-1], "mean": sum(ordered) / len(ordered)}


def stats(feed: Feed, rec: Recorder, since: int) -> dict[str, Any]:
    """Latency quantiles over messages with sequence number >= ``since`` (after warm-up)."""
    per_sink: dict[str, list[float]] = {s: [] for s in rec.first}
    first_any: list[float] = []
    all_sinks: list[float] = []
    for seq, sent in feed.sent.items():
        if seq < since:
            continue
        arrivals = [rec.first[s][seq] for s in rec.first if seq in rec.first[s]]
        for sink, seen in rec.first.items():
            if seq in seen:
                per_sink[sink].append(seen[seq] - sent)
        if arrivals:
            first_any.append(min(arrivals) - sent)
        if len(arrivals) == len(rec.first):
            all_sinks.append(max(arrivals) - sent)
    isolate = []
    for instance, at in rec.modify.items():
        first = feed.first_seq_of_instance.get(instance)
        if first is not None and first >= since:
            isolate.append(at - feed.sent[first])
    return {
        "sent": len(feed.sent), "sent_since": sum(1 for s in feed.sent if s >= since),
        "sent_by_kind": Counter(feed.kind_of.values()),
        "requests": dict(rec.requests), "bytes": dict(rec.bytes),
        "markers": {s: len(v) for s, v in rec.first.items()},
        "latency": {"first_sink": _quantiles(first_any), "all_sinks": _quantiles(all_sinks),
                    **{s: _quantiles(v) for s, v in per_sink.items()}},
        "isolate": _quantiles(isolate), "ec2_calls": dict(rec.ec2_calls),
        "ec2_instance_ids": rec.ec2_ids,
    }


# --- EC2 ------------------------------------------------------------------------------------------
def _instance_xml(instance_id: str, groups: list[str]) -> str:
    gset = "".join(f"<item><groupId>{g}</groupId><groupName>{g}</groupName></item>"
                   for g in groups)
    return (f"<item><instanceId>{instance_id}</instanceId><vpcId>vpc-bench</vpcId>"
            f"<subnetId>subnet-bench</subnetId><instanceState><code>16</code><name>running"
            f"</name></instanceState><groupSet>{gset}</groupSet><networkInterfaceSet><item>"
            f"<networkInterfaceId>eni-{instance_id[2:]}</networkInterfaceId><subnetId>"
            f"subnet-bench</subnetId><privateIpAddress>10.0.0.5</privateIpAddress><attachment>"
            f"<deviceIndex>0</deviceIndex></attachment><groupSet>{gset}</groupSet></item>"
            f"</networkInterfaceSet><tagSet/></item>")


def ec2_answer(form: dict[str, str], groups: dict[str, list[str]], rec: Recorder
               ) -> web.Response:
    """The EC2 query API's answer to one request (``bench_contain`` serves it too)."""
    action = form.get("Action", "")
    rec.ec2_calls[action] += 1
    if action == "DescribeInstances":
        # By ``InstanceId.N`` or by an ``instance-id`` filter (``Filter.1.Value.N``).
        ids = [v for k, v in form.items()
               if k.startswith("InstanceId.") or k.startswith("Filter.1.Value.")]
        rec.ec2_ids += len(ids)
        instances = "".join(_instance_xml(iid, groups.get(iid, ["sg-app"])) for iid in ids)
        body = (f"<reservationSet><item><reservationId>r-1</reservationId><ownerId>{ACCOUNT}"
                f"</ownerId><instancesSet>{instances}</instancesSet></item></reservationSet>")
    elif action == "DescribeSecurityGroups":
        body = ("<securityGroupInfo><item><groupId>sg-quarantine</groupId><groupName>"
                "riposte-quarantine</groupName><vpcId>vpc-bench</vpcId><ownerId>"
                f"{ACCOUNT}</ownerId></item></securityGroupInfo>")
    elif action == "ModifyInstanceAttribute":
        rec.modify.setdefault(form["InstanceId"], time.time())
        groups[form["InstanceId"]] = [v for k, v in sorted(form.items())
                                      if k.startswith("GroupId.")]
        body = "<return>true</return>"
    elif action == "ModifyNetworkInterfaceAttribute":
        iid = "i-" + form["NetworkInterfaceId"].removeprefix("eni-")
        rec.modify.setdefault(iid, time.time())
        groups[iid] = [v for k, v in sorted(form.items()) if k.startswith("SecurityGroupId.")]
        body = "<return>true</return>"
    else:
        return web.Response(status=400, text=f"<Response><Errors><Error><Code>Unsupported"
                            f"Operation</Code><Message>{action}</Message></Error></Errors>"
                            f"</Response>", content_type="text/xml")
    xml = (f'<{action}Response xmlns="{EC2_NS}"><requestId>bench</requestId>{body}'
           f"</{action}Response>")
    return web.Response(text=xml, content_type="text/xml")


# --- the app ------------------------------------------------------------------------------------
def make_app(feed: Feed) -> web.Application:
    rec = Recorder()
    groups: dict[str, list[str]] = {}

    async def root(request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        raw = await request.read()
        if target.startswith("AmazonSQS."):
            op = target.partition(".")[2]
            body = orjson.loads(raw or b"{}")
            answer: dict[str, Any] = {}
            if op == "ReceiveMessage":
                answer = {"Messages": await feed.receive(
                    int(body.get("MaxNumberOfMessages", 1)),
                    float(body.get("WaitTimeSeconds", 0)))}
            elif op in ("DeleteMessageBatch", "ChangeMessageVisibilityBatch"):
                answer = {"Successful": [{"Id": e["Id"]} for e in body.get("Entries", [])],
                          "Failed": []}
            elif op == "GetQueueAttributes":
                answer = {"Attributes": {"QueueArn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:bench"}}
            return web.Response(body=orjson.dumps(answer),
                                content_type="application/x-amz-json-1.0")
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        return ec2_answer(form, groups, rec)

    async def import_findings(request: web.Request) -> web.Response:
        raw = await request.read()
        rec.record("security_hub", raw)
        findings = orjson.loads(raw).get("Findings", [])
        return web.json_response({"FailedCount": 0, "SuccessCount": len(findings),
                                  "FailedFindings": []})

    async def describe_hub(_: web.Request) -> web.Response:
        return web.json_response({"HubArn": f"arn:aws:securityhub:{REGION}:{ACCOUNT}:hub/default",
                                  "SubscribedAt": "2026-01-01T00:00:00.000Z",
                                  "AutoEnableControls": True})

    def _unzip(request: web.Request, raw: bytes) -> bytes:
        # aiohttp already inflates a body sent with Content-Encoding: gzip.
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw

    async def hec_event(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Splunk {HEC_TOKEN}":
            return web.json_response({"text": "Invalid token", "code": 4}, status=403)
        raw = _unzip(request, await request.read())
        if not raw:
            return web.json_response({"text": "No data", "code": 5}, status=400)
        rec.record("splunk_hec", raw)
        return web.json_response({"text": "Success", "code": 0})

    async def hec_health(_: web.Request) -> web.Response:
        return web.json_response({"text": "HEC is healthy", "code": 17})

    async def dd_logs(request: web.Request) -> web.Response:
        if request.headers.get("DD-API-KEY") != DD_KEY:
            return web.json_response({"errors": [{"status": "403", "title": "Forbidden"}]},
                                     status=403)
        rec.record("datadog", _unzip(request, await request.read()))
        return web.json_response({}, status=202)

    async def dd_validate(request: web.Request) -> web.Response:
        return web.json_response({"valid": request.headers.get("DD-API-KEY") == DD_KEY})

    async def bench_stats(request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return web.Response(body=orjson.dumps(stats(feed, rec, since)),
                            content_type="application/json")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/", root)
    app.router.add_post("/findings/import", import_findings)
    app.router.add_get("/accounts", describe_hub)
    app.router.add_post("/services/collector/event", hec_event)
    app.router.add_get("/services/collector/health", hec_health)
    app.router.add_post("/api/v2/logs", dd_logs)
    app.router.add_get("/api/v1/validate", dd_validate)
    app.router.add_get("/_bench/stats", bench_stats)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--rate", type=float, default=None, help="offered events/s (default: "
                        "as fast as the consumer receives)")
    parser.add_argument("--total", type=int, default=None)
    parser.add_argument("--mix", default="gd,gd,gd,gd,gd,insp,insp,insp,ct,ct",
                        help="kinds served in rotation: gd, insp, ct")
    parser.add_argument("--resources", type=int, default=5000,
                        help="distinct EC2 instances the findings name")
    args = parser.parse_args(argv)
    feed = Feed(args.mix.split(","), args.resources, args.rate, args.total)
    web.run_app(make_app(feed), host="127.0.0.1", port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main(sys.argv[1:])
