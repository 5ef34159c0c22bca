"""Security Hub, SNS and EventBridge sinks against moto in server mode, and local fakes.

moto shows delivery (findings upserted by Id, SNS -> SQS, EventBridge rule -> SQS)
but keeps no request log and never throttles or fails an entry. So:

* calls are counted and timed by a recording HTTP proxy on 127.0.0.1 placed in
  front of moto (``AWS_ENDPOINT_URL_SECURITYHUB`` points the sink at it): the
  count and the rate are measured outside the sink, from the requests that
  actually reached the "service";
* per-entry failures (``FailedFindings``, ``Failed``, ``Entries[].ErrorCode``) and
  access denials are served by small local fakes of each API's real
  request/response shape (``fake_*`` below), named as such.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiohttp import ClientSession, web
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from pipeline import metrics
from pipeline.aws import AwsClients
from pipeline.config import RiposteConfig
from pipeline.context import RuntimeContext
from pipeline.errors import ConfigError, PermanentError, RetriableError
from pipeline.models import (
    ActionMode,
    ActionRecord,
    ActionStatus,
    Detection,
    Event,
    EventKind,
    FindingRef,
    Incident,
    Item,
    ResourceRef,
    RiskScore,
    Severity,
    SeverityLabel,
)
from pipeline.serde import loads
from pipeline.state.memory import MemoryStore
from sinks import eventbridge, reasons, security_hub, sns
from sinks._aws_errors import AwsFailure, classify_code, classify_exception, error_text
from sinks.aws_config import EventBridgeSinkConfig, SecurityHubSinkConfig, SnsSinkConfig
from tests.loopback import start_app

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


# --- items ------------------------------------------------------------------------------------
def incident(n: int | str = 0, *, tag: str = "", revision: int = 1, **changes: Any) -> Incident:
    ref = ResourceRef(type="ec2.instance", id=f"i-{tag}{n}", account=ACCOUNT,
                      region="us-east-1",
                      arn=f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-{tag}{n}")
    base = Incident(
        id=f"inc-{tag}-{n}", key=ref.key, title=f"Crypto mining on {ref.id}", account=ACCOUNT,
        region="us-east-1", resources=(ref,),
        findings=(FindingRef("gd-1", EventKind.GUARDDUTY,
                             "CryptoCurrency:EC2/BitcoinTool.B!DNS", Severity.of_score(80), T0),),
        first_seen=T0, last_seen=T0 + timedelta(minutes=revision), revision=revision,
        score=RiskScore(value=82, label=SeverityLabel.HIGH), mitre=("T1496",))
    return dataclasses.replace(base, **changes)


def detection(tag: str) -> Event:
    return Event(
        id=f"det-{tag}", kind=EventKind.DETECTION, type="riposte:root-login",
        title="Root console login", source="riposte", account=ACCOUNT, region="us-east-1",
        time=T0, severity=Severity.of_score(75),
        resources=(ResourceRef(type="iam.user", id="root", account=ACCOUNT),),
        detection=Detection("ct.root_login", "Root console login", "Root signed in.",
                            SeverityLabel.HIGH, mitre=("T1078.004",)),
        item_kind="detection")


def raw_event(tag: str) -> Event:
    return Event(id=f"ct-{tag}", kind=EventKind.CLOUDTRAIL, type="ConsoleLogin",
                 title="ConsoleLogin", source="aws.signin", account=ACCOUNT,
                 region="us-east-1", time=T0)


def action(tag: str) -> ActionRecord:
    return ActionRecord(
        id=f"act-{tag}", incident_id=f"inc-{tag}-0", kind="ec2.isolate",
        resource=ResourceRef("ec2.instance", f"i-{tag}0",
                             arn=f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-{tag}0"),
        mode=ActionMode.ENFORCE, status=ActionStatus.APPLIED, planned_at=T0, applied_at=T0)


def ids(items: Any) -> list[str]:
    return sorted(getattr(i, "id", None) or i.item.id for i in items)


def context(aws: AwsClients, store: MemoryStore | None = None) -> RuntimeContext:
    return RuntimeContext(config=RiposteConfig(), store=store or MemoryStore(), aws=aws)


# --- local HTTP plumbing ----------------------------------------------------------------------
@asynccontextmanager
async def serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                ) -> AsyncIterator[str]:
    """Run ``handler`` for every request on 127.0.0.1:<free port>; yields the base URL."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner, url = await start_app(app)
    try:
        yield url
    finally:
        await runner.cleanup()


@dataclass
class Call:
    at: float
    method: str
    path: str
    body: bytes
    status: int = 0


