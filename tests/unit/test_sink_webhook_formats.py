"""Chat message formats: every platform shows the same facts in its own wire shape."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from pipeline.models import ActionStatus, Item
from sinks.config import WebhookSinkConfig
from sinks.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSink,
    dingtalk_sign,
    feishu_sign,
    verify_generic_signature,
)
from tests.sink_items import action, detection, incident

FORMATS = ["slack", "teams", "discord", "dingtalk", "feishu", "wecom", "generic"]
NOW = 1_763_627_400.0


def sink(fmt: str, **kw: Any) -> WebhookSink:
    return WebhookSink(WebhookSinkConfig(url=SecretStr("https://hooks.example.test/x"),
                                         format=fmt, **kw))


def rendered(fmt: str, item: Item, **kw: Any) -> tuple[dict[str, Any], dict[str, str],
                                                          dict[str, str]]:
    body, headers, params = sink(fmt, **kw).request_for(item, now=NOW)
    return json.loads(body), headers, params


def text_of(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False)


CONTAINED = incident(1, actions=(action(1), action(2, status=ActionStatus.AWAITING_APPROVAL)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_shows_the_facts_a_responder_needs(fmt: str) -> None:
    payload, _, _ = rendered(fmt, CONTAINED)
    text = text_of(payload)
    assert "Brute force on a vulnerable instance #1" in text
    assert "critical" in text
    assert "i-0abc123def4567890" in text
    assert "92" in text
    assert "CVE-2024-6387" in text  # a score reason
    assert "ec2.isolate" in text
    if fmt != "generic":
        assert "riposte rollback act-1" in text
        assert "riposte approve act-2" in text
    else:
        assert payload["actions"][0]["rollback"] == "riposte rollback act-1"
        assert payload["actions"][1]["status"] == "awaiting_approval"


@pytest.mark.parametrize(("fmt", "shape"), [
    ("slack", lambda p: p["blocks"][0]["type"] == "header" and "text" in p),
    ("teams", lambda p: p["@type"] == "MessageCard" and p["sections"][0]["facts"]),
    ("discord", lambda p: p["embeds"][0]["fields"] and p["allowed_mentions"] == {"parse": []}),
    ("dingtalk", lambda p: p["msgtype"] == "markdown" and p["markdown"]["title"]),
    ("feishu", lambda p: p["msg_type"] == "interactive"
     and p["card"]["header"]["template"] == "carmine"),
    ("wecom", lambda p: p["msgtype"] == "markdown" and p["markdown"]["content"]),
    ("generic", lambda p: p["item"]["id"] == "inc-1" and p["kind"] == "incident"),
])
def test_wire_shapes(fmt: str, shape: Any) -> None:
    payload, _, _ = rendered(fmt, CONTAINED)
    assert shape(payload)


def test_teams_adaptive_and_feishu_post_variants() -> None:
    adaptive, _, _ = rendered("teams", CONTAINED, teams_card="adaptive")
    content = adaptive["attachments"][0]["content"]
    assert content["type"] == "AdaptiveCard" and content["version"] == "1.4"
    post, _, _ = rendered("feishu", CONTAINED, feishu_msg_type="post")
    assert post["msg_type"] == "post"
    assert "Brute force" in post["content"]["post"]["en_us"]["title"]


@pytest.mark.parametrize("item", [detection(1), action(3), incident(4)],
                         ids=["detection", "action", "incident-without-actions"])
def test_other_item_kinds_render(item: Item) -> None:
    for fmt in FORMATS:
        payload, _, _ = rendered(fmt, item)
        assert item.id in text_of(payload)


def test_generic_hmac_signature_verifies() -> None:
    secret = "s3cr3t"
    body, headers, _ = sink("generic", secret=SecretStr(secret)).request_for(CONTAINED, now=NOW)
    assert headers[TIMESTAMP_HEADER] == str(int(NOW))
    assert headers[SIGNATURE_HEADER].startswith("sha256=")
    assert verify_generic_signature(secret.encode(), headers[TIMESTAMP_HEADER], body,
                                    headers[SIGNATURE_HEADER], now=NOW)
    assert not verify_generic_signature(b"other", headers[TIMESTAMP_HEADER], body,
                                        headers[SIGNATURE_HEADER], now=NOW)
    assert not verify_generic_signature(secret.encode(), headers[TIMESTAMP_HEADER],
                                        body + b" ", headers[SIGNATURE_HEADER], now=NOW)
    # A captured request replayed ten minutes later is refused.
    assert not verify_generic_signature(secret.encode(), headers[TIMESTAMP_HEADER], body,
                                        headers[SIGNATURE_HEADER], now=NOW + 600)


def test_dingtalk_and_feishu_signatures_follow_the_platforms_recipes() -> None:
    _, _, params = rendered("dingtalk", CONTAINED, secret=SecretStr("SECabc"))
    ts = params["timestamp"]
    assert ts == str(int(NOW * 1000))
    expected = base64.b64encode(hmac.new(b"SECabc", f"{ts}\nSECabc".encode(),
                                         hashlib.sha256).digest()).decode()
    assert params["sign"] == expected == dingtalk_sign("SECabc", ts)
    payload, _, _ = rendered("feishu", CONTAINED, secret=SecretStr("lark"))
    assert payload["timestamp"] == str(int(NOW))
    assert payload["sign"] == feishu_sign("lark", payload["timestamp"])
    assert payload["sign"] == base64.b64encode(hmac.new(
        f"{int(NOW)}\nlark".encode(), b"", hashlib.sha256).digest()).decode()


def test_webhook_url_is_a_secret() -> None:
    cfg = WebhookSinkConfig(url=SecretStr("https://hooks.slack.com/services/T/B/SECRET"),
                            format="slack")
    assert "SECRET" not in repr(cfg)
    assert "SECRET" not in cfg.model_dump_json()


@settings(max_examples=60, deadline=None)
@given(title=st.text(min_size=1, max_size=6000))
def test_platform_length_limits_hold_for_any_title(title: str) -> None:
    item = incident(1, title=title)
    slack, _, _ = rendered("slack", item)
    assert len(slack["blocks"][0]["text"]["text"]) <= 150
    discord, _, _ = rendered("discord", item)
    assert len(discord["embeds"][0]["title"]) <= 256
    assert all(len(f["value"]) <= 1024 for f in discord["embeds"][0]["fields"])
    wecom, _, _ = rendered("wecom", item)
    assert len(wecom["markdown"]["content"].encode()) <= 4096
    dingtalk, _, _ = rendered("dingtalk", item)
    assert len(dingtalk["markdown"]["title"]) <= 100
