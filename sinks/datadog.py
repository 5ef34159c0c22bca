"""Datadog Logs (HTTP intake v2): JSON arrays of log entries to ``/api/v2/logs``.

Datadog's documented limits are applied before sending, on uncompressed sizes:
at most 5 MB per payload and 1,000 entries per array, at most 1 MB per entry.
A batch above the payload limits is split; a single entry above 1 MB is
rejected with reason ``entry_too_large`` (Datadog would silently truncate it,
and a truncated incident is worse than a dead-letter record saying why).

Each entry carries ``ddsource``, ``ddtags``, ``service`` and ``hostname``, a
``message`` (the item's title), ``status`` from its severity, ``timestamp`` from
its event time, and the whole item under ``riposte`` so it can be faceted.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

import orjson

from pipeline.context import RuntimeContext
from pipeline.errors import ConfigError, RetriableError
from pipeline.models import ActionRecord, Item, SeverityLabel, item_severity
from sinks import _http, reasons
from sinks._items import encoded, item_epoch, item_title
from sinks.base import Rejected, SendResult
from sinks.config import DatadogSinkConfig

LOGS_PATH = "/api/v2/logs"
VALIDATE_PATH = "/api/v1/validate"

# Datadog log status names for Riposte severities.
_STATUS = {
    SeverityLabel.INFORMATIONAL: b"info",
    SeverityLabel.LOW: b"notice",
    SeverityLabel.MEDIUM: b"warning",
    SeverityLabel.HIGH: b"error",
    SeverityLabel.CRITICAL: b"critical",
}


class DatadogLogsSink:
    def __init__(self, config: DatadogSinkConfig) -> None:
        self.name = config.name
        self.config = config
        self.intake = (config.intake_url or f"https://http-intake.logs.{config.site}").rstrip("/")
        self.api = (config.api_url or f"https://api.{config.site}").rstrip("/")
        self._client = _http.HttpClient(timeout=config.timeout, verify_tls=config.verify_tls,
                                        ca_bundle=config.ca_bundle, limit=config.concurrency * 2)
        key = config.api_key.get_secret_value()
        self._headers = {"DD-API-KEY": key, "Content-Type": "application/json"}
        if config.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._validate_headers = {"DD-API-KEY": key}
        common: dict[str, str] = {"ddsource": config.ddsource, "service": config.service}
        if config.ddtags:
            common["ddtags"] = config.ddtags
        common["hostname"] = config.hostname or socket.gethostname()
        # The constant fields of every entry, serialized once: b'"ddsource":"riposte",...,'
        self._common = orjson.dumps(common)[1:-1] + b","

    def encode(self, item: Item, now: float) -> bytes:
        status = b"info" if isinstance(item, ActionRecord) else _STATUS[item_severity(item)]
        millis = int(item_epoch(item, now) * 1000)
        return (b"{" + self._common + b'"message":' + orjson.dumps(item_title(item))
                + b',"status":"' + status + b'","timestamp":' + str(millis).encode()
                + b',"riposte":' + encoded(item) + b"}")

    def _chunks(self, batch: Sequence[Item]
                ) -> tuple[list[tuple[list[Item], bytes]], list[Rejected]]:
        cfg = self.config
        now = time.time()
        chunks: list[tuple[list[Item], bytes]] = []
        rejected: list[Rejected] = []
        items: list[Item] = []
        parts: list[bytes] = []
        size = 2  # the array's brackets
        for item in batch:
            entry = self.encode(item, now)
            if len(entry) > cfg.max_entry_bytes:
                rejected.append(Rejected(item, reasons.ENTRY_TOO_LARGE,
                                         f"log entry of {len(entry)} bytes exceeds Datadog's "
                                         f"{cfg.max_entry_bytes}-byte limit per entry"))
                continue
            extra = len(entry) + (1 if items else 0)  # the comma
            if items and (len(items) >= cfg.max_entries or size + extra > cfg.max_payload_bytes):
                chunks.append((items, b"[" + b",".join(parts) + b"]"))
                items, parts, size = [], [], 2
                extra = len(entry)
            items.append(item)
            parts.append(entry)
            size += extra
        if items:
            chunks.append((items, b"[" + b",".join(parts) + b"]"))
        return chunks, rejected

    async def send(self, batch: Sequence[Item]) -> SendResult:
        chunks, rejected = self._chunks(batch)
        return await _http.post_chunks(chunks, rejected, self._post)

    async def _post(self, items: list[Item], body: bytes) -> SendResult:
        if self.config.gzip:
            body = await _http.gzip_body(body)
        result, _ = await _http.send(self._client, "POST", self.intake + LOGS_PATH, items,
                                     body=body, headers=self._headers)
        return result

    async def healthcheck(self) -> None:
        """The API key is valid (``GET /api/v1/validate`` answers ``{"valid": true}``)."""
        where = _http.safe_url(self.api)
        try:
            resp = await self._client.request("GET", self.api + VALIDATE_PATH,
                                              headers=self._validate_headers)
        except _http.TransportError as exc:
            raise RetriableError(f"Datadog API at {where} is unreachable: {exc}",
                                 reason="sink_unreachable", component=self.name) from exc
        if resp.status in (401, 403):
            raise ConfigError(f"Datadog refused the API key (HTTP {resp.status}: "
                              f"{_http.truncate(resp.text, 200)})",
                              reason=reasons.FORBIDDEN, component=self.name)
        valid = False
        if _http.is_success(resp.status):
            try:
                valid = orjson.loads(resp.body).get("valid") is True
            except (orjson.JSONDecodeError, AttributeError):
                valid = False
        if not valid:
            raise RetriableError(f"Datadog key validation at {where} failed (HTTP {resp.status}: "
                                 f"{_http.truncate(resp.text, 200)})",
                                 reason="sink_unhealthy", component=self.name)

    async def aclose(self) -> None:
        await self._client.aclose()


def build(config: DatadogSinkConfig, ctx: RuntimeContext) -> DatadogLogsSink:
    return DatadogLogsSink(config)
