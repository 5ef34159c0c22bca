"""ReadOnlyAwsClients: mutating operations are refused before any request leaves the process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pipeline.readonly_aws import MutatingCallRefused, ReadOnlyAwsClients, is_read_only
from tests.integration.actions_support import make_instance
from tests.integration.test_replay_live import RecordingProxy, recording_proxy

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("operation", "read_only"), [
    ("DescribeInstances", True), ("GetObject", True), ("ListObjectsV2", True),
    ("HeadObject", True), ("GetCallerIdentity", True), ("AssumeRole", True),
    ("BatchGetItem", True), ("Query", True),
    ("ModifyInstanceAttribute", False), ("UpdateAccessKey", False), ("PutObject", False),
    ("DeleteObject", False), ("CreateSnapshot", False), ("RunInstances", False),
    ("PutPublicAccessBlock", False), ("SendMessage", False), ("DeleteMessageBatch", False),
    ("BatchImportFindings", False), ("PutItem", False), ("AttachRolePolicy", False),
    ("CheckoutLicense", False), ("CheckoutBorrowLicense", False),
])
def test_operation_table(operation: str, read_only: bool) -> None:
    assert is_read_only(operation) is read_only


@pytest.fixture
async def proxy(moto_server: str, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[RecordingProxy]:
    async with recording_proxy(moto_server, monkeypatch) as rec:
        yield rec


async def test_mutating_calls_raise_before_sending(boto: Any, proxy: RecordingProxy) -> None:
    ids = make_instance(boto, groups=1)
    iam = boto("iam")
    user = f"replay-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
    aws = ReadOnlyAwsClients("us-east-1")
    try:
        ec2 = await aws.client("ec2")
        iam_client = await aws.client("iam")
        proxy.operations.clear()
        with pytest.raises(MutatingCallRefused, match=r"ec2\.ModifyInstanceAttribute"):
            await ec2.modify_instance_attribute(InstanceId=ids["instance"],
                                                Groups=ids["groups"])
        with pytest.raises(MutatingCallRefused, match=r"iam\.UpdateAccessKey"):
            await iam_client.update_access_key(UserName=user, AccessKeyId=key,
                                               Status="Inactive")
        assert proxy.operations == [], "refused before anything was sent"
        described = await ec2.describe_instances(InstanceIds=[ids["instance"]])
        assert described["Reservations"][0]["Instances"][0]["InstanceId"] == ids["instance"]
        assert proxy.operations == ["DescribeInstances"]
        # The same client cached and asked for again keeps refusing.
        again = await aws.client("ec2")
        with pytest.raises(MutatingCallRefused):
            await again.create_snapshot(VolumeId="vol-12345678")
    finally:
        await aws.aclose()
    keys = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
    assert [k["Status"] for k in keys] == ["Active"]
