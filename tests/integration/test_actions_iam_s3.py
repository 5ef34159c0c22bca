"""IAM and S3 containment actions against the moto server (moto keeps state only:
it does not enforce IAM denies or inactive keys, so the tests check the state)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.actions import ops
from pipeline.models import ActionRecord, ActionStatus, Incident, ResourceRef
from pipeline.stages.contain import build
from pipeline.state.memory import MemoryStore
from tests.integration.actions_support import (
    HOME,
    REGION,
    FixedClock,
    containment,
    context,
    incident,
    uid,
)

pytestmark = pytest.mark.integration


async def run_one(ctx: Any, inc: Incident) -> ActionRecord:
    out = await build(ctx.config, ctx).process(inc)
    records = [r for r in out if isinstance(r, ActionRecord)]
    assert len(records) == 1
    return records[0]


def key_status(boto: Any, user: str, key_id: str) -> str:
    keys = boto("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
    return str(next(k["Status"] for k in keys if k["AccessKeyId"] == key_id))


@pytest.mark.parametrize("with_user_name", [True, False])
async def test_deactivate_access_key_and_restore(boto: Any, aws: Any,
                                                 with_user_name: bool) -> None:
    iam = boto("iam")
    user = uid("u-")
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
    ref = ResourceRef(type="iam.access_key", id=key, account=HOME,
                      details={"user_name": user} if with_user_name else {})
    ctx = context(containment(["iam.deactivate_access_key"]), MemoryStore(), aws, FixedClock())

    rec = await run_one(ctx, incident(ref, finding_type="UnauthorizedAccess:IAMUser/TorIPCaller"))

    assert rec.status == ActionStatus.VERIFIED, rec.reason
    assert key_status(boto, user, key) == "Inactive"
    assert rec.before == {"user_name": user, "status": "Active"}
    await ops.rollback(ctx, action_id=rec.id)
    assert key_status(boto, user, key) == "Active"


async def test_quarantine_user_then_delete_exactly_that_policy(boto: Any, aws: Any) -> None:
    iam = boto("iam")
    user = uid("u-")
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="own", PolicyDocument=orjson.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}).decode())
    before = iam.list_user_policies(UserName=user)["PolicyNames"]
    ctx = context(containment(["iam.quarantine_principal"]), MemoryStore(), aws, FixedClock())

    rec = await run_one(ctx, incident(ResourceRef(type="iam.user", id=user, account=HOME)))

    assert rec.status == ActionStatus.VERIFIED, rec.reason
    name = rec.before["policy_name"]
    doc = iam.get_user_policy(UserName=user, PolicyName=name)["PolicyDocument"]
    assert doc["Statement"] == [{"Sid": "RiposteQuarantineDenyAll", "Effect": "Deny",
                                 "Action": "*", "Resource": "*"}]
    await ops.rollback(ctx, action_id=rec.id)
    assert iam.list_user_policies(UserName=user)["PolicyNames"] == before


async def test_quarantine_role_revokes_sessions_issued_before_now(boto: Any, aws: Any) -> None:
    iam = boto("iam")
    role = uid("r-")
    iam.create_role(RoleName=role, AssumeRolePolicyDocument="{}")
    clock = FixedClock()
    ctx = context(containment(["iam.quarantine_principal"]), MemoryStore(), aws, clock)

    rec = await run_one(ctx, incident(ResourceRef(type="iam.role", id=role, account=HOME)))

    assert rec.status == ActionStatus.VERIFIED
    doc = iam.get_role_policy(RoleName=role, PolicyName=rec.before["policy_name"])[
        "PolicyDocument"]
    revoke = next(s for s in doc["Statement"] if s["Sid"] == "RiposteRevokeOlderSessions")
    assert revoke["Condition"]["DateLessThan"]["aws:TokenIssueTime"] == "2026-11-23T10:01:00Z"
    await ops.rollback(ctx, action_id=rec.id)
    assert iam.list_role_policies(RoleName=role)["PolicyNames"] == []


async def test_quarantine_missing_principal_is_skipped(aws: Any) -> None:
    ctx = context(containment(["iam.quarantine_principal"]), MemoryStore(), aws, FixedClock())
    rec = await run_one(ctx, incident(ResourceRef(type="iam.user", id=uid("ghost-"),
                                                  account=HOME)))
    assert rec.status == ActionStatus.SKIPPED and "not found" in rec.reason


@pytest.mark.parametrize("prior", [None, {"BlockPublicAcls": True, "IgnorePublicAcls": False,
                                          "BlockPublicPolicy": False,
                                          "RestrictPublicBuckets": True}])
async def test_s3_block_public_access_and_restore_prior(boto: Any, aws: Any,
                                                        prior: dict[str, bool] | None) -> None:
    s3 = boto("s3")
    bucket = uid("bkt-")
    s3.create_bucket(Bucket=bucket)
    if prior:
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=prior)
    ctx = context(containment(["s3.block_public_access"]), MemoryStore(), aws, FixedClock())

    rec = await run_one(ctx, incident(ResourceRef(type="s3.bucket", id=bucket, account=HOME,
                                                  region=REGION),
                                      finding_type="Policy:S3/BucketAnonymousAccessGranted"))

    assert rec.status == ActionStatus.VERIFIED
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True}
    assert rec.before["public_access_block"] == prior
    await ops.rollback(ctx, action_id=rec.id)
    if prior is None:
        with pytest.raises(s3.exceptions.ClientError) as err:
            s3.get_public_access_block(Bucket=bucket)
        assert err.value.response["Error"]["Code"] == "NoSuchPublicAccessBlockConfiguration"
    else:
        assert s3.get_public_access_block(Bucket=bucket)[
            "PublicAccessBlockConfiguration"] == prior


async def test_live_exempt_tags_on_users_roles_and_buckets_are_honoured(
        boto: Any, aws: Any) -> None:
    """The finding does not carry the tag; the describe made while planning does."""
    iam, s3 = boto("iam"), boto("s3")
    exempt = [{"Key": "riposte:exempt", "Value": "break-glass"}]
    user, role, bucket = uid("u-"), uid("r-"), uid("bkt-")
    iam.create_user(UserName=user, Tags=exempt)
    key = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
    iam.create_role(RoleName=role, AssumeRolePolicyDocument="{}", Tags=exempt)
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": exempt})
    cases = [
        ("iam.deactivate_access_key", ResourceRef(type="iam.access_key", id=key, account=HOME,
                                                  details={"user_name": user})),
        ("iam.quarantine_principal", ResourceRef(type="iam.role", id=role, account=HOME)),
        ("s3.block_public_access", ResourceRef(type="s3.bucket", id=bucket, account=HOME)),
    ]
    for kind, ref in cases:
        ctx = context(containment([kind]), MemoryStore(), aws, FixedClock())
        rec = await run_one(ctx, incident(ref))
        assert rec.status == ActionStatus.SKIPPED and "exempt" in rec.reason, kind
    assert key_status(boto, user, key) == "Active"
    assert iam.list_role_policies(RoleName=role)["PolicyNames"] == []
    with pytest.raises(s3.exceptions.ClientError):
        s3.get_public_access_block(Bucket=bucket)
