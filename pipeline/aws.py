"""AWS clients: one aiobotocore session, clients created once and reused.

Endpoints come from the standard ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>``
variables and credentials from the normal chain, both handled by botocore itself,
so pointing Riposte at a local stand-in needs no Riposte-specific setting.

Clients are cached per (service, region, role) and closed together by
``aclose()``. Creating an aiobotocore client costs milliseconds and opens a
connection pool, so nothing on a hot path should create one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session

DEFAULT_REGION = "us-east-1"


def aws_error_code(exc: BaseException) -> str | None:
    """The code of an AWS error answer (a botocore ``ClientError``'s ``Error.Code``); None
    for what is no AWS answer at all (no endpoint, no credentials, a timeout)."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        error = response.get("Error")
        if isinstance(error, Mapping) and error.get("Code"):
            return str(error["Code"])
    return None


class AwsClients:
    def __init__(self, region: str | None = None, *, session: AioSession | None = None,
                 max_pool_connections: int = 50, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0) -> None:
        self.session = session or get_session()
        self.region = region or self.session.get_config_variable("region") or DEFAULT_REGION
        self._config = AioConfig(
            max_pool_connections=max_pool_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": 3},
        )
        self._clients: dict[tuple[str, str, str], Any] = {}
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()

    async def client(self, service: str, *, region: str | None = None,
                     credentials: dict[str, str] | None = None,
                     cache_key: str = "", read_timeout: float | None = None,
                     validate: bool = True) -> Any:
        """A cached client. ``credentials`` (from an assumed role) need a ``cache_key``.

        ``validate=False`` skips botocore's client-side parameter validation, for callers
        that validate their requests themselves on a hot path (the Security Hub sink
        checks every ASFF finding before sending it).
        """
        key = (service, region or self.region, cache_key if validate else f"{cache_key}#nv")
        existing = self._clients.get(key)
        if existing is not None:
            return existing
        async with self._lock:
            existing = self._clients.get(key)
            if existing is not None:
                return existing
            kwargs: dict[str, Any] = {}
            if credentials:
                kwargs = {
                    "aws_access_key_id": credentials["AccessKeyId"],
                    "aws_secret_access_key": credentials["SecretAccessKey"],
                    "aws_session_token": credentials.get("SessionToken"),
                }
            config = self._config
            if read_timeout is not None:
                config = config.merge(AioConfig(read_timeout=read_timeout))
            if not validate:
                config = config.merge(AioConfig(parameter_validation=False))
            created = await self._stack.enter_async_context(
                self.session.create_client(service, region_name=key[1], config=config, **kwargs)
            )
            self._clients[key] = created
            return created

    async def forget(self, service: str, *, region: str | None = None,
                     cache_key: str = "") -> None:
        """Drop a cached client (expired assumed-role credentials); it closes with the rest."""
        self._clients.pop((service, region or self.region, cache_key), None)

    async def aclose(self) -> None:
        self._clients.clear()
        await self._stack.aclose()