class RecordingProxy:
    """Forwards every request to moto and records when it arrived: moto's missing request log."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.calls: list[Call] = []
        self.session: ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        call = Call(time.monotonic(), request.method, request.path_qs, body)
        self.calls.append(call)
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "transfer-encoding")}
        async with self.session.request(request.method, self.upstream + request.path_qs,
                                        headers=headers, data=body) as resp:
            data = await resp.read()
            call.status = resp.status
            out = {k: v for k, v in resp.headers.items() if k.lower() not in (
                "content-length", "transfer-encoding", "content-encoding", "connection")}
            return web.Response(status=resp.status, body=data, headers=out)

    def imports(self) -> list[Call]:
        """Import requests that succeeded (botocore re-sends one moto fails under load)."""
        return [c for c in self.calls if c.path == "/findings/import" and c.status == 200]

    def import_attempts(self) -> list[Call]:
        return [c for c in self.calls if c.path == "/findings/import"]


@asynccontextmanager
async def clients_via(service_env: str, url: str,
                      monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AwsClients]:
    """AwsClients whose ``service_env`` endpoint is ``url`` (every other service: moto)."""
    monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service_env}", url)
    clients = AwsClients("us-east-1")
    try:
        yield clients
    finally:
        await clients.aclose()


@asynccontextmanager
async def securityhub_proxy(moto_server: str, monkeypatch: pytest.MonkeyPatch
                            ) -> AsyncIterator[tuple[RecordingProxy, AwsClients]]:
    proxy = RecordingProxy(moto_server)
    async with ClientSession() as session:
        proxy.session = session
        async with serve(proxy.handle) as url, clients_via("SECURITYHUB", url,
                                                           monkeypatch) as clients:
            yield proxy, clients


def all_findings(boto: Any) -> dict[str, dict[str, Any]]:
    """Every finding in moto's hub by Id (moto ignores GetFindings filters)."""
    client = boto("securityhub")
    found: dict[str, dict[str, Any]] = {}
    for page in client.get_paginator("get_findings").paginate():
        for finding in page["Findings"]:
            found[finding["Id"]] = finding
    return found


def count_findings_in(call: Call) -> int:
    return len(loads(call.body)["Findings"])


@contextmanager
def no_call_made(proxy: RecordingProxy) -> Iterator[None]:
    before = len(proxy.imports())
    yield
    assert len(proxy.imports()) == before


