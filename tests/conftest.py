"""Shared fixtures: one moto server per session, real clients pointed at it over HTTP.

Before anything else, the AWS environment gets fake credentials and a loopback
endpoint where nothing listens, so no test can reach a real AWS endpoint even by
accident; the ``moto_server`` fixture then points it at the local stand-in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipeline.localaws import LocalAws, environment_for

# Before any test (or any module a test imports) creates an AWS client: fake credentials and
# an endpoint where nothing listens. A test that forgets the moto_server fixture then fails
# to connect to 127.0.0.1:9 instead of reaching a real AWS endpoint.
_SAFE_AWS_ENV = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
os.environ.pop("AWS_PROFILE", None)
os.environ.update(_SAFE_AWS_ENV)
for _name in list(os.environ):
    if _name.startswith("AWS_ENDPOINT_URL_"):
        del os.environ[_name]

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_SAMPLES = ROOT.parent / "shared" / "samples" / "events"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A test that runs the CLI in-process reconfigures logging; undo it for the next test."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """The endpoint URL of a moto server shared by the whole session."""
    server = LocalAws()
    saved = dict(os.environ)
    os.environ.pop("AWS_PROFILE", None)
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    os.environ.update(environment_for(server.endpoint_url))
    try:
        yield server.endpoint_url
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.stop()


@pytest.fixture
def boto(moto_server: str) -> Any:
    """A factory for synchronous boto3 clients against the moto server (test set-up)."""

    def make(service: str, region: str = "us-east-1", **kwargs: Any) -> Any:
        client: Any = boto3.client(service, region_name=region, endpoint_url=moto_server,
                                   **kwargs)
        return client

    return make


@pytest.fixture
async def aws(moto_server: str) -> AsyncIterator[Any]:
    """The project's own AwsClients (real aiobotocore) against the moto server."""
    from pipeline.aws import AwsClients

    clients = AwsClients("us-east-1")
    try:
        yield clients
    finally:
        await clients.aclose()


def shared_samples_or_skip() -> Path:
    if not SHARED_SAMPLES.is_dir():
        pytest.skip(f"the shared sample set is not beside this clone ({SHARED_SAMPLES} missing)")
    return SHARED_SAMPLES
