"""Dry-run shows exactly what enforce then does, for every action that calls AWS.

The promise behind "run in dry-run first": the calls a dry-run records are the calls
enforce makes on the same resource in the same state, parameter for parameter, and
the before-state it records is the same. A value only known once a call has run (the
quarantine group's id, a new snapshot's id) is a ``$ref:NAME`` in the plan; it must
stand for one value wherever it appears in what enforce sent.

``ec2.isolate`` and ``ec2.nacl_deny`` are compared in test_actions_ec2.py and
``dns.block_domain`` (against its Route 53 Resolver fake) in test_actions_dns.py;
``notify`` makes no AWS call. Together: every action.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pipeline.actions.base import REF_PREFIX
from pipeline.models import ActionRecord, ActionStatus, ApiCall, Incident, ResourceRef
from pipeline.stages.contain import build
from pipeline.state.memory import MemoryStore
from tests.integration.actions_support import (
    HOME,
    REGION,
    FixedClock,
    containment,
    context,
    ec2_ref,
    incident,
    make_instance,
    uid,
)

pytestmark = pytest.mark.integration

Setup = Callable[[Any], Incident]


def _instance(boto: Any) -> Incident:
    return incident(ec2_ref(make_instance(boto)))


def _instance_with_profile(boto: Any) -> Incident:
    ids = make_instance(boto)
    iam, ec2 = boto("iam"), boto("ec2")
    name = uid("prof-")
    iam.create_role(RoleName=name, AssumeRolePolicyDocument="{}")
    profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    ec2.associate_iam_instance_profile(IamInstanceProfile={"Arn": profile["Arn"]},
                                       InstanceId=ids["instance"])
    return incident(ec2_ref(ids))


def _access_key(boto: Any) -> Incident:
    iam = boto("iam")
    user = uid("u-")
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
    return incident(ResourceRef(type="iam.access_key", id=key, account=HOME,
                                details={"user_name": user}),
                    finding_type="UnauthorizedAccess:IAMUser/TorIPCaller")


def _user(boto: Any) -> Incident:
    user = uid("u-")
    boto("iam").create_user(UserName=user)
    return incident(ResourceRef(type="iam.user", id=user, account=HOME))


def _role(boto: Any) -> Incident:
    role = uid("r-")
    boto("iam").create_role(RoleName=role, AssumeRolePolicyDocument="{}")
    return incident(ResourceRef(type="iam.role", id=role, account=HOME))


def _bucket(boto: Any) -> Incident:
    bucket = uid("bkt-")
    boto("s3").create_bucket(Bucket=bucket)
    return incident(ResourceRef(type="s3.bucket", id=bucket, account=HOME, region=REGION),
                    finding_type="Policy:S3/BucketAnonymousAccessGranted")


def _matches(planned: Any, sent: Any, refs: dict[str, Any], where: str) -> None:
    """``sent`` is ``planned`` with each ``$ref:NAME`` standing for one value throughout."""
    if isinstance(planned, str) and planned.startswith(REF_PREFIX):
        name = planned.removeprefix(REF_PREFIX)
        assert refs.setdefault(name, sent) == sent, f"{where}: {planned} took two values"
        return
    if isinstance(planned, dict):
        assert isinstance(sent, dict) and planned.keys() == sent.keys(), where
        for key in planned:
            _matches(planned[key], sent[key], refs, f"{where}.{key}")
        return
    if isinstance(planned, list | tuple):
        assert isinstance(sent, list | tuple) and len(planned) == len(sent), where
        for i, (p, s) in enumerate(zip(planned, sent, strict=True)):
            _matches(p, s, refs, f"{where}[{i}]")
        return
    assert planned == sent, f"{where}: planned {planned!r}, sent {sent!r}"


def _call_view(call: ApiCall) -> dict[str, Any]:
    return {"service": call.service, "operation": call.operation, "params": dict(call.params),
            "account": call.account, "region": call.region}


async def _record(ctx: Any, inc: Incident) -> ActionRecord:
    out = await build(ctx.config, ctx).process(inc)
    (record,) = [r for r in out if isinstance(r, ActionRecord)]
    return record


@pytest.mark.parametrize(("kind", "setup"), [
    ("ec2.detach_instance_profile", _instance_with_profile),
    ("ec2.snapshot", _instance),
    ("ec2.tag", _instance),
    ("iam.deactivate_access_key", _access_key),
    ("iam.quarantine_principal", _user),
    ("iam.quarantine_principal", _role),
    ("s3.block_public_access", _bucket),
], ids=["detach_profile", "snapshot", "tag", "access_key", "quarantine_user",
        "quarantine_role", "s3_public_access"])
async def test_dry_run_records_exactly_the_calls_enforce_makes(
        boto: Any, aws: Any, kind: str, setup: Setup) -> None:
    inc = setup(boto)
    clock = FixedClock()  # one clock: timestamps in parameters agree
    dry_ctx = context(containment([kind], mode="dry-run"), MemoryStore(), aws, clock)
    planned = await _record(dry_ctx, inc)
    assert planned.status == ActionStatus.PLANNED, planned.reason
    assert planned.calls, "a dry-run that plans nothing proves nothing"

    enf_ctx = context(containment([kind]), MemoryStore(), aws, clock)
    applied = await _record(enf_ctx, inc)
    assert applied.status == ActionStatus.VERIFIED, applied.reason

    assert applied.before == planned.before  # dry-run changed nothing it looked at
    _matches([_call_view(c) for c in planned.calls], [_call_view(c) for c in applied.calls],
             {}, kind)
