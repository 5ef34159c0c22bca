"""Fleet-wide limits on the fleet's store: two workers sharing DynamoDB act like one.

The containment blast-radius bucket lives in the state store, so however many
workers handle incidents, no more than the configured number of actions happen
per minute of event time; the rest wait for approval.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from pipeline.models import ActionRecord, ActionStatus
from pipeline.stages.contain import build
from pipeline.state.dynamodb import DynamoDbStore
from tests.integration.actions_support import FixedClock, containment, context, incident
from tests.integration.test_actions_contain import key_ref, new_key, status_of

pytestmark = pytest.mark.integration


async def test_two_workers_on_dynamodb_share_one_blast_radius_bucket(boto: Any, aws: Any
                                                                     ) -> None:
    iam = boto("iam")
    keys = [new_key(iam) for _ in range(12)]
    clock = FixedClock()
    store = await DynamoDbStore.open(f"fleet-{uuid.uuid4().hex[:8]}", aws, clock=clock,
                                     create_if_missing=True)
    cfg = containment(["iam.deactivate_access_key"], rate_limit={"actions_per_minute": 5})
    workers = []
    for _ in range(2):
        ctx = context(cfg, store, aws, clock)
        workers.append(build(ctx.config, ctx))

    statuses: list[ActionStatus] = []
    for i, (user, key) in enumerate(keys):
        out = await workers[i % 2].process(incident(key_ref(user, key)))
        statuses += [r.status for r in out if isinstance(r, ActionRecord)]

    assert statuses.count(ActionStatus.VERIFIED) == 5
    assert statuses.count(ActionStatus.AWAITING_APPROVAL) == 7
    assert sum(status_of(iam, u, k) == "Inactive" for u, k in keys) == 5

    # A minute of event time later the bucket has refilled, for both workers.
    clock.advance(60)
    user, key = new_key(iam)
    out = await workers[1].process(incident(key_ref(user, key)))
    assert [r.status for r in out if isinstance(r, ActionRecord)] == [ActionStatus.VERIFIED]
