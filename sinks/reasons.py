"""Reason codes sinks put in ``Rejected.reason`` / ``SendResult.error``, in one vocabulary.

They become the ``reason`` label of ``sink_failed`` / ``sink_rejected`` and the
``reason`` of dead-letter records, so every sink (HTTP or AWS) uses the same words.

Conventions the fan-out relies on:
- ``SendResult.error`` starts with a reason code, then ``": "`` and detail
  (``"throttled: HTTP 429"``); the code is the ``sink_failed{reason}`` label.
- A rejection whose reason is in ``STOP_REASONS`` (credentials refused, over HTTP or
  AWS) stops the sink: no more requests, later items dead-lettered as
  ``sink_stopped``. So does ``send()`` raising a non-retriable ``RiposteError``.
"""

from __future__ import annotations

# Credentials refused: the fan-out stops the sink instead of retrying into a wall.
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
# AWS error codes that mean the same for the whole sink (not for one item).
AWS_CREDENTIAL_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "AuthorizationError", "UnrecognizedClientException",
    "InvalidClientTokenId", "InvalidSignatureException", "SignatureDoesNotMatch",
    "MissingAuthenticationToken", "no_credentials",
})
STOP_REASONS = frozenset({UNAUTHORIZED, FORBIDDEN}) | AWS_CREDENTIAL_CODES

# Permanent, per item or per request.
BAD_REQUEST = "bad_request"
NOT_FOUND = "not_found"
PAYLOAD_TOO_LARGE = "payload_too_large"
ENTRY_TOO_LARGE = "entry_too_large"
SINK_STOPPED = "sink_stopped"

# Transient.
TIMEOUT = "timeout"
CONNECTION = "connection"
SERVER_ERROR = "server_error"
THROTTLED = "throttled"
ACK_TIMEOUT = "ack_timeout"
