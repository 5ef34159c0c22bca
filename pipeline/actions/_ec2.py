"""EC2 reads shared by the instance actions (describe, group lookup).

Both reads are coalesced (:mod:`pipeline.coalesce`): the instances and groups that
concurrent plans ask for in one account and region go out as one
``DescribeInstances`` / ``DescribeSecurityGroups`` call with filters, and each
caller is answered only by a call that started after it asked. Filters rather than
``InstanceIds``: an id that does not exist makes ``InstanceIds`` fail the whole
call, while a filter simply leaves it out. Ids are checked for shape before they
join a batch, so a forged finding cannot put a malformed id next to real ones.
"""

from __future__ import annotations

import asyncio
import functools
import re
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from pipeline import metrics
from pipeline.actions.base import ActionFailed, ClientSource, Refused, describe
from pipeline.coalesce import BatchReader

# EC2's documented limits: up to 200 values per filter; 100 keeps requests small.
MAX_IDS_PER_CALL = 100
_INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})")
# Readers kept per event loop; each holds its client source, so entries are bounded.
_MAX_READERS = 256

_Readers = OrderedDict[tuple[int, str, str], BatchReader[Any, Any]]
_readers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Readers] = (
    weakref.WeakKeyDictionary())


def _permanent(exc: BaseException) -> bool:
    """An error that might come from one bad key in the batch (not throttling or I/O)."""
    return isinstance(exc, ActionFailed)


def _counting(operation: str) -> Callable[[int], None]:
    calls = metrics.CONTAINMENT_READ_CALLS.labels(operation=operation)
    keys = metrics.CONTAINMENT_READ_KEYS.labels(operation=operation)

    def count(n: int) -> None:
        calls.inc()
        keys.inc(n)

    return count


_Fetch = Callable[[ClientSource, str, Sequence[Any]], Awaitable[Mapping[Any, Any]]]


def _reader(aws: ClientSource, region: str, operation: str, fetch: _Fetch
            ) -> BatchReader[Any, Any]:
    readers = _readers.setdefault(asyncio.get_running_loop(), OrderedDict())
    key = (id(aws), region, operation)
    reader = readers.get(key)
    if reader is None:
        # The reader holds ``aws``, so ``id(aws)`` cannot be reused while it lives.
        reader = readers[key] = BatchReader(functools.partial(fetch, aws, region),
                                            max_batch=MAX_IDS_PER_CALL, isolate=_permanent,
                                            on_call=_counting(operation))
        while len(readers) > _MAX_READERS:
            readers.popitem(last=False)
    readers.move_to_end(key)
    return reader


async def _pages(aws: ClientSource, operation: str, region: str,
                 **params: Any) -> list[dict[str, Any]]:
    pages = [await describe(aws, "ec2", operation, region, **params)]
    while token := pages[-1].get("NextToken"):
        pages.append(await describe(aws, "ec2", operation, region, **params, NextToken=token))
    return pages


async def _fetch_instances(aws: ClientSource, region: str,
                           ids: Sequence[str]) -> Mapping[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for page in await _pages(aws, "DescribeInstances", region,
                             Filters=[{"Name": "instance-id", "Values": list(ids)}]):
        for reservation in page.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                found[str(instance.get("InstanceId"))] = dict(instance)
    return found


async def _fetch_groups(aws: ClientSource, region: str,
                        keys: Sequence[tuple[str, str]]) -> Mapping[tuple[str, str], str]:
    vpcs = sorted({vpc for vpc, _ in keys})
    names = sorted({name for _, name in keys})
    found: dict[tuple[str, str], str] = {}
    # A group matching one wanted VPC and another wanted name is simply not asked for.
    for page in await _pages(aws, "DescribeSecurityGroups", region, Filters=[
            {"Name": "group-name", "Values": names}, {"Name": "vpc-id", "Values": vpcs}]):
        for group in page.get("SecurityGroups", []):
            found.setdefault((str(group.get("VpcId")), str(group.get("GroupName"))),
                             str(group["GroupId"]))
    return found


def _instance_reader(aws: ClientSource, region: str) -> BatchReader[str, dict[str, Any]]:
    return _reader(aws, region, "DescribeInstances", _fetch_instances)


def _group_reader(aws: ClientSource, region: str) -> BatchReader[tuple[str, str], str]:
    return _reader(aws, region, "DescribeSecurityGroups", _fetch_groups)


async def describe_instance(aws: ClientSource, region: str, instance_id: str) -> dict[str, Any]:
    """The instance as EC2 sees it now, or Refused when it does not exist here.

    A finding naming an instance that this account and region do not hold is either
    stale or forged; either way nothing is done to anything else.
    """
    if not _INSTANCE_ID.fullmatch(instance_id):
        raise Refused(f"instance id {instance_id!r} is malformed")
    instance = await _instance_reader(aws, region).get(instance_id)
    if instance is None:
        raise Refused(f"instance {instance_id} not found in {aws.account}/{region}")
    state = instance.get("State", {}).get("Name")
    if state in ("terminated", "shutting-down"):
        raise Refused(f"instance {instance_id} is {state}")
    return dict(instance)


async def find_group(aws: ClientSource, region: str, vpc_id: str, name: str) -> str | None:
    """The id of the security group called ``name`` in ``vpc_id``, if there is one."""
    return await _group_reader(aws, region).get((vpc_id, name))


def interfaces(instance: dict[str, Any]) -> list[dict[str, Any]]:
    """Network interfaces in device-index order (the primary first)."""
    return sorted(instance.get("NetworkInterfaces", []),
                  key=lambda e: int(e.get("Attachment", {}).get("DeviceIndex", 0)))
