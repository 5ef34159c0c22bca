"""AWS clients that refuse every call that could change anything.

`riposte replay` must never modify an account, whatever its configuration says,
so this is enforced by construction: every client it creates gets a botocore
``before-call`` hook that raises before a request is signed unless the operation
only reads (``Describe*``, ``Get*``, ``List*``, ...). Containment in replay only
plans, and planning only describes.
"""

from __future__ import annotations

from typing import Any

from pipeline.aws import AwsClients
from pipeline.errors import PermanentError

READ_PREFIXES = ("Describe", "Get", "List", "Lookup", "Head", "Search", "BatchGet", "Query",
                 "Scan", "Select", "Check", "Validate", "Simulate", "Estimate", "Preview")
# Not reads, but they change nothing in the account: identity and temporary credentials.
NON_MUTATING = frozenset({"AssumeRole", "GetCallerIdentity", "GetSessionToken"})


class MutatingCallRefused(PermanentError):
    default_reason = "mutating_call_refused"


# Operations that start like a read but are not (License Manager's CheckoutLicense...).
NOT_READS = ("Checkout",)


def is_read_only(operation: str) -> bool:
    """Whether an API operation (its botocore name) only reads; unknown shapes are writes."""
    if operation in NON_MUTATING:
        return True
    return operation.startswith(READ_PREFIXES) and not operation.startswith(NOT_READS)


def _refuse(model: Any, **_: Any) -> None:
    name = getattr(model, "name", str(model))
    if not is_read_only(name):
        service = getattr(getattr(model, "service_model", None), "service_name", "?")
        raise MutatingCallRefused(f"replay refuses the mutating call {service}.{name}")


class ReadOnlyAwsClients(AwsClients):
    """``AwsClients`` whose clients can only read."""

    refused_hook = staticmethod(_refuse)

    async def client(self, service: str, **kwargs: Any) -> Any:
        created = await super().client(service, **kwargs)
        events = created.meta.events
        # register() is idempotent for the same handler and unique id.
        events.register("before-call.*.*", _refuse, unique_id="riposte-readonly")
        return created
