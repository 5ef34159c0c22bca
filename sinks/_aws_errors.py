"""Which AWS failures are worth retrying: decided here, once, for every AWS sink.

A failure is either transient (throttling, a 5xx, a timeout, a dropped
connection: the same request may succeed later, so the items go back as
``retry``) or permanent (validation, access denied, a missing topic or bus: the
same request will fail the same way, so the items are ``rejected`` with the
reason and never retried into a storm). The same codes appear whole-call, as a
botocore ``ClientError``, and per entry, in ``FailedFindings`` / ``Failed`` /
``Entries[].ErrorCode``; both go through :func:`classify_code`.

Unknown codes are permanent when the caller is at fault (4xx, ``SenderFault``)
and transient otherwise, which is how the AWS SDKs' own retry policies read them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from pipeline import metrics
from pipeline.errors import ConfigError, RetriableError, RiposteError
from sinks import reasons

# Error codes AWS services use for "slow down" or "our side failed", across the APIs the
# sinks call (Security Hub answers throttling with LimitExceededException / 429).
RETRY_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "Throttled",
    "RequestThrottled", "RequestThrottledException", "TooManyRequestsException",
    "LimitExceededException", "ProvisionedThroughputExceededException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "SlowDown", "EC2ThrottledException",
    "KMSThrottlingException", "KMSThrottling", "PriorRequestNotComplete",
    "ServiceUnavailable", "ServiceUnavailableException", "InternalError", "InternalFailure",
    "InternalException", "InternalServerError", "InternalServerException",
    "InternalServiceError", "InternalServiceErrorException", "RequestTimeout",
    "RequestTimeoutException", "ExpiredToken", "ExpiredTokenException",
    "IDPCommunicationError", "TransactionInProgressException", "KMSInternal",
})

# Codes that are the caller's fault whatever the HTTP status says.
REJECT_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "InvalidAccessException", "AuthorizationError",
    "UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException",
    "SignatureDoesNotMatch", "MissingAuthenticationToken", "NotAuthorizedForSourceException",
    "NotAuthorizedForDetailTypeException", "ValidationException", "ValidationError",
    "InvalidInput", "InvalidInputException", "InvalidParameter", "InvalidParameterException",
    "InvalidParameterValue", "InvalidArgument", "MalformedDetail", "NotFound",
    "NotFoundException", "ResourceNotFoundException", "InvalidSecurity",
    "KMSDisabled", "KMSNotFound", "KMSAccessDenied", "KMSInvalidState", "KMSOptInRequired",
    "EndpointDisabled", "PlatformApplicationDisabled", "TooManyEntriesInBatchRequest",
    "BatchEntryIdsNotDistinct", "BatchRequestTooLong", "EmptyBatchRequest",
    "InvalidBatchEntryId", "OptInRequired", "UnsupportedOperation",
})


@dataclass(frozen=True, slots=True)
class AwsFailure:
    """One classified failure: ``reason`` is short enough for a metric label."""

    retry: bool
    reason: str
    message: str = ""


def classify_code(code: str | None, *, status: int | None = None,
                  sender_fault: bool | None = None, message: str = "") -> AwsFailure:
    """Classify an AWS error code (whole-call or per-entry)."""
    name = code or (f"http_{status}" if status else "unknown")
    if code in RETRY_CODES:
        return AwsFailure(True, name, message)
    if code in REJECT_CODES:
        return AwsFailure(False, name, message)
    if status is not None:
        if status == 429 or status >= 500:
            return AwsFailure(True, name, message)
        if 400 <= status < 500:
            return AwsFailure(False, name, message)
    if sender_fault is not None:
        return AwsFailure(not sender_fault, name, message)
    lowered = name.lower()
    if "throttl" in lowered or "toomany" in lowered or "internal" in lowered:
        return AwsFailure(True, name, message)
    # An unknown per-entry code with nothing else to go on: retry; the fan-out's retry
    # budget bounds it, while rejecting could drop an item AWS would take later.
    return AwsFailure(True, name, message)


def classify_exception(exc: BaseException) -> AwsFailure:
    """Classify whatever a botocore call raised."""
    if isinstance(exc, RiposteError):
        # Our own hooks (replay's read-only clients refuse mutating calls) say themselves.
        return AwsFailure(exc.retriable, exc.reason, exc.message)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {}) or {}
        meta = exc.response.get("ResponseMetadata", {}) or {}
        status = meta.get("HTTPStatusCode")
        return classify_code(str(error.get("Code") or "") or None,
                             status=int(status) if status else None,
                             message=str(error.get("Message") or exc))
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return AwsFailure(False, "no_credentials", str(exc))
    if isinstance(exc, ParamValidationError):
        return AwsFailure(False, "param_validation", str(exc))
    if isinstance(exc, BotoConnectionError | ConnectionClosedError):
        return AwsFailure(True, "connection", str(exc))
    if isinstance(exc, HTTPClientError):
        # Read timeouts and broken response streams.
        return AwsFailure(True, "http_client", str(exc))
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return AwsFailure(True, "timeout", str(exc) or "timeout")
    if isinstance(exc, OSError):
        return AwsFailure(True, "connection", str(exc))
    if isinstance(exc, BotoCoreError):
        return AwsFailure(True, type(exc).__name__, str(exc))
    return AwsFailure(True, type(exc).__name__, str(exc))


def error_text(failure: AwsFailure) -> str:
    """``SendResult.error`` in the fan-out's convention: a reason code, ``": "``, detail.

    Transient failures use the shared transient vocabulary (``throttled``,
    ``server_error``, ``timeout``, ``connection``) so ``sink_failed{reason}`` reads the
    same for HTTP and AWS sinks; permanent ones keep the AWS code, which is what
    :data:`sinks.reasons.STOP_REASONS` matches credential refusals on.
    """
    code = failure.reason
    if failure.retry:
        lowered = code.lower()
        if "throttl" in lowered or "toomany" in lowered or "limitexceeded" in lowered \
                or code in ("SlowDown", "RequestLimitExceeded", "http_429"):
            code = reasons.THROTTLED
        elif code == "timeout" or "timeout" in lowered:
            code = reasons.TIMEOUT
        elif code in ("connection", "http_client"):
            code = reasons.CONNECTION
        else:
            code = reasons.SERVER_ERROR
        return f"{code}: {failure.reason}: {failure.message}"[:1000]
    return f"{code}: {failure.message}"[:1000]


def healthcheck_error(component: str, what: str, exc: BaseException) -> RiposteError:
    """The error a failed healthcheck raises: config for refusals, retriable for outages.

    ``what`` names the resource (the hub, the topic ARN, the bus) so the message says
    which setting or permission to fix.
    """
    failure = classify_exception(exc)
    if failure.retry:
        return RetriableError(f"{what} unreachable ({failure.reason}): {failure.message}",
                              reason=failure.reason, component=component)
    return ConfigError(
        f"{what} refused the healthcheck ({failure.reason}): {failure.message}; check the "
        "credentials, the IAM permissions and that the resource exists in this account and "
        "region", reason=failure.reason, component=component)


class CallCounters:
    """``riposte_sink_api_calls{sink,operation,result}`` children, bound once per sink.

    ``result`` is ``ok`` (every entry taken), ``partial`` (some entries failed),
    ``retry`` or ``rejected`` (the whole call failed, by classification).
    """

    def __init__(self, sink: str, operation: str) -> None:
        self._children = {result: metrics.SINK_API_CALLS.labels(sink, operation, result)
                          for result in ("ok", "partial", "retry", "rejected")}

    def count(self, result: str) -> None:
        self._children[result].inc()

    def failed(self, failure: AwsFailure) -> None:
        self.count("retry" if failure.retry else "rejected")
