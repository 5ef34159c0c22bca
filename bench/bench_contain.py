"""Containment latency: from an EC2 incident reaching the contain stage to the isolation
call (``ModifyInstanceAttribute``) being issued, p50 and p99, in enforce mode.

The EC2 side is a small canned stand-in (EC2 query API, XML) in a separate process that
answers at once, so the figures are Riposte's own time plus a few loopback round trips:
the policy match, safety gates, ledger claim (conditional write), the live describe and
group lookup the plan needs, the blast-radius bucket and the call itself. Target: p99
under 1 s excluding AWS API latency. The time is taken when botocore is about to send
the request (its ``before-send`` event).

    python bench/bench_contain.py [--incidents 500] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    free_port,
    percentile,
    start_process,
    stop_process,
    use_endpoint,
)


# --- the EC2 stand-in (separate process): the same answers as bench_chain's ------------------
def serve(port: int) -> None:
    from aiohttp import web

    from bench.fast_intakes import Recorder, ec2_answer

    groups: dict[str, list[str]] = {}
    recorder = Recorder()

    async def handle(request: web.Request) -> web.Response:
        form = {k: v[0] for k, v in parse_qs(await request.text()).items()}
        return ec2_answer(form, groups, recorder)

    app = web.Application()
    app.router.add_post("/", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


# --- the measurement --------------------------------------------------------------------------

async def measure(n: int, concurrency: int) -> None:
    from datetime import UTC, datetime

    from pipeline.actions.config import ContainmentConfig
    from pipeline.aws import AwsClients
    from pipeline.config import RiposteConfig
    from pipeline.context import RuntimeContext
    from pipeline.models import (
        ActionStatus,
        Event,
        EventKind,
        FindingRef,
        Incident,
        ResourceRef,
        RiskScore,
        Severity,
        SeverityLabel,
    )
    from pipeline.stages.contain import build
    from pipeline.state.memory import MemoryStore

    HOME, REGION = "123456789012", "us-east-1"
    ftype = "UnauthorizedAccess:EC2/TorClient"
    sev = Severity.of_score(85)

    def incident(ref: ResourceRef) -> Incident:
        now = datetime.now(UTC)
        trigger = Event(id=f"ev-{ref.id}", kind=EventKind.GUARDDUTY, type=ftype, title=ftype,
                        source="aws.guardduty", account=HOME, region=REGION, time=now,
                        severity=sev, resources=(ref,), created_at=now,
                        detail_type="GuardDuty Finding", received_at=time.time())
        return Incident(id=f"inc-{ref.id}", key=ref.key, title=ftype, account=HOME,
                        region=REGION, resources=(ref,),
                        findings=(FindingRef(trigger.id, EventKind.GUARDDUTY, ftype, sev, now),),
                        first_seen=now, last_seen=now,
                        score=RiskScore(85, SeverityLabel.HIGH), trigger=trigger)

    cfg = ContainmentConfig.model_validate({
        "mode": "enforce", "accounts": [HOME], "regions": [REGION], "home_account": HOME,
        "rate_limit": {"actions_per_minute": 10_000},
        "policies": [{"name": "isolate", "match": {"resource_types": ["ec2.instance"]},
                      "actions": [{"kind": "ec2.isolate"}]}]})
    aws = AwsClients(REGION)
    issued: dict[str, float] = {}

    def before_send(request: Any, **_: Any) -> None:
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
        iid = parse_qs(body)["InstanceId"][0]
        issued[iid] = time.perf_counter()

    aws.session.register("before-send.ec2.ModifyInstanceAttribute", before_send)
    ctx = RuntimeContext(config=RiposteConfig(containment=cfg), store=MemoryStore(), aws=aws)
    stage = build(ctx.config, ctx)

    async def one(i: int, run: int) -> float:
        iid = f"i-{run:05x}{i:012x}"  # well formed (17 hex digits), unique per run
        ref = ResourceRef(type="ec2.instance", id=iid, account=HOME, region=REGION)
        started = time.perf_counter()
        out = await stage.process(incident(ref))
        assert out[1].status == ActionStatus.VERIFIED, out[1].reason
        return issued[iid] - started

    for i in range(20):  # warm up: clients, connection pool, imports
        await one(i, 0)
    for conc in sorted({1, concurrency}):
        sem = asyncio.Semaphore(conc)

        async def bounded(i: int, run: int, sem: asyncio.Semaphore = sem) -> float:
            async with sem:
                return await one(i, run)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        lat = await asyncio.gather(*(bounded(i, conc) for i in range(n)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        # Nearest-rank percentiles: statistics.quantiles extrapolates past the maximum on
        # small samples (it printed a p99 above the max).
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        print(f"concurrency {conc:>3}: {n} incidents, receipt -> isolation call issued: "
              f"p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, max {max(lat) * 1000:.2f} "
              f"ms; CPU {cpu / n * 1000:.2f} ms per incident (4 AWS calls each: describe, "
              f"group lookup, modify, verify describe); {n / wall:.0f} incidents/s")
    await aws.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    port = free_port()
    proc = start_process([__file__, "--serve", str(port)], port)
    try:
        use_endpoint(f"http://127.0.0.1:{port}")
        asyncio.run(measure(args.incidents, args.concurrency))
    finally:
        stop_process(proc)


if __name__ == "__main__":
    main()
