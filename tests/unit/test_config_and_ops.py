"""Configuration loading, env overrides, secrets, log scrubbing, /metrics and the probes."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr

from pipeline import logs
from pipeline.aws import AwsClients
from pipeline.config import apply_env_overrides, load_config, parse_config
from pipeline.errors import ConfigError
from pipeline.ops_server import OpsServer
from pipeline.secrets import resolve_secrets

SPLUNK = {"type": "splunk_hec", "name": "splunk", "url": "https://splunk.example:8088",
          "token": "hec-token-123456"}


@pytest.mark.parametrize(("data", "fragment"), [
    ({"servce": {}}, "servce: unknown key"),
    ({"service": {"concurrency": 0}}, "service.concurrency"),
    ({"sources": [{"type": "sqs"}]}, "queue_url"),
    ({"sources": [{"type": "carrier-pigeon"}]}, "sources.0"),
    ({"sinks": [{"type": "jsonl", "nmae": "x"}]}, "nmae: unknown key"),
    ({"sinks": [{"type": "jsonl", "name": "a"}, {"type": "jsonl", "name": "a"}]},
     "duplicate sink name"),
    ({"containment": {"mode": "yolo"}}, "containment.mode"),
])
def test_bad_config_is_a_precise_error(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, origin="riposte.toml", env={})
    assert "riposte.toml" in str(info.value)
    assert fragment in str(info.value)


def test_env_overrides_nest_index_lists_and_parse_json() -> None:
    data: dict[str, Any] = {"sources": [{"type": "sqs", "queue_url": "a"}],
                            "service": {"concurrency": 4}}
    merged = apply_env_overrides(data, {
        "RIPOSTE__SERVICE__CONCURRENCY": "16",
        "RIPOSTE__SOURCES__0__QUEUE_URL": "https://queue",
        "RIPOSTE__TRUST__ACCOUNTS": '["111111111111"]',
        "UNRELATED": "x",
    })
    config = parse_config(merged, env={})
    assert config.service.concurrency == 16
    assert config.sources[0].queue_url == "https://queue"  # type: ignore[union-attr]
    assert config.trust.accounts == ["111111111111"]
    assert data["service"]["concurrency"] == 4, "the file's data is not modified"


def test_load_config_reports_missing_files_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[service\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})


def test_check_config_masks_secrets_and_exits_2_on_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[[sinks]]\ntype = "splunk_hec"\nname = "splunk"\n'
                    'url = "https://splunk.example:8088"\ntoken = "hec-token-123456"\n')
    done = subprocess.run([sys.executable, "-m", "pipeline", "check-config", str(good)],
                          capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert b"hec-token-123456" not in done.stdout + done.stderr
    printed = orjson.loads(done.stdout)
    assert printed["sinks"][0]["token"] == "**********"
    bad = tmp_path / "bad.toml"
    bad.write_text("[servce]\n")
    done = subprocess.run([sys.executable, "-m", "pipeline", "check-config", str(bad)],
                          capture_output=True, check=False)
    assert done.returncode == 2
    assert b"servce: unknown key" in done.stderr


async def test_secrets_resolve_from_env_and_secrets_manager(moto_server: str, boto: Any) -> None:
    name = f"riposte/{uuid.uuid4().hex[:8]}"
    boto("secretsmanager").create_secret(
        Name=name, SecretString=orjson.dumps({"token": "from-secrets-manager"}).decode())
    config = parse_config({"sinks": [
        {**SPLUNK, "name": "a", "token": f"secretsmanager:{name}#token"},
        {**SPLUNK, "name": "b", "token": "env:HEC_TOKEN"},
    ]}, env={})
    aws = AwsClients("us-east-1")
    try:
        resolved = await resolve_secrets(config, aws, env={"HEC_TOKEN": "from-the-environment"})
        with pytest.raises(ConfigError, match="MISSING_TOKEN"):
            await resolve_secrets(parse_config({"sinks": [
                {**SPLUNK, "token": "env:MISSING_TOKEN"}]}, env={}), aws, env={})
        with pytest.raises(ConfigError, match="cannot read secret"):
            await resolve_secrets(parse_config({"sinks": [
                {**SPLUNK, "token": "secretsmanager:nope"}]}, env={}), aws, env={})
    finally:
        await aws.aclose()
    tokens = [s.token.get_secret_value() for s in resolved.sinks]  # type: ignore[union-attr]
    assert tokens == ["from-secrets-manager", "from-the-environment"]
    assert isinstance(resolved.sinks[0].token, SecretStr)  # type: ignore[union-attr]
    assert logs.scrub("token=from-secrets-manager") == "token=**********"


def test_json_logs_carry_fields_and_never_a_secret(caplog: pytest.LogCaptureFixture) -> None:
    logs.register_secret("s3cr3t-value")
    record = logging.LogRecord("riposte.test", logging.WARNING, __file__, 1,
                               "sending with s3cr3t-value", None, None)
    record.sink = "splunk"
    record.header = "Splunk s3cr3t-value"
    line = logs.JsonFormatter().format(record)
    entry = orjson.loads(line)
    assert entry["level"] == "warning" and entry["sink"] == "splunk"
    assert "s3cr3t-value" not in line
    assert "**********" in entry["msg"]


async def test_ops_server_serves_metrics_and_probes() -> None:
    ready = {"value": False}
    server = OpsServer("127.0.0.1", 0, lambda: ready["value"])
    await server.start()
    base = f"http://127.0.0.1:{server.bound_port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 503
            ready["value"] = True
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200
            async with http.get(f"{base}/metrics") as r:
                body = await r.text()
                assert r.status == 200
                assert "riposte_received_messages" in body
                assert "riposte_stage_seconds" in body
    finally:
        await server.aclose()
