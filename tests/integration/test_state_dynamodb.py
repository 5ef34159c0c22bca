"""The DynamoDB state store against moto in server mode, with the real aiobotocore client."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from pipeline.aws import AwsClients
from pipeline.clock import EventTimeClock
from pipeline.state.dynamodb import DynamoDbStore


@pytest.fixture
async def store(aws: AwsClients) -> Any:
    clock = EventTimeClock(1_000_000.0)
    s = await DynamoDbStore.open(f"riposte-{uuid.uuid4().hex[:8]}", aws, clock=clock,
                                 create_if_missing=True)
    yield s
    await s.aclose()


async def test_put_get_versions(store: DynamoDbStore) -> None:
    first = await store.put("ns:a", {"x": 1})
    second = await store.put("ns:a", {"x": 2})
    assert (first.version, second.version) == (1, 2)
    got = await store.get("ns:a")
    assert got is not None and got.value == {"x": 2} and got.version == 2
    assert await store.get("ns:missing") is None


async def test_put_if_absent_and_compare_and_set(store: DynamoDbStore) -> None:
    assert await store.put_if_absent("ledger:k", {"owner": "a"}) is not None
    assert await store.put_if_absent("ledger:k", {"owner": "b"}) is None
    current = await store.get("ledger:k")
    assert current is not None and current.value == {"owner": "a"}
    assert await store.compare_and_set("ledger:k", current.version + 1, {"owner": "c"}) is None
    updated = await store.compare_and_set("ledger:k", current.version, {"owner": "c"})
    assert updated is not None and updated.version == current.version + 1
    assert await store.compare_and_set("ledger:new", 0, {"owner": "d"}) is not None


async def test_ttl_is_invisible_before_dynamodb_deletes_it(store: DynamoDbStore) -> None:
    clock = store.clock
    assert isinstance(clock, EventTimeClock)
    await store.put("ttl:a", {"v": 1}, ttl=10)
    assert await store.get("ttl:a") is not None
    clock.advance_to(clock.now() + 11)
    assert await store.get("ttl:a") is None
    assert await store.scan("ttl:") == []
    # An expired entry counts as absent for conditional writes.
    assert await store.put_if_absent("ttl:a", {"v": 2}) is not None


async def test_scan_by_prefix_in_key_order(store: DynamoDbStore) -> None:
    for key in ("corr:b:2", "corr:a:1", "corr:b:1", "other:b:1"):
        await store.put(key, {"k": key})
    assert [s.key for s in await store.scan("corr:b:")] == ["corr:b:1", "corr:b:2"]
    assert [s.key for s in await store.scan("corr:", limit=2)] == ["corr:a:1", "corr:b:1"]


async def test_delete_with_expected_version(store: DynamoDbStore) -> None:
    stored = await store.put("del:a", {})
    assert not await store.delete("del:a", expected_version=stored.version + 1)
    assert await store.delete("del:a", expected_version=stored.version)
    assert not await store.delete("del:a")


async def test_stale_writer_loses_the_race(store: DynamoDbStore) -> None:
    """Two writers read version 1; the first compare-and-set wins, the second is refused."""
    await store.put("count:n", {"n": 0})
    first = await store.get("count:n")
    second = await store.get("count:n")
    assert first is not None and second is not None
    assert await store.compare_and_set("count:n", first.version, {"n": 1}) is not None
    assert await store.compare_and_set("count:n", second.version, {"n": 1}) is None
    final = await store.get("count:n")
    assert final is not None and final.value == {"n": 1} and final.version == 2
