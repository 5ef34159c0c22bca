"""The HTTP plumbing every HTTP sink shares: one session, TLS, and the retry decision.

Exception and status mapping lives here, once (httpx's and Vector's habit), so
Splunk, Datadog and the webhooks agree on what is transient and what is not:

- timeouts, connection errors, 408/425/429 and 5xx -> ``retry`` (with the intake's
  ``Retry-After`` / ``X-RateLimit-Reset`` hint);
- 400/404/413 and other 4xx -> ``rejected`` with the (truncated) response text;
- 401/403 -> ``rejected`` with reason ``unauthorized`` / ``forbidden``, which makes
  the fan-out stop the sink with a clear error instead of a retry storm.

TLS verification is on by default; ``ca_bundle`` trusts a private CA instead of
the system store, and turning verification off must be said explicitly.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import io
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from pipeline.errors import ConfigError
from pipeline.models import Item
from sinks import reasons
from sinks.base import Rejected, SendResult

MAX_RESPONSE_CHARS = 500
_STREAM_BODY_BYTES = 512 * 1024
# A Retry-After beyond this is treated as this: the retry budget decides anyway.
MAX_RETRY_AFTER = 3600.0


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class TransportError(Exception):
    """The request got no HTTP answer (timeout, refused, reset, TLS failure)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def ssl_setting(verify: bool, ca_bundle: str | None) -> ssl.SSLContext | bool:
    if not verify:
        return False
    if ca_bundle:
        try:
            return ssl.create_default_context(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the CA bundle {ca_bundle}: {exc}",
                              reason="config") from exc
    return True


