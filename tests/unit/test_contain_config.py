"""Containment configuration: what loads, and what is refused at load time."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.actions import registry
from pipeline.actions.config import ACTION_KINDS, ContainmentConfig, stricter
from pipeline.config import parse_config
from pipeline.errors import ConfigError

BASE: dict[str, Any] = {"accounts": ["123456789012"], "regions": ["us-east-1"]}


def policy(**kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": "p", "actions": [{"kind": "ec2.isolate"}]}
    out.update(kw)
    return out


def test_empty_config_is_valid_and_safe() -> None:
    cfg = ContainmentConfig()
    assert cfg.mode == "dry-run" and not cfg.policies
    assert cfg.exempt_tag_key == "riposte:exempt"
    assert cfg.rate_limit.actions_per_minute == 5


def test_a_full_config_loads() -> None:
    cfg = parse_config({"containment": {
        **BASE, "mode": "enforce",
        "policies": [
            {"name": "ec2", "match": {"finding_types": ["UnauthorizedAccess:EC2/*"],
                                      "min_score": 70, "resource_types": ["ec2.instance"],
                                      "tags": {"env": "prod*"}},
             "actions": [{"kind": "ec2.snapshot"}, {"kind": "ec2.isolate",
                                                   "settings": {"temporary_open_first": True}},
                         {"kind": "notify"}]},
            {"name": "keys", "mode": "approve", "match": {"detection_ids": ["ct.*"]},
             "actions": [{"kind": "iam.deactivate_access_key"}]},
        ],
        "roles": {"222222222222": {"role_arn": "arn:aws:iam::222222222222:role/r",
                                   "external_id": "s3cret"}},
        "rate_limit": {"actions_per_minute": 5, "per_resource_type": {"ec2.instance": 2}},
        "quarantine": {"admin_cidrs": ["10.0.0.0/24"], "nacl_rule_min": 10,
                       "nacl_rule_max": 20},
    }}, env={})
    c = cfg.containment
    assert c.policy_mode(c.policies[1]) == "approve"
    assert c.enabled_kinds() == ["ec2.isolate", "ec2.snapshot", "iam.deactivate_access_key",
                                 "notify"]
    assert "s3cret" not in repr(c.roles)


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("unknown action", {"policies": [policy(actions=[{"kind": "ec2.nuke"}])]},
     "unknown action kind"),
    ("missing setting", {"policies": [policy(actions=[{"kind": "dns.block_domain"}])]},
     "firewall_domain_list_id"),
    ("unknown setting", {"policies": [policy(actions=[{"kind": "ec2.isolate",
                                                       "settings": {"tempory": True}}])]},
     "tempory"),
    ("type never matches action", {"policies": [policy(match={"resource_types": ["s3.bucket"]})]},
     "could never run"),
    ("unknown resource type", {"policies": [policy(match={"resource_types": ["ec2.instanse"]})]},
     "never matches"),
    ("score out of range", {"policies": [policy(match={"min_score": 101})]}, "min_score"),
    ("empty pattern", {"policies": [policy(match={"finding_types": [""]})]}, "never match"),
    ("account outside allowlist", {"policies": [policy(match={"accounts": ["999999999999"]})]},
     "could never match"),
    ("looser policy", {"mode": "dry-run", "policies": [policy(mode="enforce")]}, "looser"),
    ("no actions", {"policies": [policy(actions=[])]}, "actions"),
    ("duplicate names", {"policies": [policy(), policy()]}, "duplicate policy"),
    ("snapshot after isolate", {"policies": [policy(actions=[{"kind": "ec2.isolate"},
                                                             {"kind": "ec2.snapshot"}])]},
     "evidence first"),
    ("role in another account", {"roles": {"222222222222": {
        "role_arn": "arn:aws:iam::333333333333:role/r"}}}, "not a role in account"),
    ("bad cidr", {"quarantine": {"admin_cidrs": ["10.0.0.1/24"]}}, "admin cidr"),
    ("bad nacl range", {"quarantine": {"nacl_rule_min": 50, "nacl_rule_max": 10}}, "nacl"),
    ("typo key", {"kill_swich": True}, "kill_swich"),
]


@pytest.mark.parametrize(("name", "data", "needle"), BAD, ids=[b[0] for b in BAD])
def test_invalid_configs_fail_at_load(name: str, data: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        ContainmentConfig.model_validate({**BASE, "mode": "enforce", **data})
    assert needle in str(err.value)


def test_config_errors_reach_the_loader_as_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown action kind"):
        parse_config({"containment": {"policies": [policy(actions=[{"kind": "x"}])]}}, env={})


def test_mode_strictness() -> None:
    assert stricter("enforce", "approve") == "approve"
    assert stricter("dry-run", "enforce") == "dry-run"
    assert stricter("observe", "dry-run") == "observe"


def test_every_declared_kind_has_exactly_one_implementation() -> None:
    assert registry.kinds() == sorted(ACTION_KINDS)
    for kind in ACTION_KINDS:
        assert registry.get(kind).kind == kind
        assert registry.get(kind).resource_types == ACTION_KINDS[kind].resource_types


def test_permissions_for_enabled_kinds() -> None:
    perms = registry.all_permissions(["iam.deactivate_access_key", "s3.block_public_access"])
    assert perms == sorted(perms)
    assert "iam:UpdateAccessKey" in perms and "s3:PutBucketPublicAccessBlock" in perms
    assert not any(p.startswith("ec2:") for p in perms)
    assert registry.all_permissions(["notify"]) == []
    every = registry.all_permissions(registry.kinds())
    assert {"ec2:ModifyInstanceAttribute", "ec2:CreateNetworkAclEntry",
            "iam:PutRolePolicy"} <= set(every)


def test_the_example_policy_file_loads() -> None:
    from pathlib import Path

    from pipeline.config import load_config

    example = Path(__file__).resolve().parents[2] / "examples" / "containment.toml"
    c = load_config(example, env={}).containment
    assert [p.name for p in c.policies] == ["isolate-compromised-instances",
                                            "disable-leaked-keys", "close-public-buckets"]
    assert c.policy_mode(c.policies[1]) == "approve"


async def test_an_unresolved_external_id_is_never_sent() -> None:
    from pipeline.actions.credentials import CredentialBroker
    from pipeline.aws import AwsClients

    cfg = ContainmentConfig.model_validate({"roles": {"222222222222": {
        "role_arn": "arn:aws:iam::222222222222:role/r", "external_id": "env:EXT"}}})
    aws = AwsClients("us-east-1")
    try:
        with pytest.raises(ConfigError, match="unresolved"):
            await CredentialBroker(cfg, aws).session("222222222222")
    finally:
        await aws.aclose()


def test_registered_actions_meet_the_action_contract() -> None:
    from pipeline.actions.base import ContainmentAction

    for kind in registry.kinds():
        action: ContainmentAction = registry.get(kind)
        assert action.permissions or kind == "notify"
