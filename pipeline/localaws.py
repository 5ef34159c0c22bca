"""A local AWS stand-in (moto in server mode) for `riposte demo` and the test-suite.

It listens on 127.0.0.1 only, on a free port, and ``local_aws_environment``
points the standard ``AWS_ENDPOINT_URL`` and credential variables at it, so the
real aiobotocore and boto3 clients talk to it over HTTP exactly as they would to
AWS. Nothing here can reach a real AWS endpoint: the credentials are fake and
the endpoint is loopback.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

FAKE_ACCOUNT = "123456789012"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


class LocalAws:
    """A running moto server and its endpoint URL."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request at INFO; keep the demo's output readable.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.stop()


def environment_for(endpoint_url: str) -> dict[str, str]:
    env = dict(FAKE_CREDENTIALS)
    env["AWS_ENDPOINT_URL"] = endpoint_url
    return env


@contextlib.contextmanager
def local_aws_environment() -> Iterator[LocalAws]:
    """Start moto, point the AWS environment variables at it, restore them after."""
    aws = LocalAws()
    saved = {k: os.environ.get(k) for k in (*FAKE_CREDENTIALS, "AWS_ENDPOINT_URL",
                                            "AWS_PROFILE", "AWS_CONFIG_FILE",
                                            "AWS_SHARED_CREDENTIALS_FILE")}
    try:
        os.environ.pop("AWS_PROFILE", None)
        os.environ["AWS_CONFIG_FILE"] = os.devnull
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
        os.environ.update(environment_for(aws.endpoint_url))
        yield aws
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        aws.stop()
