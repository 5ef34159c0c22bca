"""Chat and generic webhooks: one message per item, in the platform's own format.

The HTTP status is classified in :mod:`sinks._http`. On top of it, the Chinese
platforms answer HTTP 200 with an application error code (DingTalk and WeCom
``errcode``, Feishu ``code``), and Teams connectors may answer 200 with a relayed
error; those are read here and mapped to the same retry/reject vocabulary
(throttling codes are retried, signature failures stop the sink like a 401).

Signing:
- generic: ``X-Riposte-Timestamp: <unix seconds>`` and
  ``X-Riposte-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``;
  the receiver recomputes it and rejects stale timestamps (replay protection).
- DingTalk: ``timestamp`` (ms) and ``sign`` query parameters, base64 HMAC-SHA256 of
  ``"<timestamp>\\n<secret>"`` keyed by the secret (DingTalk's "加签").
- Feishu/Lark: ``timestamp`` (s) and ``sign`` in the body, base64 HMAC-SHA256 with
  key ``"<timestamp>\\n<secret>"`` over an empty message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Any

import orjson

from pipeline.context import RuntimeContext
from pipeline.errors import ConfigError
from pipeline.models import Item
from pipeline.serde import dumps
from sinks import _http, reasons
from sinks._items import summarize
from sinks._webhook_formats import renderer
from sinks.base import SendResult
from sinks.config import WebhookSinkConfig

SIGNATURE_HEADER = "X-Riposte-Signature"
TIMESTAMP_HEADER = "X-Riposte-Timestamp"

# Application error codes (HTTP 200 bodies) that mean "slow down" or "credentials refused".
_THROTTLE_CODES = {"dingtalk": {130101}, "wecom": {45009, 45033}, "feishu": {9499, 11232, 11233}}
_AUTH_CODES = {"dingtalk": {310000, 300001, 400101}, "wecom": {93000, 40001, 40014},
               "feishu": {19021, 19022, 19001}}
# A throttled chat webhook usually frees up within its one-minute window.
_APP_THROTTLE_DELAY = 60.0


def generic_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_generic_signature(secret: bytes, timestamp: str, body: bytes, header: str, *,
                             now: float | None = None, tolerance: float = 300.0) -> bool:
    """What a receiver should do: recompute, compare in constant time, refuse stale ones."""
    try:
        age = abs((time.time() if now is None else now) - float(timestamp))
    except ValueError:
        return False
    if age > tolerance:
        return False
    return hmac.compare_digest(generic_signature(secret, timestamp, body), header)


def dingtalk_sign(secret: str, timestamp_ms: str) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def feishu_sign(secret: str, timestamp_s: str) -> str:
    mac = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


class WebhookSink:
    def __init__(self, config: WebhookSinkConfig) -> None:
        self.name = config.name
        self.config = config
        self.format = config.format
        self._url = config.url.get_secret_value()
        self._secret = config.secret.get_secret_value() if config.secret is not None else None
        self._render = renderer(config.format, link=config.link, teams_card=config.teams_card,
                                feishu_msg_type=config.feishu_msg_type)
        self._client = _http.HttpClient(timeout=config.timeout, verify_tls=config.verify_tls,
                                        ca_bundle=config.ca_bundle, limit=config.concurrency * 2)

    def request_for(self, item: Item, now: float | None = None
                    ) -> tuple[bytes, dict[str, str], dict[str, str]]:
        """Body, headers and query parameters for one item's message."""
        now = time.time() if now is None else now
        payload: dict[str, Any] = self._render(summarize(item), item)
        headers = {"Content-Type": "application/json"}
        params: dict[str, str] = {}
        if self._secret:
            if self.format == "feishu":
                ts = str(int(now))
                payload = {"timestamp": ts, "sign": feishu_sign(self._secret, ts), **payload}
            elif self.format == "dingtalk":
                ts = str(int(now * 1000))
                params = {"timestamp": ts, "sign": dingtalk_sign(self._secret, ts)}
        body = dumps(payload)
        if self._secret and self.format == "generic":
            ts = str(int(now))
            headers[TIMESTAMP_HEADER] = ts
            headers[SIGNATURE_HEADER] = generic_signature(self._secret.encode(), ts, body)
        return body, headers, params

    async def send(self, batch: Sequence[Item]) -> SendResult:
        """One message per item, in order (a channel reads top to bottom).

        The default batch size is one, so the sink's token bucket paces messages;
        with larger batches the remaining items are retried after the first failure
        rather than hammering a webhook that just said no.
        """
        results: list[SendResult] = []
        for index, item in enumerate(batch):
            result = await self._post(item)
            results.append(result)
            if not result.delivered and index + 1 < len(batch):
                rest = batch[index + 1:]
                results.append(SendResult.all_retry(rest, result.error or reasons.SERVER_ERROR,
                                                    retry_after=result.retry_after))
                break
        return _http.merge(results)

    async def _post(self, item: Item) -> SendResult:
        body, headers, params = self.request_for(item)
        result, response = await _http.send(self._client, "POST", self._url, [item], body=body,
                                            headers=headers, params=params or None)
        if response is None or not result.delivered:
            return result
        return self._app_result(item, response)

    def _app_result(self, item: Item, response: _http.HttpResponse) -> SendResult:
        """Read the 200-with-an-error answers some platforms give."""
        if self.format == "teams":
            text = response.text
            if text.startswith("Webhook message delivery failed"):
                if "429" in text:
                    return SendResult.all_retry([item], f"{reasons.THROTTLED}: {text[:200]}",
                                                retry_after=_APP_THROTTLE_DELAY)
                return SendResult.all_rejected([item], reasons.BAD_REQUEST, text[:500])
            return SendResult.all_delivered([item])
        if self.format not in _THROTTLE_CODES:
            return SendResult.all_delivered([item])
        try:
            answer = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            return SendResult.all_delivered([item])
        if not isinstance(answer, dict):
            return SendResult.all_delivered([item])
        code = answer.get("errcode", answer.get("code", answer.get("StatusCode", 0)))
        if not isinstance(code, int) or code == 0:
            return SendResult.all_delivered([item])
        text = _http.truncate(response.text)
        if code in _THROTTLE_CODES[self.format]:
            return SendResult.all_retry([item], f"{reasons.THROTTLED}: {self.format} code {code}",
                                        retry_after=_APP_THROTTLE_DELAY)
        if code in _AUTH_CODES[self.format]:
            return SendResult.all_rejected([item], reasons.FORBIDDEN,
                                           f"{self.format} code {code}: {text}")
        return SendResult.all_rejected([item], reasons.BAD_REQUEST,
                                       f"{self.format} code {code}: {text}")

    async def healthcheck(self) -> None:
        """Incoming webhooks have no side-effect-free probe; check what can be checked."""
        if not self._url.startswith(("https://", "http://")):
            raise ConfigError(f"webhook URL for {self.name} must be http(s)",
                              reason="config", component=self.name)
        if self.format == "generic" and self._secret is not None and not self._secret:
            raise ConfigError("the HMAC secret is empty", reason="config", component=self.name)

    async def aclose(self) -> None:
        await self._client.aclose()


def build(config: WebhookSinkConfig, ctx: RuntimeContext) -> WebhookSink:
    return WebhookSink(config)
