"""The state store on DynamoDB: what a fleet of workers shares.

Table design (one table, on-demand capacity, TTL on ``exp``):

| attribute | type | meaning |
|---|---|---|
| ``pk`` (partition key) | S | the key's namespace: everything before its first ``:`` |
| ``sk`` (sort key) | S | the whole key |
| ``v`` | S | the JSON value |
| ``ver`` | N | version, +1 on every write; conditional writes compare it |
| ``exp`` | N | expiry, epoch seconds; DynamoDB's TTL deletes lazily, so reads filter it |

``scan(prefix)`` is a Query on the prefix's namespace with
``begins_with(sk, prefix)``, so it reads only the matching range and any prefix
works, as the state-store contract requires. The cost is that a namespace is one
partition key: busy namespaces (``corr``, ``delivered``, ``baseline``) rely on
DynamoDB's split-for-heat over the sort key to spread beyond one partition's
throughput. Every read that decides something (conditional writes, leases,
ledgers) is strongly consistent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson

from pipeline.aws import AwsClients, aws_error_code
from pipeline.clock import WALL_CLOCK, Clock
from pipeline.errors import RetriableError
from pipeline.state.base import Stored

log = logging.getLogger(__name__)

# BatchGetItem answers may leave keys unprocessed under load; ask again this many times.
_BATCH_ATTEMPTS = 5

_RETRIABLE_CODES = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable", "TransactionConflictException"})


def partition_of(key: str) -> str:
    """The partition key: the key's namespace (everything before its first ``:``)."""
    return key.partition(":")[0]


def _code(exc: Exception) -> str:
    return aws_error_code(exc) or ""


