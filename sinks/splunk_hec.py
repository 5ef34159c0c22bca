"""Splunk HTTP Event Collector: batched JSON events to ``/services/collector/event``.

A batch is the HEC "concatenated events" format (one JSON object per event,
back to back), split so no request exceeds ``max_payload_bytes`` (Splunk's
``max_content_length``, 1 MB by default). Each event carries ``time`` in epoch
seconds from the item's *event* time, so a replayed archive lands where it
happened, and the configured ``index``/``source``/``sourcetype``/``host``.

With indexer acknowledgement on, every request carries the channel header and a
batch counts as delivered only once ``/services/collector/ack`` says its ``ackId``
was indexed; no answer within ``ack_timeout`` means the batch is retried (Splunk
may then index it twice, which is what HEC's at-least-once contract allows).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

import orjson

from pipeline.context import RuntimeContext
from pipeline.errors import ConfigError, RetriableError
from pipeline.models import Item
from sinks import _http, reasons
from sinks._items import encoded, item_epoch
from sinks.base import Rejected, SendResult
from sinks.config import SplunkHecSinkConfig

EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"
HEALTH_PATH = "/services/collector/health"
# Payloads larger than this are compressed off the event loop.


class SplunkHecSink:
    def __init__(self, config: SplunkHecSinkConfig) -> None:
        self.name = config.name
        self.config = config
        self.base = config.url.rstrip("/")
        self.channel = config.channel or str(uuid.uuid4())
        self._client = _http.HttpClient(timeout=config.timeout, verify_tls=config.verify_tls,
                                        ca_bundle=config.ca_bundle, limit=config.concurrency * 2)
        meta: dict[str, str] = {}
        for key in ("host", "source", "sourcetype", "index"):
            value = getattr(config, key)
            if value:
                meta[key] = value
        # The constant part of every event, serialized once.
        self._meta = orjson.dumps(meta)[1:-1] + b"," if meta else b""
        self._headers = {"Authorization": f"Splunk {config.token.get_secret_value()}",
                         "Content-Type": "application/json"}
        if config.indexer_ack:
            self._headers["X-Splunk-Request-Channel"] = self.channel
        if config.gzip:
            self._headers["Content-Encoding"] = "gzip"

    def encode(self, item: Item, now: float) -> bytes:
        ts = b"%.3f" % item_epoch(item, now)
        return b'{"time":' + ts + b"," + self._meta + b'"event":' + encoded(item) + b"}"

    def _chunks(self, batch: Sequence[Item]
                ) -> tuple[list[tuple[list[Item], bytes]], list[Rejected]]:
        now = time.time()
        limit = self.config.max_payload_bytes
        chunks: list[tuple[list[Item], bytes]] = []
        rejected: list[Rejected] = []
        items: list[Item] = []
        parts: list[bytes] = []
        size = 0
        for item in batch:
            encoded = self.encode(item, now)
            if len(encoded) > limit:
                rejected.append(Rejected(item, reasons.ENTRY_TOO_LARGE,
                                         f"event of {len(encoded)} bytes exceeds the "
                                         f"{limit}-byte payload limit"))
                continue
            if size + len(encoded) > limit and items:
                chunks.append((items, b"".join(parts)))
                items, parts, size = [], [], 0
            items.append(item)
            parts.append(encoded)
            size += len(encoded)
        if items:
            chunks.append((items, b"".join(parts)))
        return chunks, rejected

    async def send(self, batch: Sequence[Item]) -> SendResult:
        chunks, rejected = self._chunks(batch)
        return await _http.post_chunks(chunks, rejected, self._post)

    async def _post(self, items: list[Item], body: bytes) -> SendResult:
        if self.config.gzip:
            body = await _http.gzip_body(body)
        result, response = await _http.send(self._client, "POST", self.base + EVENT_PATH,
                                            items, body=body, headers=self._headers)
        if response is None or not result.delivered or not self.config.indexer_ack:
            return result
        try:
            ack_id = int(orjson.loads(response.body)["ackId"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return SendResult.all_retry(items, f"{reasons.ACK_TIMEOUT}: no ackId in the answer "
                                        f"({_http.truncate(response.text, 200)})")
        return await self._await_ack(items, ack_id)

    async def _await_ack(self, items: list[Item], ack_id: int) -> SendResult:
        deadline = time.monotonic() + self.config.ack_timeout
        body = orjson.dumps({"acks": [ack_id]})
        params = {"channel": self.channel}
        while True:
            await asyncio.sleep(self.config.ack_poll_interval)
            try:
                resp = await self._client.request("POST", self.base + ACK_PATH, body=body,
                                                  headers=self._headers_plain(), params=params)
            except _http.TransportError:
                resp = None
            if resp is not None and _http.is_success(resp.status):
                try:
                    acks = orjson.loads(resp.body).get("acks", {})
                except (orjson.JSONDecodeError, AttributeError):
                    acks = {}
                if acks.get(str(ack_id)) is True:
                    return SendResult.all_delivered(items)
            elif resp is not None and resp.status in (401, 403):
                return _http.classify(items, resp)
            if time.monotonic() >= deadline:
                return SendResult.all_retry(
                    items, f"{reasons.ACK_TIMEOUT}: ackId {ack_id} not indexed within "
                           f"{self.config.ack_timeout}s")

    def _headers_plain(self) -> dict[str, str]:
        headers = dict(self._headers)
        headers.pop("Content-Encoding", None)
        return headers

    async def healthcheck(self) -> None:
        """HEC is up (``/services/collector/health``) and accepts our token.

        The token is checked with an empty event request: Splunk answers 400 "No
        data" (code 5) to a valid token and 401/403 to a bad one, and indexes nothing.
        """
        where = _http.safe_url(self.base)
        try:
            health = await self._client.request("GET", self.base + HEALTH_PATH,
                                                headers=self._headers_plain())
            probe = await self._client.request("POST", self.base + EVENT_PATH, body=b"",
                                               headers=self._headers_plain())
        except _http.TransportError as exc:
            raise RetriableError(f"Splunk HEC at {where} is unreachable: {exc}",
                                 reason="sink_unreachable", component=self.name) from exc
        for resp in (health, probe):
            if resp.status in (401, 403):
                raise ConfigError(f"Splunk HEC at {where} refused the token (HTTP {resp.status}: "
                                  f"{_http.truncate(resp.text, 200)})",
                                  reason=reasons.UNAUTHORIZED, component=self.name)
        if not _http.is_success(health.status):
            raise RetriableError(f"Splunk HEC at {where} is not healthy (HTTP {health.status}: "
                                 f"{_http.truncate(health.text, 200)})",
                                 reason="sink_unhealthy", component=self.name)

    async def aclose(self) -> None:
        await self._client.aclose()


def build(config: SplunkHecSinkConfig, ctx: RuntimeContext) -> SplunkHecSink:
    return SplunkHecSink(config)
