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
import threading
from collections.abc import Iterator
from typing import Any

FAKE_ACCOUNT = "123456789012"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


class _SerializeDynamoDb:
    """WSGI middleware: one DynamoDB request at a time.

    DynamoDB applies each conditional write atomically; moto checks the condition
    and then writes without a lock, so two concurrent requests to the threaded
    server can both "win". Serializing DynamoDB requests restores the guarantee
    that leases, ledgers and compare-and-set depend on. Other services are untouched.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with self.lock:
                # Consume the whole response inside the lock: moto may build it lazily.
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)


class LocalAws:
    """A running moto server and its endpoint URL."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        # werkzeug logs every request at INFO; keep the demo's output readable.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        app = _SerializeDynamoDb(DomainDispatcherApplication(create_backend_app))
        self._server = make_server("127.0.0.1", 0, app, threaded=True,
                                   request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="local-aws")
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.endpoint_url = f"http://{host!s}:{port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)
        self._server.server_close()


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