class DynamoDbStore:
    def __init__(self, table: str, client: Any, *, clock: Clock = WALL_CLOCK) -> None:
        self.table = table
        self.client = client
        self.clock = clock

    @classmethod
    async def open(cls, table: str, aws: AwsClients, *, clock: Clock = WALL_CLOCK,
                   region: str | None = None, create_if_missing: bool = False
                   ) -> DynamoDbStore:
        client = await aws.client("dynamodb", region=region)
        store = cls(table, client, clock=clock)
        if create_if_missing:
            await store.create_table()
        return store

    async def create_table(self) -> bool:
        """Create the table (and enable TTL) if it does not exist; True if it was created."""
        try:
            await self.client.describe_table(TableName=self.table)
            return False
        except Exception as exc:
            if _code(exc) != "ResourceNotFoundException":
                raise
        try:
            await self._create()
        except Exception as exc:
            # Another worker created it between our describe and create: that is success.
            if _code(exc) != "ResourceInUseException":
                raise
            return False
        return True

    async def _create(self) -> None:
        await self.client.create_table(
            TableName=self.table,
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                  {"AttributeName": "sk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                       {"AttributeName": "sk", "KeyType": "RANGE"}],
            BillingMode="PAY_PER_REQUEST",
        )
        waiter = self.client.get_waiter("table_exists")
        await waiter.wait(TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        await self.client.update_time_to_live(
            TableName=self.table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": "exp"})

    def _item_key(self, key: str) -> dict[str, Any]:
        return {"pk": {"S": partition_of(key)}, "sk": {"S": key}}

    def _stored(self, item: dict[str, Any]) -> Stored | None:
        exp = float(item["exp"]["N"]) if "exp" in item else None
        if exp is not None and exp <= self.clock.now():
            return None
        return Stored(item["sk"]["S"], orjson.loads(item["v"]["S"]), int(item["ver"]["N"]), exp)

    async def _call(self, op: str, **kwargs: Any) -> Any:
        try:
            return await getattr(self.client, op)(TableName=self.table, **kwargs)
        except Exception as exc:
            if _code(exc) in _RETRIABLE_CODES:
                raise RetriableError(f"dynamodb {op}: {_code(exc)}", reason="state_throttled",
                                     component="state") from exc
            raise

    async def get(self, key: str, *, consistent: bool = True) -> Stored | None:
        answer = await self._call("get_item", Key=self._item_key(key), ConsistentRead=consistent)
        item = answer.get("Item")
        return None if item is None else self._stored(item)

    async def _write(self, key: str, value: dict[str, Any], ttl: float | None, *,
                     condition: str | None, names: dict[str, str],
                     values: dict[str, Any]) -> Stored | None:
        now = self.clock.now()
        update = "SET #v = :v, #ver = if_not_exists(#ver, :zero) + :one"
        names = {**names, "#v": "v", "#ver": "ver"}
        values = {**values, ":v": {"S": orjson.dumps(value).decode()},
                  ":zero": {"N": "0"}, ":one": {"N": "1"}}
        if ttl is not None:
            update += ", #exp = :exp"
            names["#exp"] = "exp"
            values[":exp"] = {"N": repr(now + ttl)}
        else:
            update += " REMOVE #exp"
            names["#exp"] = "exp"
        kwargs: dict[str, Any] = {
            "Key": self._item_key(key), "UpdateExpression": update,
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values,
            "ReturnValues": "ALL_NEW"}
        if condition:
            kwargs["ConditionExpression"] = condition
        try:
            answer = await self._call("update_item", **kwargs)
        except Exception as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return None
            raise
        item = answer["Attributes"]
        exp = float(item["exp"]["N"]) if "exp" in item else None
        return Stored(key, value, int(item["ver"]["N"]), exp)

    _ABSENT = "(attribute_not_exists(#sk) OR (attribute_exists(#exp) AND #exp <= :now))"

    async def put(self, key: str, value: dict[str, Any], *, ttl: float | None = None) -> Stored:
        stored = await self._write(key, value, ttl, condition=None, names={}, values={})
        assert stored is not None  # unconditional
        return stored

    async def put_if_absent(self, key: str, value: dict[str, Any], *,
                            ttl: float | None = None) -> Stored | None:
        return await self._write(key, value, ttl, condition=self._ABSENT,
                                 names={"#sk": "sk", "#exp": "exp"},
                                 values={":now": {"N": repr(self.clock.now())}})

    async def compare_and_set(self, key: str, expected_version: int, value: dict[str, Any], *,
                              ttl: float | None = None) -> Stored | None:
        if expected_version == 0:
            return await self.put_if_absent(key, value, ttl=ttl)
        condition = ("#ver = :expected AND "
                     "(attribute_not_exists(#exp) OR #exp > :now)")
        return await self._write(key, value, ttl, condition=condition, names={"#exp": "exp"},
                                 values={":expected": {"N": str(expected_version)},
                                         ":now": {"N": repr(self.clock.now())}})

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        condition = "attribute_exists(#sk) AND (attribute_not_exists(#exp) OR #exp > :now)"
        names = {"#sk": "sk", "#exp": "exp"}
        values: dict[str, Any] = {":now": {"N": repr(self.clock.now())}}
        if expected_version is not None:
            condition += " AND #ver = :expected"
            names["#ver"] = "ver"
            values[":expected"] = {"N": str(expected_version)}
        try:
            await self._call("delete_item", Key=self._item_key(key),
                             ConditionExpression=condition, ExpressionAttributeNames=names,
                             ExpressionAttributeValues=values)
        except Exception as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    async def scan(self, prefix: str, *, limit: int | None = None) -> list[Stored]:
        out: list[Stored] = []
        kwargs: dict[str, Any]
        if ":" in prefix:
            kwargs = {"KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
                      "ExpressionAttributeValues": {":pk": {"S": partition_of(prefix)},
                                                    ":prefix": {"S": prefix}},
                      "ConsistentRead": True}
            op = "query"
        else:  # no namespace in the prefix: a full scan, for tools and tests only
            kwargs = {"FilterExpression": "begins_with(sk, :prefix)",
                      "ExpressionAttributeValues": {":prefix": {"S": prefix}},
                      "ConsistentRead": True}
            op = "scan"
        while True:
            answer = await self._call(op, **kwargs)
            for item in answer.get("Items", []):
                stored = self._stored(item)
                if stored is not None:
                    out.append(stored)
                    if limit is not None and len(out) >= limit:
                        return sorted(out, key=lambda s: s.key)
            last = answer.get("LastEvaluatedKey")
            if not last:
                break
            kwargs["ExclusiveStartKey"] = last
        return sorted(out, key=lambda s: s.key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Stored]:
        """BatchGetItem, 100 keys a call, consistent reads, unprocessed keys retried."""
        found: dict[str, Stored] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 100):
            request: dict[str, Any] = {self.table: {
                "Keys": [self._item_key(k) for k in unique[start:start + 100]],
                "ConsistentRead": True}}
            for _ in range(_BATCH_ATTEMPTS):
                answer = await self._batch("batch_get_item", RequestItems=request)
                for item in answer.get("Responses", {}).get(self.table, []):
                    stored = self._stored(item)
                    if stored is not None:
                        found[stored.key] = stored
                request = answer.get("UnprocessedKeys") or {}
                if not request:
                    break
            else:
                raise RetriableError("dynamodb batch_get_item left keys unprocessed",
                                     reason="state_throttled", component="state")
        return found

    async def put_many(self, entries: Sequence[tuple[str, dict[str, Any]]], *,
                       ttl: float | None = None) -> None:
        # Each write bumps its own version, which BatchWriteItem cannot do: concurrent
        # UpdateItem calls instead (the client pools connections).
        await asyncio.gather(*(self.put(k, v, ttl=ttl) for k, v in entries))

    async def _batch(self, op: str, **kwargs: Any) -> Any:
        try:
            return await getattr(self.client, op)(**kwargs)
        except Exception as exc:
            if _code(exc) in _RETRIABLE_CODES:
                raise RetriableError(f"dynamodb {op}: {_code(exc)}", reason="state_throttled",
                                     component="state") from exc
            raise

    async def aclose(self) -> None:
        # The client belongs to AwsClients, which closes it.
        return None
