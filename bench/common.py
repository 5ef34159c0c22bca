"""Helpers the benchmarks share: ports, stand-in processes, CPU/RSS readings, percentiles.

Every benchmark measures the pipeline process alone: the AWS and intake stand-ins
run in a separate process (started here), and throughput is divided by this
process's CPU time (``time.process_time``) rather than wall time, because other
work on the machine would otherwise count against the pipeline.
"""

from __future__ import annotations

import math
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

# Fake credentials and endpoints only: nothing in a benchmark may reach real AWS.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Block until something accepts connections on ``port`` (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"stand-in process exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def start_process(args: Sequence[str], port: int) -> subprocess.Popen[bytes]:
    """Run ``python ARGS...`` (a stand-in server) and wait until it listens on ``port``."""
    proc = subprocess.Popen([sys.executable, *args])
    wait_for_port(port, proc)
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def use_endpoint(endpoint: str) -> None:
    """Point every AWS client of this process at ``endpoint`` with fake credentials."""
    os.environ.update(FAKE_AWS_ENV)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    os.environ.pop("AWS_PROFILE", None)


def rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Resident set size now (from /proc), for before/after differences."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
    except OSError:
        return rss_mib()
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of unsorted ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class CpuTimer:
    """CPU seconds of this process and wall seconds between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.cpu0 = self.wall0 = 0.0
        self.cpu = self.wall = 0.0

    def start(self) -> CpuTimer:
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        return self

    def stop(self) -> CpuTimer:
        self.cpu = time.process_time() - self.cpu0
        self.wall = time.perf_counter() - self.wall0
        return self


async def sqs_client_rate(queue_url: str, messages: int) -> float:
    """Messages per CPU second for the bare aiobotocore client receiving (10 at a time) and
    deleting them in batches: the yardstick SQS figures are read against, since this
    machine's own speed varies from hour to hour."""
    from pipeline.aws import AwsClients

    aws = AwsClients("us-east-1")
    client = await aws.client("sqs")
    done = 0
    cpu0 = time.process_time()
    try:
        while done < messages:
            got = await client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
            batch = got.get("Messages", [])
            if not batch:
                break
            await client.delete_message_batch(QueueUrl=queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(batch)])
            done += len(batch)
        return done / (time.process_time() - cpu0)
    finally:
        await aws.aclose()