class HttpClient:
    """One aiohttp session per sink, created inside the running loop on first use."""

    def __init__(self, *, timeout: float = 10.0, verify_tls: bool = True,
                 ca_bundle: str | None = None, limit: int = 64,
                 user_agent: str = "riposte") -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl = ssl_setting(verify_tls, ca_bundle)
        self._limit = limit
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    def _ensure(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout,
                headers={"User-Agent": self._user_agent})
        return self._session

    async def request(self, method: str, url: str, *, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None,
                      params: Mapping[str, str] | None = None) -> HttpResponse:
        """Send one request; raises ``TransportError`` when no HTTP answer came back."""
        session = self._ensure()
        # aiohttp writes a large ``bytes`` body in one go and warns that it may block the
        # loop; a file-like payload is streamed in chunks instead.
        data: bytes | io.BytesIO | None = body
        if body is not None and len(body) > _STREAM_BODY_BYTES:
            data = io.BytesIO(body)
        try:
            async with session.request(method, url, data=data, headers=headers,
                                       params=params) as resp:
                payload = await resp.read()
                return HttpResponse(resp.status, dict(resp.headers), payload)
        except TimeoutError as exc:
            raise TransportError(reasons.TIMEOUT, f"{method} {safe_url(url)} timed out") from exc
        except aiohttp.ClientError as exc:
            raise TransportError(reasons.CONNECTION,
                                 f"{method} {safe_url(url)}: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise TransportError(reasons.CONNECTION,
                                 f"{method} {safe_url(url)}: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
            # Let the connector's transports finish closing before the loop goes away.
            await asyncio.sleep(0)
        self._session = None


def safe_url(url: str) -> str:
    """A URL fit for logs: scheme, host and path, never the query (webhook keys live there)."""
    head, _, _ = url.partition("?")
    scheme, sep, rest = head.partition("://")
    host, _, path = rest.partition("/")
    # Webhook paths often are the credential (Slack's /services/T../B../secret).
    shown = "/".join(path.split("/")[:2])
    return f"{scheme}{sep}{host}/{shown}" if sep else head


def retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the intake asked us to wait: ``Retry-After`` (seconds or date) or a reset."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw = lowered.get("retry-after")
    if raw is not None:
        raw = raw.strip()
        try:
            return _clamp(float(raw))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            current = time.time() if now is None else now
            return _clamp(when.timestamp() - current)
    # Datadog: X-RateLimit-Reset is the seconds until the current period ends.
    reset = lowered.get("x-ratelimit-reset")
    if reset is not None:
        try:
            return _clamp(float(reset))
        except ValueError:
            return None
    return None


def _clamp(seconds: float) -> float:
    return max(0.0, min(MAX_RETRY_AFTER, seconds))


def truncate(text: str, limit: int = MAX_RESPONSE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


_REJECT_REASONS = {
    400: reasons.BAD_REQUEST,
    401: reasons.UNAUTHORIZED,
    403: reasons.FORBIDDEN,
    404: reasons.NOT_FOUND,
    413: reasons.PAYLOAD_TOO_LARGE,
}
_RETRY_STATUSES = frozenset({408, 425, 429})


def is_success(status: int) -> bool:
    return 200 <= status < 300


def classify(batch: Sequence[Item], response: HttpResponse) -> SendResult:
    """The outcome for every item of ``batch`` from one HTTP answer about all of them."""
    status = response.status
    if is_success(status):
        return SendResult.all_delivered(batch)
    if status in _RETRY_STATUSES or status >= 500:
        reason = reasons.THROTTLED if status == 429 else reasons.SERVER_ERROR
        return SendResult.all_retry(batch, f"{reason}: HTTP {status}",
                                    retry_after=retry_after(response.headers))
    reason = _REJECT_REASONS.get(status, f"http_{status}")
    text = truncate(response.text)
    return SendResult(rejected=tuple(Rejected(i, reason, f"HTTP {status}: {text}")
                                     for i in batch), error=reason)


def classify_error(batch: Sequence[Item], exc: TransportError) -> SendResult:
    return SendResult.all_retry(batch, f"{exc.reason}: {exc}")


async def send(client: HttpClient, method: str, url: str, batch: Sequence[Item], *,
               body: bytes | None = None, headers: Mapping[str, str] | None = None,
               params: Mapping[str, str] | None = None
               ) -> tuple[SendResult, HttpResponse | None]:
    """One request for ``batch``; the classified result and the answer (None if none came)."""
    try:
        response = await client.request(method, url, body=body, headers=headers, params=params)
    except TransportError as exc:
        return classify_error(batch, exc), None
    return classify(batch, response), response


def merge(results: Sequence[SendResult]) -> SendResult:
    """Several requests' results about disjoint parts of one batch, as one result."""
    if len(results) == 1:
        return results[0]
    hints = [r.retry_after for r in results if r.retry_after is not None]
    errors = [r.error for r in results if r.error]
    return SendResult(
        delivered=tuple(i for r in results for i in r.delivered),
        retry=tuple(i for r in results for i in r.retry),
        rejected=tuple(x for r in results for x in r.rejected),
        retry_after=max(hints) if hints else None,
        error=errors[0] if errors else "",
    )


# Compressing a large body on the event loop would stall every other task for milliseconds.
_THREAD_COMPRESS_BYTES = 256 * 1024


async def gzip_body(body: bytes) -> bytes:
    """gzip at level 5; bodies over 256 KiB are compressed off the event loop."""
    if len(body) > _THREAD_COMPRESS_BYTES:
        return await asyncio.to_thread(gzip.compress, body, 5)
    return gzip.compress(body, 5)


async def post_chunks(chunks: Sequence[tuple[list[Item], bytes]], rejected: Sequence[Rejected],
                      post: Callable[[list[Item], bytes], Awaitable[SendResult]]) -> SendResult:
    """Post every chunk concurrently and merge the outcomes with the entries refused
    before sending (too large for the intake)."""
    results = [SendResult(rejected=tuple(rejected),
                          error=reasons.ENTRY_TOO_LARGE if rejected else "")]
    if chunks:
        results.extend(await asyncio.gather(*(post(items, body) for items, body in chunks)))
    return merge(results)

