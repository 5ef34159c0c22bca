"""The one place HTTP answers become retry / reject decisions, table-driven."""

from __future__ import annotations

import email.utils
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import ConfigError
from sinks import _http, reasons
from sinks._http import HttpResponse, classify, retry_after, safe_url
from tests.sink_items import incident

BATCH = [incident(1), incident(2)]


@pytest.mark.parametrize(("status", "outcome", "reason"), [
    (200, "delivered", ""),
    (202, "delivered", ""),
    (204, "delivered", ""),
    (400, "rejected", reasons.BAD_REQUEST),
    (401, "rejected", reasons.UNAUTHORIZED),
    (403, "rejected", reasons.FORBIDDEN),
    (404, "rejected", reasons.NOT_FOUND),
    (410, "rejected", "http_410"),
    (413, "rejected", reasons.PAYLOAD_TOO_LARGE),
    (408, "retry", reasons.SERVER_ERROR),
    (429, "retry", reasons.THROTTLED),
    (500, "retry", reasons.SERVER_ERROR),
    (502, "retry", reasons.SERVER_ERROR),
    (503, "retry", reasons.SERVER_ERROR),
])
def test_status_classification(status: int, outcome: str, reason: str) -> None:
    result = classify(BATCH, HttpResponse(status, {}, b'{"text":"answer"}'))
    assert len(getattr(result, outcome)) == 2
    others = {"delivered", "retry", "rejected"} - {outcome}
    assert all(not getattr(result, o) for o in others)
    if outcome == "rejected":
        assert {r.reason for r in result.rejected} == {reason}
        assert all(f"HTTP {status}" in r.response and "answer" in r.response
                   for r in result.rejected)
    if outcome == "retry":
        assert result.error.startswith(reason + ":")


def test_rejection_response_is_truncated() -> None:
    result = classify(BATCH, HttpResponse(400, {}, b"x" * 10_000))
    assert len(result.rejected[0].response) < 600


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Retry-After": "7"}, 7.0),
    ({"retry-after": "2.5"}, 2.5),
    ({"X-RateLimit-Reset": "13"}, 13.0),
    ({"Retry-After": "-4"}, 0.0),
    ({"Retry-After": "999999"}, _http.MAX_RETRY_AFTER),
    ({"Retry-After": "soon"}, None),
    ({}, None),
])
def test_retry_after_forms(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after(headers) == expected


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after({"Retry-After": header}, now=now) == pytest.approx(30, abs=1)


def test_429_carries_the_hint() -> None:
    result = classify(BATCH, HttpResponse(429, {"Retry-After": "11"}, b""))
    assert result.retry_after == 11.0


@pytest.mark.parametrize(("url", "hidden"), [
    ("https://hooks.slack.com/services/T000/B000/XXXXSECRET", "XXXXSECRET"),
    ("https://oapi.dingtalk.com/robot/send?access_token=SECRET123", "SECRET123"),
    ("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=KEY456", "KEY456"),
])
def test_urls_in_logs_hide_their_credentials(url: str, hidden: str) -> None:
    shown = safe_url(url)
    assert hidden not in shown
    assert shown.startswith("https://")


@given(st.integers(min_value=100, max_value=599), st.binary(max_size=300))
def test_every_status_has_exactly_one_outcome_per_item(status: int, body: bytes) -> None:
    result = classify(BATCH, HttpResponse(status, {}, body))
    assert len(result.delivered) + len(result.retry) + len(result.rejected) == len(BATCH)


async def test_transport_errors_are_retried() -> None:
    client = _http.HttpClient(timeout=1.0)
    try:
        # Port 9 (discard) on loopback is closed: connection refused.
        result, response = await _http.send(client, "POST", "http://127.0.0.1:9/", BATCH,
                                            body=b"{}")
    finally:
        await client.aclose()
    assert response is None
    assert len(result.retry) == 2
    assert result.error.startswith(reasons.CONNECTION)


def test_a_missing_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA bundle"):
        _http.HttpClient(ca_bundle=str(tmp_path / "missing.pem"))
    assert _http.ssl_setting(False, None) is False
    assert _http.ssl_setting(True, None) is True
