"""A read-only view of one CloudTrail call, whatever shape the normalized event has.

Rules read fields through this view rather than from ``event.attributes`` or
``event.raw`` directly: normalize provides the common fields as attributes, but an
event built by an older normalizer (or replayed from an archive) may lack some,
and then the view falls back to the raw record. One place knows both shapes, so
every rule stays a few lines of policy.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from functools import cached_property
from typing import Any
from urllib.parse import unquote, unquote_plus

import orjson

from pipeline.models import Event, ResourceRef

_SERVICE_HOST = re.compile(r"^[a-z0-9][a-z0-9.-]*\.amazonaws\.com(\.cn)?$", re.IGNORECASE)
_AWS_INTERNAL = "aws internal"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _raw_record(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """The CloudTrail record itself: EventBridge puts it under ``detail``."""
    detail = raw.get("detail")
    if isinstance(detail, Mapping) and ("detail-type" in raw or "eventName" in detail):
        return detail
    return raw


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if text else None


def parse_ip(value: str | None) -> IpAddress | None:
    """An IP address, unwrapping IPv4-mapped IPv6 (``::ffff:10.0.0.1``); None if not one."""
    if not value:
        return None
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_service_name(value: str | None) -> bool:
    """``ec2.amazonaws.com`` or ``AWS Internal``: a source that is AWS itself, not an IP."""
    if not value:
        return False
    return value.strip().lower() == _AWS_INTERNAL or bool(_SERVICE_HOST.match(value.strip()))


def load_policy(value: Any) -> Any:
    """A policy document as CloudTrail logs it: a dict, a JSON string, or URL-encoded JSON
    (``%7B%22Version%22...``, sometimes with ``+`` for spaces). None if unreadable."""
    if isinstance(value, Mapping):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    candidates = [text] if text.startswith(("{", "[")) else []
    candidates += [unquote(text), unquote_plus(text)]
    for candidate in candidates:
        try:
            return orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
    return None


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


class CloudTrailView:
    """Attributes first, raw record second; every accessor tolerates absence."""

    def __init__(self, event: Event) -> None:
        self.event = event
        self.attrs: Mapping[str, Any] = event.attributes or {}
        self.record: Mapping[str, Any] = _raw_record(event.raw or {})

    # --- generic access -----------------------------------------------------------------
    def _identity(self) -> Mapping[str, Any]:
        ident = self.record.get("userIdentity")
        return ident if isinstance(ident, Mapping) else {}

    def _attr(self, name: str, *raw_path: str) -> Any:
        if name in self.attrs and self.attrs[name] is not None:
            return self.attrs[name]
        node: Any = self.record
        for part in raw_path:
            if not isinstance(node, Mapping):
                return None
            node = node.get(part)
        return node

    # --- fields -------------------------------------------------------------------------
    @cached_property
    def event_name(self) -> str | None:
        return _str_or_none(self._attr("event_name", "eventName"))

    @cached_property
    def event_source(self) -> str | None:
        return _str_or_none(self._attr("event_source", "eventSource"))

    @cached_property
    def source_ip(self) -> str | None:
        return _str_or_none(self._attr("source_ip", "sourceIPAddress"))

    @cached_property
    def user_agent(self) -> str | None:
        return _str_or_none(self._attr("user_agent", "userAgent"))

    @cached_property
    def access_key_id(self) -> str | None:
        return _str_or_none(self._attr("access_key_id", "userIdentity", "accessKeyId"))

    @cached_property
    def principal_arn(self) -> str | None:
        return _str_or_none(self._attr("principal_arn", "userIdentity", "arn"))

    @cached_property
    def user_type(self) -> str | None:
        return _str_or_none(self._attr("user_type", "userIdentity", "type"))

    @cached_property
    def user_name(self) -> str | None:
        return _str_or_none(self._attr("user_name", "userIdentity", "userName"))

    @cached_property
    def account_id(self) -> str | None:
        return _str_or_none(self._attr("account_id", "userIdentity", "accountId"))

    @cached_property
    def recipient_account_id(self) -> str | None:
        return _str_or_none(self._attr("recipient_account_id", "recipientAccountId"))

    @cached_property
    def session_issuer_arn(self) -> str | None:
        return _str_or_none(self._attr("session_issuer_arn", "userIdentity", "sessionContext",
                                       "sessionIssuer", "arn"))

    @cached_property
    def error_code(self) -> str | None:
        return _str_or_none(self._attr("error_code", "errorCode"))

    @cached_property
    def error_message(self) -> str | None:
        return _str_or_none(self.record.get("errorMessage"))

    @cached_property
    def request_parameters(self) -> Mapping[str, Any]:
        value = self._attr("request_parameters", "requestParameters")
        return value if isinstance(value, Mapping) else {}

    @cached_property
    def response_elements(self) -> Mapping[str, Any]:
        value = self._attr("response_elements", "responseElements")
        return value if isinstance(value, Mapping) else {}

    @cached_property
    def invoked_by(self) -> str | None:
        return _str_or_none(self._attr("invoked_by", "userIdentity", "invokedBy"))

    @cached_property
    def region(self) -> str | None:
        return self.event.region or _str_or_none(self.record.get("awsRegion"))

    @cached_property
    def from_console(self) -> bool:
        """The session's credentials came from a console sign-in."""
        value = self._attr("session_credential_from_console", "sessionCredentialFromConsole")
        return value is True or str(value).lower() == "true" \
            or (self.user_agent or "").strip().lower() in ("console.amazonaws.com",
                                                           "signin.amazonaws.com")

    @cached_property
    def own_account(self) -> str | None:
        """The account the call was made in (whose resource changed)."""
        return self.recipient_account_id or self.event.account or self.account_id

    @cached_property
    def ip(self) -> IpAddress | None:
        return parse_ip(self.source_ip)

    # --- judgements shared by several rules ----------------------------------------------
    @cached_property
    def succeeded(self) -> bool:
        """No errorCode and, for sign-ins, no ``Failure`` response."""
        if self.error_code:
            return False
        return self.response_elements.get("ConsoleLogin") != "Failure"

    @cached_property
    def service_originated(self) -> bool:
        """Made by an AWS service on the principal's behalf, not by a person or program."""
        if self.invoked_by or self.user_type == "AWSService":
            return True
        if is_service_name(self.source_ip):
            return True
        ua = (self.user_agent or "").strip().lower()
        return ua == _AWS_INTERNAL or ua.startswith("aws-internal")

    @cached_property
    def subject(self) -> str | None:
        """Who to baseline: the role behind a session, else the principal, else the key."""
        if self.user_type == "AssumedRole" and self.session_issuer_arn:
            return self.session_issuer_arn
        return self.principal_arn or self.access_key_id or self.user_name

    def principal_resource(self) -> ResourceRef | None:
        account = self.account_id or self.event.account
        if self.user_type == "Root":
            acct = account or "unknown"
            return ResourceRef("aws.account", acct, arn=self.principal_arn, account=account)
        if self.user_type == "IAMUser" and (self.user_name or self.principal_arn):
            name = self.user_name or (self.principal_arn or "").rsplit("/", 1)[-1]
            return ResourceRef("iam.user", name, arn=self.principal_arn, account=account)
        if self.user_type == "AssumedRole":
            role_arn = self.session_issuer_arn
            if role_arn:
                return ResourceRef("iam.role", role_arn.rsplit("/", 1)[-1], arn=role_arn,
                                   account=account,
                                   details={"session_arn": self.principal_arn})
        if self.principal_arn:
            return ResourceRef("other", self.principal_arn, arn=self.principal_arn,
                               account=account)
        return None

    def access_key_resource(self) -> ResourceRef | None:
        if not self.access_key_id:
            return None
        return ResourceRef("iam.access_key", self.access_key_id,
                           account=self.account_id or self.event.account,
                           details={"principal_arn": self.principal_arn,
                                    "user_name": self.user_name})