# --- Security Hub against moto ----------------------------------------------------------------
async def test_security_hub_imports_findings_that_get_findings_returns(
        moto_server: str, boto: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    tag = uuid.uuid4().hex[:8]
    async with securityhub_proxy(moto_server, monkeypatch) as (proxy, clients):
        sink = security_hub.build(SecurityHubSinkConfig(), context(clients))
        assert sink.max_batch_items == 100
        result = await sink.send([incident(0, tag=tag), detection(tag)])
        assert ids(result.delivered) == sorted([f"inc-{tag}-0", f"det-{tag}"])
        assert not result.retry and not result.rejected
        assert len(proxy.imports()) == 1
    found = all_findings(boto)
    inc = found[f"riposte/inc-{tag}-0"]
    assert inc["ProductArn"] == f"arn:aws:securityhub:us-east-1:{ACCOUNT}:product/{ACCOUNT}/default"
    assert inc["AwsAccountId"] == ACCOUNT
    assert inc["Severity"]["Label"] == "HIGH"
    assert inc["Resources"][0]["Id"] == f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-{tag}0"
    assert inc["ProductFields"]["riposte/mitre"] == "T1496"
    det = found[f"riposte/detection/det-{tag}"]
    assert det["GeneratorId"] == "riposte/detection/ct.root_login"


async def test_same_incident_reimported_keeps_its_id_with_a_newer_updated_at(
        moto_server: str, boto: Any, aws: AwsClients) -> None:
    tag = uuid.uuid4().hex[:8]
    sink = security_hub.build(SecurityHubSinkConfig(), context(aws))
    first = incident(0, tag=tag)
    assert (await sink.send([first])).delivered
    before = all_findings(boto)[f"riposte/inc-{tag}-0"]
    second = dataclasses.replace(first, revision=2, last_seen=first.last_seen
                                 + timedelta(minutes=3), title="Crypto mining, now contained")
    assert (await sink.send([second])).delivered
    found = all_findings(boto)
    after = found[f"riposte/inc-{tag}-0"]
    assert sum(1 for k in found if k == f"riposte/inc-{tag}-0") == 1
    assert after["UpdatedAt"] > before["UpdatedAt"]
    assert after["CreatedAt"] == before["CreatedAt"]
    assert after["Title"] == "Crypto mining, now contained"


async def test_two_revisions_in_one_batch_import_only_the_newest(
        moto_server: str, boto: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    tag = uuid.uuid4().hex[:8]
    r1, r2 = incident(0, tag=tag), incident(0, tag=tag, revision=2, title="revision two")
    async with securityhub_proxy(moto_server, monkeypatch) as (proxy, clients):
        sink = security_hub.build(SecurityHubSinkConfig(), context(clients))
        result = await sink.send([r2, r1])
        assert len(result.delivered) == 2
        [call] = proxy.imports()
        assert count_findings_in(call) == 1
    assert all_findings(boto)[f"riposte/inc-{tag}-0"]["Title"] == "revision two"


async def test_101_findings_take_two_calls_of_100_and_1(
        moto_server: str, boto: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    tag = uuid.uuid4().hex[:8]
    batch = [incident(n, tag=tag) for n in range(101)]
    async with securityhub_proxy(moto_server, monkeypatch) as (proxy, clients):
        sink = security_hub.build(SecurityHubSinkConfig(), context(clients))
        ok_before = metrics.value(metrics.SINK_API_CALLS, sink="security_hub",
                                  operation="BatchImportFindings", result="ok")
        result = await sink.send(batch)
        assert len(result.delivered) == 101
        assert [count_findings_in(c) for c in proxy.imports()] == [100, 1]
        assert metrics.value(metrics.SINK_API_CALLS, sink="security_hub",
                             operation="BatchImportFindings", result="ok") == ok_before + 2
    found = all_findings(boto)
    assert all(f"riposte/inc-{tag}-{n}" in found for n in range(101))


async def test_invalid_findings_are_rejected_and_never_sent(
        moto_server: str, boto: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    tag = uuid.uuid4().hex[:8]
    broken = incident(1, tag=tag, resources=(ResourceRef(type="ec2.instance", id=""),))
    async with securityhub_proxy(moto_server, monkeypatch) as (proxy, clients):
        sink = security_hub.build(SecurityHubSinkConfig(), context(clients))
        result = await sink.send([incident(0, tag=tag), broken, raw_event(tag)])
        assert ids(result.delivered) == [f"inc-{tag}-0"]
        reasons = {r.item.id: r.reason for r in result.rejected}
        assert reasons == {f"inc-{tag}-1": "invalid_asff", f"ct-{tag}": "not_a_finding"}
        assert "Resources[0].Id is required" in next(
            r.response for r in result.rejected if r.item.id == f"inc-{tag}-1")
        [call] = proxy.imports()
        assert count_findings_in(call) == 1
        # A batch with nothing valid makes no call at all.
        with no_call_made(proxy):
            only_bad = await sink.send([broken])
        assert [r.reason for r in only_bad.rejected] == ["invalid_asff"]
    assert f"riposte/inc-{tag}-1" not in all_findings(boto)


# Requests are timed where they arrive, at the proxy, so the client's own scheduling delay
# on a busy machine can bunch calls that left the bucket apart; allow this much of it.
ARRIVAL_JITTER = 0.3
# Between taking a token and the request leaving the client: serializing and signing it.
DEPARTURE_JITTER = 0.05


def assert_within_rate(times: list[float], rate: float, burst: float, *,
                       jitter: float = ARRIVAL_JITTER) -> None:
    """No window of calls holds more than burst + rate * (window + jitter)."""
    times = sorted(times)
    for i in range(len(times)):
        for j in range(i + 1, len(times)):
            allowed = burst + rate * (times[j] - times[i] + jitter)
            assert j - i + 1 <= allowed, (i, j, times[j] - times[i])


async def test_security_hub_calls_never_exceed_the_configured_rate(
        moto_server: str, boto: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    tag = uuid.uuid4().hex[:8]
    boto("securityhub").enable_security_hub()
    rate, burst, calls = 5.0, 2.0, 9
    async with securityhub_proxy(moto_server, monkeypatch) as (proxy, clients):
        sink = security_hub.build(SecurityHubSinkConfig(api_rate=rate, api_burst=burst),
                                  context(clients))
        # Start-up order: the healthcheck's first request also loads the client's endpoint
        # rules and credentials, which would otherwise stall the first measured import.
        await sink.healthcheck()
        results = await asyncio.gather(*(sink.send([incident(n, tag=tag)])
                                         for n in range(calls)))
        assert all(r.delivered for r in results)
        assert len(proxy.imports()) == calls
        times = [c.at for c in proxy.import_attempts()]
    assert_within_rate(times, rate, burst)
    # The burst goes at once, the other 7 calls at 5/s: about 1.4 s in all.
    assert times[-1] - times[0] >= (calls - burst) / rate - ARRIVAL_JITTER


async def record_departures(clients: AwsClients) -> list[float]:
    """When each BatchImportFindings request leaves the client (botocore's before-send
    event, after the sink took its token), as the event loop's clock stamps it."""
    departures: list[float] = []
    client = await clients.client("securityhub", region="us-east-1", validate=False)
    loop = asyncio.get_running_loop()

    def stamp(**_: Any) -> None:
        departures.append(loop.time())

    client.meta.events.register("before-send.securityhub.BatchImportFindings", stamp)
    return departures


async def test_shared_rate_limit_holds_across_two_workers(
        moto_server: str, boto: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sinks (two workers' worth) drawing from one bucket in a shared state store.

    Timed where the requests leave the client: the sinks, the proxy and moto share one
    process here, so a request can sit behind moto's thread for a few hundred ms and
    arrive together with the next one, although the bucket let them go apart.
    """
    tag = uuid.uuid4().hex[:8]
    boto("securityhub").enable_security_hub()
    rate, burst, calls = 5.0, 2.0, 9
    store = MemoryStore()
    config = SecurityHubSinkConfig(api_rate=rate, api_burst=burst, shared_rate_limit=True)
    async with securityhub_proxy(moto_server, monkeypatch) as (proxy, clients):
        workers = [security_hub.build(config, context(clients, store)) for _ in range(2)]
        for worker in workers:
            await worker.healthcheck()
        departures = await record_departures(clients)
        results = await asyncio.gather(*(workers[n % 2].send([incident(n, tag=tag)])
                                         for n in range(calls)))
        assert all(r.delivered for r in results)
        assert len(proxy.imports()) == calls
        arrivals = [c.at for c in proxy.import_attempts()]
    assert len(departures) == calls
    assert_within_rate(departures, rate, burst, jitter=DEPARTURE_JITTER)
    assert departures[-1] - departures[0] >= (calls - burst) / rate - DEPARTURE_JITTER
    assert arrivals[-1] - arrivals[0] >= (calls - burst) / rate - ARRIVAL_JITTER


# One worker process of a fleet: a Security Hub sink over a shared SQLite state store. It
# says "ready" once warmed up, waits for "go", imports its findings and prints the count.
WORKER = """
import asyncio, sys
from pipeline.aws import AwsClients
from pipeline.config import RiposteConfig
from pipeline.context import RuntimeContext
from pipeline.state.sqlite import SqliteStore
from sinks import security_hub
from sinks.aws_config import SecurityHubSinkConfig
from tests.integration.test_aws_sinks import incident

async def main(db, tag, first, count, rate, burst):
    store = await SqliteStore.open(db)
    aws = AwsClients("us-east-1")
    config = SecurityHubSinkConfig(api_rate=rate, api_burst=burst, shared_rate_limit=True)
    sink = security_hub.build(config, RuntimeContext(RiposteConfig(), store, aws))
    await sink.healthcheck()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    results = await asyncio.gather(*(sink.send([incident(n, tag=tag)])
                                     for n in range(first, first + count)))
    print(sum(len(r.delivered) for r in results), flush=True)
    await aws.aclose()
    await store.aclose()

db, tag, first, count, rate, burst = sys.argv[1:]
asyncio.run(main(db, tag, int(first), int(count), float(rate), float(burst)))
"""


async def test_shared_rate_limit_holds_across_two_worker_processes(
        moto_server: str, boto: Any, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    rate, burst, per_worker = 5.0, 2.0, 5
    boto("securityhub").enable_security_hub()
    proxy = RecordingProxy(moto_server)
    async with ClientSession() as session:
        proxy.session = session
        async with serve(proxy.handle) as url:
            env = {**os.environ, "AWS_ENDPOINT_URL_SECURITYHUB": url}
            procs = [await asyncio.create_subprocess_exec(
                sys.executable, "-c", WORKER, str(tmp_path / "state.db"), tag,
                str(i * per_worker), str(per_worker), str(rate), str(burst),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                cwd=str(ROOT), env=env) for i in range(2)]
            try:
                for proc in procs:
                    assert proc.stdout is not None
                    line = await asyncio.wait_for(proc.stdout.readline(), 60)
                    assert line.strip() == b"ready"
                for proc in procs:
                    assert proc.stdin is not None
                    proc.stdin.write(b"go\n")
                    await proc.stdin.drain()
                outputs = [await asyncio.wait_for(proc.communicate(), 60) for proc in procs]
            finally:
                for proc in procs:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
    assert [int(out.strip()) for out, _ in outputs] == [per_worker, per_worker]
    assert len(proxy.imports()) == 2 * per_worker
    times = [c.at for c in proxy.import_attempts()]
    assert_within_rate(times, rate, burst)
    assert times[-1] - times[0] >= (2 * per_worker - burst) / rate - 0.2


async def test_security_hub_healthcheck_passes_against_an_enabled_hub(
        moto_server: str, boto: Any, aws: AwsClients) -> None:
    boto("securityhub").enable_security_hub()
    await security_hub.build(SecurityHubSinkConfig(), context(aws)).healthcheck()


# --- Security Hub: local fake for per-finding failures and denials ------------------------------
class FakeSecurityHub:
    """Fake of Security Hub's REST-JSON API: BatchImportFindings and DescribeHub only.

    ``fail`` maps finding Id -> ErrorCode to answer in ``FailedFindings``; ``deny``
    answers every call 403 AccessDeniedException, as the real service does for a
    role without ``securityhub:BatchImportFindings``.
    """

    def __init__(self, fail: dict[str, str] | None = None, deny: bool = False) -> None:
        self.fail = fail or {}
        self.deny = deny
        self.received: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.deny:
            return web.json_response(
                {"Message": "User is not authorized to perform: securityhub:*"}, status=403,
                headers={"x-amzn-ErrorType": "AccessDeniedException"})
        if request.path == "/findings/import" and request.method == "POST":
            findings = loads(await request.read())["Findings"]
            self.received.extend(findings)
            failed = [{"Id": f["Id"], "ErrorCode": self.fail[f["Id"]],
                       "ErrorMessage": f"fake {self.fail[f['Id']]}"}
                      for f in findings if f["Id"] in self.fail]
            return web.json_response({"FailedCount": len(failed),
                                      "SuccessCount": len(findings) - len(failed),
                                      "FailedFindings": failed})
        if request.path == "/accounts":
            return web.json_response({"HubArn": f"arn:aws:securityhub:us-east-1:{ACCOUNT}:hub/"
                                                "default", "SubscribedAt": "2026-01-01"})
        return web.json_response({"Message": "not faked"}, status=404,
                                 headers={"x-amzn-ErrorType": "ResourceNotFoundException"})


async def test_failed_findings_are_sorted_per_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    tag = uuid.uuid4().hex[:8]
    fake = FakeSecurityHub(fail={f"riposte/inc-{tag}-1": "InvalidInput",
                                 f"riposte/inc-{tag}-2": "LimitExceededException",
                                 f"riposte/inc-{tag}-3": "InternalException"})
    async with serve(fake.handle) as url, clients_via("SECURITYHUB", url, monkeypatch) as c:
        sink = security_hub.build(SecurityHubSinkConfig(account_id=ACCOUNT), context(c))
        result = await sink.send([incident(n, tag=tag) for n in range(4)])
    assert ids(result.delivered) == [f"inc-{tag}-0"]
    assert ids(result.retry) == [f"inc-{tag}-2", f"inc-{tag}-3"]
    assert [(r.item.id, r.reason) for r in result.rejected] == [(f"inc-{tag}-1", "InvalidInput")]
    assert len(fake.received) == 4
    # The fan-out reads the reason code at the start of ``error`` (sink_failed{reason}).
    assert result.error.startswith("throttled: LimitExceededException")


async def test_an_older_revision_shares_the_fate_of_the_newest_in_its_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tag = uuid.uuid4().hex[:8]
    fake = FakeSecurityHub(fail={f"riposte/inc-{tag}-0": "TooManyRequestsException"})
    async with serve(fake.handle) as url, clients_via("SECURITYHUB", url, monkeypatch) as c:
        sink = security_hub.build(SecurityHubSinkConfig(account_id=ACCOUNT), context(c))
        result = await sink.send([incident(0, tag=tag), incident(0, tag=tag, revision=2)])
    assert [f["ProductFields"]["riposte/revision"] for f in fake.received] == ["2"]
    assert sorted(getattr(i, "revision", 0) for i in result.retry) == [1, 2]
    assert not result.delivered


async def test_access_denied_rejects_the_batch_and_fails_the_healthcheck(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSecurityHub(deny=True)
    async with serve(fake.handle) as url, clients_via("SECURITYHUB", url, monkeypatch) as c:
        sink = security_hub.build(SecurityHubSinkConfig(account_id=ACCOUNT), context(c))
        result = await sink.send([incident(0, tag="deny")])
        assert [r.reason for r in result.rejected] == ["AccessDeniedException"]
        assert not result.retry
        # A credential refusal the fan-out stops the sink on, rather than retrying.
        assert result.rejected[0].reason in reasons.STOP_REASONS
        with pytest.raises(ConfigError, match="Security Hub in us-east-1 refused"):
            await sink.healthcheck()


# --- SNS --------------------------------------------------------------------------------------
def sqs_queue(boto: Any, name: str, **attrs: str) -> tuple[str, str]:
    sqs = boto("sqs")
    url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"]
    return url, arn


def drain(boto: Any, url: str, expected: int) -> list[dict[str, Any]]:
    sqs = boto("sqs")
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(got) < expected and time.monotonic() < deadline:
        resp = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                   AttributeNames=["All"], MessageAttributeNames=["All"])
        for msg in resp.get("Messages", []):
            got.append(msg)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"])
    return got


async def test_sns_publishes_to_a_subscribed_queue_with_attributes(
        boto: Any, aws: AwsClients) -> None:
    tag = uuid.uuid4().hex[:8]
    topic = boto("sns").create_topic(Name=f"riposte-{tag}")["TopicArn"]
    url, arn = sqs_queue(boto, f"sns-{tag}")
    boto("sns").subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    sink = sns.build(SnsSinkConfig(topic_arn=topic), context(aws))
    assert sink.max_batch_items == 10
    await sink.healthcheck()
    items: list[Item] = [*(incident(n, tag=tag) for n in range(11)), action(tag)]
    result = await sink.send(items)
    assert len(result.delivered) == 12 and not result.retry and not result.rejected
    messages = [loads(m["Body"]) for m in drain(boto, url, 12)]
    assert len(messages) == 12
    by_item = {m["MessageAttributes"]["riposte.item_id"]["Value"]: m for m in messages}
    inc = by_item[f"incident:inc-{tag}-0:r1"]
    assert inc["MessageAttributes"]["riposte.kind"]["Value"] == "incident"
    assert inc["MessageAttributes"]["riposte.severity"]["Value"] == "high"
    assert inc["MessageAttributes"]["riposte.incident_id"]["Value"] == f"inc-{tag}-0"
    assert inc["Subject"] == f"Riposte HIGH incident: Crypto mining on i-{tag}0"
    assert loads(inc["Message"])["id"] == f"inc-{tag}-0"
    act = by_item[f"action:act-{tag}:applied"]
    assert act["MessageAttributes"]["riposte.incident_id"]["Value"] == f"inc-{tag}-0"


async def test_sns_oversize_entry_is_rejected_and_the_rest_delivered(
        boto: Any, aws: AwsClients) -> None:
    tag = uuid.uuid4().hex[:8]
    topic = boto("sns").create_topic(Name=f"riposte-big-{tag}")["TopicArn"]
    url, arn = sqs_queue(boto, f"sns-big-{tag}")
    boto("sns").subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    huge = incident(1, tag=tag, title="x" * (300 * 1024))
    sink = sns.build(SnsSinkConfig(topic_arn=topic), context(aws))
    result = await sink.send([incident(0, tag=tag), huge])
    assert ids(result.delivered) == [f"inc-{tag}-0"]
    assert [(r.item.id, r.reason) for r in result.rejected] == [(f"inc-{tag}-1",
                                                                 "entry_too_large")]
    assert len(drain(boto, url, 1)) == 1


async def test_sns_fifo_topic_groups_by_incident_and_dedups_by_revision(
        boto: Any, aws: AwsClients) -> None:
    tag = uuid.uuid4().hex[:8]
    topic = boto("sns").create_topic(Name=f"riposte-{tag}.fifo",
                                     Attributes={"FifoTopic": "true"})["TopicArn"]
    url, arn = sqs_queue(boto, f"sns-{tag}.fifo", FifoQueue="true")
    boto("sns").subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn,
                          Attributes={"RawMessageDelivery": "true"})
    sink = sns.build(SnsSinkConfig(topic_arn=topic), context(aws))
    r1, r2 = incident(0, tag=tag), incident(0, tag=tag, revision=2)
    result = await sink.send([r1, r2])
    assert len(result.delivered) == 2
    # The same revision again (a redelivered message): SNS FIFO drops the duplicate.
    assert (await sink.send([r1])).delivered
    messages = drain(boto, url, 2)
    assert not boto("sqs").receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages")
    assert [m["Attributes"]["MessageGroupId"] for m in messages] == [f"inc-{tag}-0"] * 2
    assert [m["Attributes"]["MessageDeduplicationId"] for m in messages] == [
        f"incident:inc-{tag}-0:r1", f"incident:inc-{tag}-0:r2"]


class FakeSns:
    """Fake of SNS's query API (PublishBatch only) answering per-entry failures.

    ``codes`` maps entry position -> (Code, SenderFault) for the ``Failed`` list.
    """

    def __init__(self, codes: dict[int, tuple[str, bool]]) -> None:
        self.codes = codes
        self.forms: list[dict[str, list[str]]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        form = parse_qs((await request.read()).decode())
        self.forms.append(form)
        assert form["Action"] == ["PublishBatch"]
        ok, failed = [], []
        n = 1
        while f"PublishBatchRequestEntries.member.{n}.Id" in form:
            entry_id = form[f"PublishBatchRequestEntries.member.{n}.Id"][0]
            if n - 1 in self.codes:
                code, sender = self.codes[n - 1]
                failed.append(f"<member><Id>{entry_id}</Id><Code>{code}</Code>"
                              f"<Message>fake {code}</Message>"
                              f"<SenderFault>{str(sender).lower()}</SenderFault></member>")
            else:
                ok.append(f"<member><Id>{entry_id}</Id><MessageId>{uuid.uuid4()}</MessageId>"
                          "</member>")
            n += 1
        body = ('<PublishBatchResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
                f"<PublishBatchResult><Successful>{''.join(ok)}</Successful>"
                f"<Failed>{''.join(failed)}</Failed></PublishBatchResult>"
                "<ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata>"
                "</PublishBatchResponse>")
        return web.Response(text=body, content_type="text/xml")


async def test_sns_failed_entries_are_sorted_per_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSns({1: ("Throttled", False), 2: ("InvalidParameter", True),
                    3: ("SomethingNew", False)})
    topic = f"arn:aws:sns:us-east-1:{ACCOUNT}:fake"
    async with serve(fake.handle) as url, clients_via("SNS", url, monkeypatch) as c:
        sink = sns.build(SnsSinkConfig(topic_arn=topic), context(c))
        result = await sink.send([incident(n, tag="snsfake") for n in range(4)])
    assert ids(result.delivered) == ["inc-snsfake-0"]
    assert ids(result.retry) == ["inc-snsfake-1", "inc-snsfake-3"]
    assert [(r.item.id, r.reason) for r in result.rejected] == [("inc-snsfake-2",
                                                                 "InvalidParameter")]
    assert result.error.startswith("throttled: Throttled")
    form = fake.forms[0]
    assert form["TopicArn"] == [topic]
    assert form["PublishBatchRequestEntries.member.1.MessageAttributes.entry.1.Name"] == [
        "riposte.kind"]
    # A standard topic: no FIFO ids.
    assert not any("MessageGroupId" in key for key in form)


async def test_sns_healthcheck_names_a_missing_topic(aws: AwsClients) -> None:
    topic = f"arn:aws:sns:us-east-1:{ACCOUNT}:missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConfigError, match="missing-"):
        await sns.build(SnsSinkConfig(topic_arn=topic), context(aws)).healthcheck()


# --- EventBridge ------------------------------------------------------------------------------
async def test_eventbridge_rule_delivers_events_to_a_queue(boto: Any, aws: AwsClients) -> None:
    tag = uuid.uuid4().hex[:8]
    bus, source = f"riposte-{tag}", f"riposte.{tag}"
    events = boto("events")
    events.create_event_bus(Name=bus)
    url, arn = sqs_queue(boto, f"eb-{tag}")
    events.put_rule(Name=f"all-{tag}", EventBusName=bus,
                    EventPattern=f'{{"source": ["{source}"]}}')
    events.put_targets(Rule=f"all-{tag}", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    sink = eventbridge.build(EventBridgeSinkConfig(event_bus=bus, source=source), context(aws))
    assert sink.max_batch_items == 10
    await sink.healthcheck()
    items: list[Item] = [*(incident(n, tag=tag) for n in range(10)), detection(tag),
                         action(tag)]
    result = await sink.send(items)
    assert len(result.delivered) == 12 and not result.retry and not result.rejected
    received = [loads(m["Body"]) for m in drain(boto, url, 12)]
    assert len(received) == 12
    kinds = sorted(e["detail-type"] for e in received)
    assert kinds == sorted(["Riposte Incident"] * 10
                           + ["Riposte Detection", "Riposte Containment Action"])
    assert {e["source"] for e in received} == {source}
    inc = next(e for e in received if e["detail"].get("id") == f"inc-{tag}-0")
    assert inc["detail"]["score"]["value"] == 82
    assert inc["resources"] == [f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-{tag}0"]


async def test_eventbridge_oversize_entry_is_rejected(boto: Any, aws: AwsClients) -> None:
    tag = uuid.uuid4().hex[:8]
    boto("events").create_event_bus(Name=f"big-{tag}")
    sink = eventbridge.build(EventBridgeSinkConfig(event_bus=f"big-{tag}"), context(aws))
    result = await sink.send([incident(0, tag=tag),
                              incident(1, tag=tag, title="y" * (260 * 1024))])
    assert ids(result.delivered) == [f"inc-{tag}-0"]
    assert [r.reason for r in result.rejected] == ["entry_too_large"]


class FakeEventBridge:
    """Fake of EventBridge's JSON 1.1 API (PutEvents only): per-position error codes."""

    def __init__(self, codes: dict[int, str]) -> None:
        self.codes = codes
        self.targets: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.targets.append(request.headers.get("X-Amz-Target", ""))
        entries = loads(await request.read())["Entries"]
        answers: list[dict[str, str]] = []
        for i, _ in enumerate(entries):
            code = self.codes.get(i)
            answers.append({"ErrorCode": code, "ErrorMessage": f"fake {code}"} if code
                           else {"EventId": str(uuid.uuid4())})
        body = {"FailedEntryCount": sum(1 for a in answers if "ErrorCode" in a),
                "Entries": answers}
        return web.json_response(body, content_type="application/x-amz-json-1.1")


async def test_eventbridge_failed_entries_are_sorted_per_entry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeEventBridge({1: "ThrottlingException", 2: "MalformedDetail",
                            3: "InternalFailure"})
    async with serve(fake.handle) as url, clients_via("EVENTBRIDGE", url, monkeypatch) as c:
        sink = eventbridge.build(EventBridgeSinkConfig(event_bus="bus"), context(c))
        result = await sink.send([incident(n, tag="ebfake") for n in range(4)])
    assert fake.targets == ["AWSEvents.PutEvents"]
    assert ids(result.delivered) == ["inc-ebfake-0"]
    assert ids(result.retry) == ["inc-ebfake-1", "inc-ebfake-3"]
    assert [(r.item.id, r.reason) for r in result.rejected] == [("inc-ebfake-2",
                                                                 "MalformedDetail")]
    assert result.error.startswith("throttled: ThrottlingException")


async def test_eventbridge_healthcheck_names_a_missing_bus(aws: AwsClients) -> None:
    with pytest.raises(ConfigError, match="EventBridge bus 'nope-"):
        await eventbridge.build(EventBridgeSinkConfig(event_bus=f"nope-{uuid.uuid4().hex}"),
                                context(aws)).healthcheck()


# --- error classification ---------------------------------------------------------------------
def client_error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "m"},
                     "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "Op")


@pytest.mark.parametrize(("exc", "retry", "reason"), [
    (client_error("ThrottlingException", 400), True, "ThrottlingException"),
    (client_error("TooManyRequestsException", 429), True, "TooManyRequestsException"),
    (client_error("LimitExceededException", 429), True, "LimitExceededException"),
    (client_error("ServiceUnavailable", 503), True, "ServiceUnavailable"),
    (client_error("InternalError", 500), True, "InternalError"),
    (client_error("Whatever", 502), True, "Whatever"),
    (client_error("", 504), True, "http_504"),
    (client_error("AccessDeniedException", 403), False, "AccessDeniedException"),
    (client_error("InvalidAccessException", 401), False, "InvalidAccessException"),
    (client_error("ValidationException", 400), False, "ValidationException"),
    (client_error("NotFound", 404), False, "NotFound"),
    (client_error("ResourceNotFoundException", 400), False, "ResourceNotFoundException"),
    (client_error("SomeNewClientFault", 400), False, "SomeNewClientFault"),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True, "connection"),
    (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True, "http_client"),
    (TimeoutError(), True, "timeout"),
    (NoCredentialsError(), False, "no_credentials"),
    (PermanentError("replay refuses", reason="mutating_call_refused"), False,
     "mutating_call_refused"),
    (RetriableError("later", reason="busy"), True, "busy"),
])
def test_whole_call_errors_are_classified_in_one_place(exc: BaseException, retry: bool,
                                                       reason: str) -> None:
    failure = classify_exception(exc)
    assert (failure.retry, failure.reason) == (retry, reason)


@pytest.mark.parametrize(("failure", "text"), [
    (classify_code("ThrottlingException"), "throttled: ThrottlingException: "),
    (classify_code("LimitExceededException"), "throttled: LimitExceededException: "),
    (classify_code(None, status=429), "throttled: http_429: "),
    (classify_code("InternalFailure"), "server_error: InternalFailure: "),
    (classify_exception(TimeoutError()), "timeout: timeout: "),
    (classify_exception(EndpointConnectionError(endpoint_url="http://127.0.0.1:1")),
     "connection: connection: "),
    (classify_code("AccessDeniedException", message="no"), "AccessDeniedException: no"),
])
def test_error_text_starts_with_the_shared_reason_vocabulary(failure: AwsFailure,
                                                             text: str) -> None:
    assert error_text(failure).startswith(text)


@pytest.mark.parametrize(("code", "sender_fault", "retry"), [
    ("ThrottlingException", None, True), ("Throttled", True, True),
    ("InvalidInput", None, False), ("MalformedDetail", None, False),
    ("NewCode", True, False), ("NewCode", False, True), ("NewCode", None, True),
    ("KMSThrottlingException", True, True), ("KMSDisabled", False, False),
])
def test_entry_codes_are_classified_in_one_place(code: str, sender_fault: bool | None,
                                                 retry: bool) -> None:
    assert classify_code(code, sender_fault=sender_fault).retry is retry


# --- configuration and wiring -----------------------------------------------------------------
def test_aws_sink_configs_parse_from_the_sink_union_with_api_sized_batches() -> None:
    config = RiposteConfig.model_validate({"sinks": [
        {"type": "security_hub", "shared_rate_limit": True, "api_rate": 5},
        {"type": "sns", "topic_arn": f"arn:aws:sns:eu-west-1:{ACCOUNT}:alerts.fifo"},
        {"type": "eventbridge", "event_bus": "riposte", "detail_types": {"incident": "Inc"}},
    ]})
    hub, topic, bus = config.sinks
    assert isinstance(hub, SecurityHubSinkConfig) and hub.shared_rate_limit
    assert (hub.batching.max_items, hub.api_rate, hub.api_burst) == (100, 5.0, 30.0)
    assert hub.routing.kinds == ["detection", "incident"]
    assert hub.rate_limit.rate == 0  # the sink limits each API call itself
    assert isinstance(topic, SnsSinkConfig) and topic.batching.max_items == 10
    assert isinstance(bus, EventBridgeSinkConfig) and bus.batching.max_items == 10


@pytest.mark.parametrize("bad", [
    {"type": "security_hub", "account_id": "12345"},
    {"type": "security_hub", "api_rate": 0},
    {"type": "security_hub", "rate": 10},  # a typo is an error, not ignored
    {"type": "security_hub", "product_arn": "arn:aws:sns:us-east-1:123456789012:t"},
    {"type": "sns", "topic_arn": "arn:aws:sqs:us-east-1:123456789012:q"},
    {"type": "sns"},
    {"type": "eventbridge", "source": "aws.guardduty"},
    {"type": "eventbridge", "detail_types": {"finding": "x"}},
])
def test_bad_aws_sink_configs_fail_at_load_time(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="sinks"):
        RiposteConfig.model_validate({"sinks": [bad]})


async def test_the_registry_builds_each_aws_sink(aws: AwsClients) -> None:
    from sinks.base import Sink
    from sinks.registry import build_sink

    ctx = context(aws)
    built = [build_sink(c, ctx) for c in (
        SecurityHubSinkConfig(), SnsSinkConfig(topic_arn=f"arn:aws:sns:us-east-1:{ACCOUNT}:t"),
        EventBridgeSinkConfig())]
    assert [type(s).__name__ for s in built] == ["SecurityHubSink", "SnsSink",
                                                  "EventBridgeSink"]
    assert [getattr(s, "max_batch_items", None) for s in built] == [100, 10, 10]
    assert all(isinstance(s, Sink) for s in built)


async def test_replays_read_only_clients_make_aws_sinks_reject_not_retry(
        moto_server: str, boto: Any) -> None:
    """Replay builds read-only clients: a sink's write is refused before it is signed."""
    from pipeline.readonly_aws import ReadOnlyAwsClients

    tag = uuid.uuid4().hex[:8]
    boto("events").create_event_bus(Name=f"ro-{tag}")
    clients = ReadOnlyAwsClients("us-east-1")
    try:
        sink = eventbridge.build(EventBridgeSinkConfig(event_bus=f"ro-{tag}"), context(clients))
        await sink.healthcheck()  # DescribeEventBus only reads
        result = await sink.send([incident(0, tag=tag)])
    finally:
        await clients.aclose()
    assert [r.reason for r in result.rejected] == ["mutating_call_refused"]
    assert not result.retry and not result.delivered
