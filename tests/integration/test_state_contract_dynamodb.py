"""The StateStore contract on DynamoDB as a fleet sees it: two workers, one table.

``tests/unit/test_state_contract.py`` runs the contract against one DynamoDbStore.
Here the same checks (imported, so there is one definition of the contract) run
against a store whose every call goes, in turn, to one of two DynamoDbStores with
their own AwsClients: what worker A writes, worker B must read at once (strongly
consistent reads), and a conditional write by one must see the other's writes.
The table is the one `riposte init-state` creates; its design is checked too.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from itertools import cycle
from pathlib import Path
from typing import Any

import pytest

from pipeline.aws import AwsClients
from pipeline.state.base import StateStore, Stored
from pipeline.state.dynamodb import DynamoDbStore
from tests.unit import test_state_contract as contract
from tests.unit.test_state_contract import FakeClock

# The contract's tests, collected here too against the two-worker store below, concurrent
# increments included: the test stand-in serializes DynamoDB requests, restoring the
# atomicity of conditional writes that DynamoDB guarantees and moto alone lacks (see
# docs/testing.md).
globals().update({name: getattr(contract, name) for name in dir(contract)
                  if name.startswith("test_")})

pytestmark = pytest.mark.integration

class TwoWorkers:
    """A StateStore that sends each call to the next of several stores on one table."""

    def __init__(self, stores: list[DynamoDbStore]) -> None:
        self.stores = stores
        self._next = cycle(stores)

    def _pick(self) -> DynamoDbStore:
        return next(self._next)

    async def get(self, key: str, *, consistent: bool = True) -> Stored | None:
        return await self._pick().get(key, consistent=consistent)

    async def put(self, key: str, value: dict[str, Any], *, ttl: float | None = None) -> Stored:
        return await self._pick().put(key, value, ttl=ttl)

    async def put_if_absent(self, key: str, value: dict[str, Any], *,
                            ttl: float | None = None) -> Stored | None:
        return await self._pick().put_if_absent(key, value, ttl=ttl)

    async def compare_and_set(self, key: str, expected_version: int, value: dict[str, Any], *,
                              ttl: float | None = None) -> Stored | None:
        return await self._pick().compare_and_set(key, expected_version, value, ttl=ttl)

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        return await self._pick().delete(key, expected_version=expected_version)

    async def scan(self, prefix: str, *, limit: int | None = None) -> list[Stored]:
        return await self._pick().scan(prefix, limit=limit)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Stored]:
        return await self._pick().get_many(keys)

    async def put_many(self, entries: Sequence[tuple[str, dict[str, Any]]], *,
                       ttl: float | None = None) -> None:
        await self._pick().put_many(entries, ttl=ttl)

    async def aclose(self) -> None:
        for store in self.stores:
            await store.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def workers(moto_server: str, clock: FakeClock) -> AsyncIterator[list[DynamoDbStore]]:
    """Two workers' stores (each with its own clients) on one fresh table."""
    table = f"contract2-{uuid.uuid4().hex[:10]}"
    clients = [AwsClients("us-east-1"), AwsClients("us-east-1")]
    try:
        first = await DynamoDbStore.open(table, clients[0], clock=clock, create_if_missing=True)
        second = await DynamoDbStore.open(table, clients[1], clock=clock)
        yield [first, second]
    finally:
        for c in clients:
            await c.aclose()


@pytest.fixture
async def store(workers: list[DynamoDbStore]) -> AsyncIterator[StateStore]:
    both = TwoWorkers(workers)
    assert isinstance(both, StateStore)
    yield both
    await both.aclose()


async def test_a_claim_by_one_worker_holds_against_the_other(
        workers: list[DynamoDbStore]) -> None:
    """Claims interleaved between two workers: the second claim of a key always loses."""
    a, b = workers
    for n in range(5):
        key = f"ledger:claim-{n}"
        first, second = (a, b) if n % 2 else (b, a)
        won = await first.put_if_absent(key, {"owner": "first"})
        assert won is not None
        assert await second.put_if_absent(key, {"owner": "second"}) is None
        assert await second.compare_and_set(key, 0, {"owner": "second"}) is None
        got = await second.get(key)
        assert got is not None and got.value == {"owner": "first"}
        assert await second.delete(key, expected_version=won.version)
        assert await first.put_if_absent(key, {"owner": "first"}) is not None


async def test_stale_compare_and_set_from_the_other_worker_fails(
        workers: list[DynamoDbStore]) -> None:
    a, b = workers
    seen_by_b = await b.put("kinesis:lease:s:shard-0", {"owner": "b"})
    taken = await a.compare_and_set("kinesis:lease:s:shard-0", seen_by_b.version, {"owner": "a"})
    assert taken is not None
    # b still holds the version it read: its renewal must fail, as a lost lease does.
    assert await b.compare_and_set("kinesis:lease:s:shard-0", seen_by_b.version,
                                   {"owner": "b"}) is None
    got = await b.get("kinesis:lease:s:shard-0")
    assert got is not None and got.value == {"owner": "a"}


def test_init_state_creates_the_documented_table(moto_server: str, boto: Any,
                                                 tmp_path: Path) -> None:
    table = f"init-{uuid.uuid4().hex[:10]}"
    config = tmp_path / "riposte.toml"
    config.write_text(f'[state]\ntype = "dynamodb"\ntable = "{table}"\n', encoding="utf-8")

    def init() -> str:
        done = subprocess.run([sys.executable, "-m", "pipeline", "init-state", "-c",
                               str(config)], capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        return done.stdout.decode()

    assert init().strip() == f"dynamodb table {table}: created"
    assert init().strip() == f"dynamodb table {table}: already exists"
    ddb = boto("dynamodb")
    described = ddb.describe_table(TableName=table)["Table"]
    assert sorted((k["AttributeName"], k["KeyType"]) for k in described["KeySchema"]) == [
        ("pk", "HASH"), ("sk", "RANGE")]
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED" and ttl["AttributeName"] == "exp"


async def test_items_follow_the_documented_layout(workers: list[DynamoDbStore],
                                                  clock: FakeClock, boto: Any) -> None:
    a, _ = workers
    await a.put("corr:acct#key#gd#f1", {"x": 1}, ttl=60)
    await a.put("nonamespace", {"y": 2})
    items = {i["sk"]["S"]: i for i in boto("dynamodb").scan(TableName=a.table)["Items"]}
    with_ns, without = items["corr:acct#key#gd#f1"], items["nonamespace"]
    assert with_ns["pk"]["S"] == "corr" and without["pk"]["S"] == "nonamespace"
    assert with_ns["v"]["S"] == '{"x":1}' and with_ns["ver"]["N"] == "1"
    assert float(with_ns["exp"]["N"]) == pytest.approx(clock.now() + 60)
    assert "exp" not in without
