"""Local stand-ins for HTTP intakes (Splunk HEC, Datadog Logs, chat webhooks) on 127.0.0.1.

Each fake answers like the real intake does, per its documentation: the auth
header it wants and the status code and body it gives when the header is missing
or wrong, its size limits, and its success answer. Each one records every request
it got (after gunzipping) so a test can assert exactly what arrived, and can be
scripted to misbehave: fail the next N requests with a status (503, 429 with
``Retry-After``...), reset connections, answer slowly, or be down (every request
reset) until told otherwise.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import hashlib
import hmac
import ipaddress
import json
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from aiohttp import web


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int = 0


RECORDED = web.RequestKey("recorded", Recorded)


@dataclass
class Fault:
    status: int = 503
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False  # drop the connection instead of answering
    delay: float = 0.0


class FakeIntake:
    """An aiohttp server with recording and scripted faults; subclasses add the routes."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.faults: deque[Fault] = deque()
        self.down = False
        self.delay = 0.0
        self._runner: web.AppRunner | None = None
        self.port = 0
        # Serve HTTPS with this context (see ``self_signed``) instead of plain HTTP.
        self.ssl_context: ssl.SSLContext | None = None

    # --- scripting --------------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 503, *, body: str = "",
                  headers: dict[str, str] | None = None) -> None:
        for _ in range(n):
            self.faults.append(Fault(status, body, dict(headers or {})))

    def reset_next(self, n: int) -> None:
        for _ in range(n):
            self.faults.append(Fault(reset=True))

    def requests_to(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    # --- serving ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        # aiohttp's server already inflates a gzip Content-Encoding; this handles a
        # client that gzips without saying so (which real intakes would refuse).
        raw = await request.read()
        if request.headers.get("Content-Encoding") == "gzip" and raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        rec = Recorded(request.method, request.path, dict(request.query),
                       dict(request.headers), raw)
        self.requests.append(rec)
        request[RECORDED] = rec
        if self.delay:
            await asyncio.sleep(self.delay)
        fault = self.faults.popleft() if self.faults else None
        if self.down or (fault is not None and fault.reset):
            assert request.transport is not None
            request.transport.abort()
            rec.status = -1
            return web.Response(status=500)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            rec.status = fault.status
            return web.Response(status=fault.status, text=fault.body, headers=fault.headers)
        response = await handler(request)
        rec.status = response.status
        return response

    async def start(self) -> Self:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _json(status: int, payload: Any) -> web.Response:
    return web.json_response(payload, status=status)


class SplunkHecFake(FakeIntake):
    """Splunk HEC: ``Authorization: Splunk <token>``, concatenated JSON events, indexer ack.

    Answers as Splunk does: 401 code 2 without a token, 403 code 4 with a wrong one,
    400 code 5 for an empty body, 400 code 6 for bad JSON, 400 code 12 for an event
    without ``event``, 413 above ``max_content_length``, 400 code 10 when ack is on and
    the channel header is missing.
    """

    def __init__(self, token: str = "hec-token", *, max_content_length: int = 1_000_000,
                 ack: bool = False) -> None:
        super().__init__()
        self.token = token
        self.max_content_length = max_content_length
        self.ack = ack
        self.events: list[dict[str, Any]] = []
        self._pending_events: dict[int, list[dict[str, Any]]] = {}
        self._next_ack = 0
        # Polls answered "not yet" before an ackId is reported indexed; None = never.
        self.ack_after_polls: int | None = 0
        self._polls: dict[int, int] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/services/collector/event", self._event)
        app.router.add_post("/services/collector/ack", self._ack)
        app.router.add_get("/services/collector/health", self._health)

    def _auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization")
        if not header:
            return _json(401, {"text": "Token is required", "code": 2})
        if header != f"Splunk {self.token}":
            return _json(403, {"text": "Invalid token", "code": 4})
        return None

    async def _health(self, request: web.Request) -> web.Response:
        return _json(200, {"text": "HEC is healthy", "code": 17})

    async def _event(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        rec = request[RECORDED]
        body = rec.body
        if self.ack and not request.headers.get("X-Splunk-Request-Channel"):
            return _json(400, {"text": "Data channel is missing", "code": 10})
        if not body.strip():
            return _json(400, {"text": "No data", "code": 5})
        if len(body) > self.max_content_length:
            return _json(413, {"text": "Content too large", "code": 413})
        decoder = json.JSONDecoder()
        text = body.decode()
        pos, events = 0, []
        try:
            while pos < len(text):
                while pos < len(text) and text[pos].isspace():
                    pos += 1
                if pos >= len(text):
                    break
                obj, pos = decoder.raw_decode(text, pos)
                if not isinstance(obj, dict) or "event" not in obj:
                    return _json(400, {"text": "Event field is required", "code": 12})
                events.append(obj)
        except json.JSONDecodeError:
            return _json(400, {"text": "Invalid data format", "code": 6})
        if not self.ack:
            self.events.extend(events)
            return _json(200, {"text": "Success", "code": 0})
        ack_id = self._next_ack
        self._next_ack += 1
        self._pending_events[ack_id] = events
        return _json(200, {"text": "Success", "code": 0, "ackId": ack_id})

    async def _ack(self, request: web.Request) -> web.Response:
        denied = self._auth(request)
        if denied is not None:
            return denied
        if not request.query.get("channel") and not request.headers.get(
                "X-Splunk-Request-Channel"):
            return _json(400, {"text": "Data channel is missing", "code": 10})
        asked = json.loads(request[RECORDED].body).get("acks", [])
        answer: dict[str, bool] = {}
        for ack_id in asked:
            polls = self._polls[ack_id] = self._polls.get(ack_id, 0) + 1
            done = self.ack_after_polls is not None and polls > self.ack_after_polls
            if done and ack_id in self._pending_events:
                self.events.extend(self._pending_events.pop(ack_id))
            answer[str(ack_id)] = done
        return _json(200, {"acks": answer})


class DatadogFake(FakeIntake):
    """Datadog Logs v2 intake plus the key-validation API, with the documented limits.

    ``DD-API-KEY`` missing or wrong -> 403; payload above 5 MB (uncompressed) -> 413;
    more than 1,000 entries -> 400. An entry above 1 MB is accepted and truncated, as
    Datadog does, and noted in ``violations`` so tests can assert none were sent.
    """

    MAX_PAYLOAD = 5_000_000
    MAX_ENTRIES = 1000
    MAX_ENTRY = 1_000_000

    def __init__(self, api_key: str = "dd-api-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.entries: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.payload_sizes: list[int] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v2/logs", self._logs)
        app.router.add_get("/api/v1/validate", self._validate)

    async def _validate(self, request: web.Request) -> web.Response:
        if request.headers.get("DD-API-KEY") != self.api_key:
            return _json(403, {"errors": ["Forbidden"]})
        return _json(200, {"valid": True})

    async def _logs(self, request: web.Request) -> web.Response:
        if request.headers.get("DD-API-KEY") != self.api_key:
            return _json(403, {"errors": ["Forbidden"]})
        body: bytes = request[RECORDED].body
        self.payload_sizes.append(len(body))
        if len(body) > self.MAX_PAYLOAD:
            self.violations.append(f"payload of {len(body)} bytes")
            return _json(413, {"errors": ["Payload too large"]})
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            return _json(400, {"errors": ["Malformed JSON"]})
        entries = data if isinstance(data, list) else [data]
        if len(entries) > self.MAX_ENTRIES:
            self.violations.append(f"{len(entries)} entries")
            return _json(400, {"errors": ["Too many entries in the array"]})
        for entry in entries:
            size = len(json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode())
            if size > self.MAX_ENTRY:
                self.violations.append(f"entry of {size} bytes")
                self.entries.append({**entry, "riposte": "<truncated>"})
                continue
            self.entries.append(entry)
        return _json(202, {})


class WebhookFake(FakeIntake):
    """An incoming-webhook receiver for any path.

    With ``secret`` set it verifies the generic HMAC signature
    (``X-Riposte-Signature: sha256=...`` over ``"<X-Riposte-Timestamp>." + body``) and
    answers 401 when it is missing, wrong or older than five minutes. ``answer`` gives
    the platform's success body (Slack ``ok``, DingTalk ``{"errcode":0}``...).
    """

    def __init__(self, *, secret: str | None = None, answer: str = "ok",
                 status: int = 200) -> None:
        super().__init__()
        self.secret = secret
        self.answer = answer
        self.status = status
        self.messages: list[Any] = []
        self.bad_signatures = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/{tail:.*}", self._post)

    def signature_ok(self, rec: Recorded) -> bool:
        assert self.secret is not None
        ts = rec.headers.get("X-Riposte-Timestamp", "")
        sig = rec.headers.get("X-Riposte-Signature", "")
        try:
            fresh = abs(time.time() - float(ts)) <= 300
        except ValueError:
            return False
        expected = "sha256=" + hmac.new(self.secret.encode(), ts.encode() + b"." + rec.body,
                                        hashlib.sha256).hexdigest()
        return fresh and hmac.compare_digest(expected, sig)

    async def _post(self, request: web.Request) -> web.Response:
        rec = request[RECORDED]
        if self.secret is not None and not self.signature_ok(rec):
            self.bad_signatures += 1
            return web.Response(status=401, text="invalid signature")
        try:
            self.messages.append(json.loads(rec.body))
        except json.JSONDecodeError:
            return web.Response(status=400, text="invalid_payload")
        return web.Response(status=self.status, text=self.answer)


def self_signed(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for 127.0.0.1 and the PEM of its (self-signed) certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "riposte-test-intake")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path = directory / "intake.pem"
    key_path = directory / "intake.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path
