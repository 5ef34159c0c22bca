"""`riposte check-config FILE --resolve-secrets` against the environment and moto's Secrets
Manager: every unresolvable reference is named with its path, no value is ever printed."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.aws import AwsClients
from pipeline.config import parse_config
from pipeline.errors import ConfigError
from pipeline.secrets import check_secrets, resolve_secrets

pytestmark = pytest.mark.integration

ENV_VALUE = "env-token-Zq81x"
SM_VALUE = "sm-token-Kp27y"


def riposte(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                          text=True, timeout=120, env=env, check=False)


@pytest.fixture
def secret_name(boto: Any) -> str:
    name = f"riposte/{uuid.uuid4().hex[:8]}"
    boto("secretsmanager").create_secret(
        Name=name, SecretString=orjson.dumps({"token": SM_VALUE}).decode())
    return name


def write_config(tmp_path: Path, refs: list[str]) -> Path:
    path = tmp_path / "riposte.toml"
    path.write_text("".join(
        f'[[sinks]]\ntype = "splunk_hec"\nname = "splunk-{i}"\n'
        f'url = "https://splunk.example:8088"\ntoken = "{ref}"\n\n'
        for i, ref in enumerate(refs)))
    return path


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIPOSTE_TEST_")}
    env.update(extra)
    return env


def test_every_reference_resolves(moto_server: str, secret_name: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, ["env:RIPOSTE_TEST_HEC", f"secretsmanager:{secret_name}#token",
                                     "a-literal-token"])
    done = riposte("check-config", str(config), "--resolve-secrets",
                   env=env_with(RIPOSTE_TEST_HEC=ENV_VALUE))
    assert done.returncode == 0, done.stderr
    assert f"ok: {config} is valid; 2 secret reference(s) resolved" in done.stderr
    printed = orjson.loads(done.stdout)
    assert [s["token"] for s in printed["sinks"]] == ["**********"] * 3
    for value in (ENV_VALUE, SM_VALUE, "a-literal-token"):
        assert value not in done.stdout + done.stderr


def test_each_unresolvable_reference_is_reported_with_its_path(
        moto_server: str, secret_name: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, [
        "env:RIPOSTE_TEST_HEC",                       # set: fine
        "env:RIPOSTE_TEST_UNSET",                     # not set
        f"secretsmanager:{secret_name}#token",        # present: fine
        "secretsmanager:riposte/no-such-secret",      # missing
        f"secretsmanager:{secret_name}#no_such_key",  # present, but not that key
    ])
    done = riposte("check-config", str(config), "--resolve-secrets",
                   env=env_with(RIPOSTE_TEST_HEC=ENV_VALUE))
    assert done.returncode == 2
    assert done.stdout == "", "nothing is printed as if it were valid"
    lines = done.stderr.splitlines()
    assert lines == [
        f"riposte: {config}: config.sinks[1].token (env:RIPOSTE_TEST_UNSET): "
        "environment variable RIPOSTE_TEST_UNSET is not set",
        f"riposte: {config}: config.sinks[3].token (secretsmanager:riposte/no-such-secret): "
        "cannot read secret 'riposte/no-such-secret' from Secrets Manager: "
        "ResourceNotFoundException",
        f"riposte: {config}: config.sinks[4].token (secretsmanager:{secret_name}#no_such_key): "
        f"secret '{secret_name}' has no JSON key 'no_such_key'",
        f"riposte: {config}: 3 secret reference(s) cannot be resolved (2 resolved)",
    ]
    for value in (ENV_VALUE, SM_VALUE):
        assert value not in done.stdout + done.stderr

    # Without the flag nothing is resolved, as before: the file itself is valid.
    plain = riposte("check-config", str(config), env=env_with())
    assert plain.returncode == 0, plain.stderr
    assert f"ok: {config} is valid\n" == plain.stderr


def test_references_in_nested_config_are_checked(moto_server: str, tmp_path: Path) -> None:
    path = tmp_path / "riposte.toml"
    path.write_text("""
[containment.roles."222222222222"]
role_arn = "arn:aws:iam::222222222222:role/riposte-responder"
external_id = "env:RIPOSTE_TEST_EXTERNAL_ID"
""")
    done = riposte("check-config", str(path), "--resolve-secrets", env=env_with())
    assert done.returncode == 2
    assert ("config.containment.roles.222222222222.external_id "
            "(env:RIPOSTE_TEST_EXTERNAL_ID): environment variable RIPOSTE_TEST_EXTERNAL_ID "
            "is not set") in done.stderr
    done = riposte("check-config", str(path), "--resolve-secrets",
                   env=env_with(RIPOSTE_TEST_EXTERNAL_ID="ext-id-Wm55"))
    assert done.returncode == 0, done.stderr
    assert "ext-id-Wm55" not in done.stdout + done.stderr


async def test_run_names_every_broken_reference_at_once(moto_server: str, secret_name: str
                                                        ) -> None:
    config = parse_config({"sinks": [
        {"type": "splunk_hec", "name": f"s{i}", "url": "https://splunk.example:8088",
         "token": ref}
        for i, ref in enumerate(["env:RIPOSTE_TEST_A", "secretsmanager:riposte/absent",
                                 f"secretsmanager:{secret_name}#token"])]}, env={})
    aws = AwsClients("us-east-1")
    try:
        with pytest.raises(ConfigError) as info:
            await resolve_secrets(config, aws, env={})
        check = await check_secrets(config, aws, env={})
    finally:
        await aws.aclose()
    message = str(info.value)
    assert message.startswith("2 secret references cannot be resolved:")
    assert "config.sinks[0].token (env:RIPOSTE_TEST_A)" in message
    assert "config.sinks[1].token (secretsmanager:riposte/absent)" in message
    assert SM_VALUE not in message
    assert check.resolved == 1
    assert [p.path for p in check.problems] == ["config.sinks[0].token",
                                                "config.sinks[1].token"]
