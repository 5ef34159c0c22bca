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
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar, overload
from urllib.parse import unquote, unquote_plus

import orjson

from pipeline.models import Event, ResourceRef
from pipeline.normalizers.cloudtrail import CloudTrailAttributes
from pipeline.normalizers.common import is_mapping

_SERVICE_HOST = re.compile(r"^[a-z0-9][a-z0-9.-]*\.amazonaws\.com(\.cn)?$", re.IGNORECASE)
_AWS_INTERNAL = "aws internal"
# What ipaddress accepts as IPv4: four ASCII decimal octets up to 255, no leading zeros.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

T = TypeVar("T")


class lazy(Generic[T]):
    """Computed on first access, then a plain instance attribute.

    ``functools.cached_property`` takes a lock on every first access (Python < 3.12),
    which costs more than most of these fields; a view is only ever used by the
    task that made it, so no lock is needed. Being a non-data descriptor, once the
    value is in the instance ``__dict__`` later reads never reach ``__get__``.
    """

    def __init__(self, fn: Callable[[Any], T]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> lazy[T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> T | lazy[T]:
        if obj is None:
            return self
        value = self.fn(obj)
        obj.__dict__[self.name] = value
        return value


def _raw_record(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """The CloudTrail record itself: EventBridge puts it under ``detail``."""
    detail = raw.get("detail")
    if is_mapping(detail) and ("detail-type" in raw or "eventName" in detail):
        return detail
    return raw


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if text else None


def ipv4_int(text: str) -> int | None:
    """A dotted-quad IPv4 address as an integer, without building an address object;
    None for anything else (IPv6, padding, leading zeros: see :func:`parse_ip`)."""
    if not _DOTTED_QUAD.fullmatch(text):
        return None
    a, b, c, d = text.split(".")
    return int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d)


def parse_ip(value: str | None) -> IpAddress | None:
    """An IP address, unwrapping IPv4-mapped IPv6 (``::ffff:10.0.0.1``); None if not one."""
    if not value:
        return None
    text = value.strip()
    n = ipv4_int(text)
    if n is not None:  # the usual case, without ipaddress's general parser
        return ipaddress.IPv4Address(n)
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_service_name(value: str | None) -> bool:
    """``ec2.amazonaws.com`` or ``AWS Internal``: a source that is AWS itself, not an IP."""
    if not value or value[-1].isdigit():  # an IP address, as nearly always: neither form
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


def _lookup(attrs: Mapping[str, Any], record: Mapping[str, Any], name: str,
            path: tuple[str, ...]) -> Any:
    """``attrs[name]`` if set, else the value at ``path`` in the raw record (or None)."""
    value = attrs.get(name)
    if value is not None:
        return value
    node: Any = record
    for part in path:
        if not is_mapping(node):
            return None
        node = node.get(part)
    return node


def _pick(attrs: Mapping[str, Any], record: Mapping[str, Any], name: str,
          path: tuple[str, ...]) -> str | None:
    """:func:`_lookup`, as a non-empty string or None (as the normalizer reads it)."""
    value = _lookup(attrs, record, name, path)
    return value if isinstance(value, str) and value else None


# The view's text fields: attribute name -> where the raw record keeps it. The CloudTrail
# normalizer writes each of them as an attribute whenever the record has it.
_TEXT_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("event_name", ("eventName",)),
    ("event_source", ("eventSource",)),
    ("source_ip", ("sourceIPAddress",)),
    ("user_agent", ("userAgent",)),
    ("access_key_id", ("userIdentity", "accessKeyId")),
    ("principal_arn", ("userIdentity", "arn")),
    ("user_type", ("userIdentity", "type")),
    ("user_name", ("userIdentity", "userName")),
    ("session_issuer_arn", ("userIdentity", "sessionContext", "sessionIssuer", "arn")),
    ("invoked_by", ("userIdentity", "invokedBy")),
    ("error_code", ("errorCode",)),
    ("account_id", ("userIdentity", "accountId")),
    ("recipient_account_id", ("recipientAccountId",)),
)


# The request and response, kept as published (any non-null value).
_OBJECT_FIELDS = (("request_parameters", ("requestParameters",)),
                  ("response_elements", ("responseElements",)))


def _completed(attrs: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    """``attrs`` with every field the normalizer writes as it would have written it: from
    the attributes if set there, else from the raw record; left out if neither has one."""
    out = dict(attrs)
    for name, path in _TEXT_FIELDS:
        value = _pick(attrs, record, name, path)
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    for name, path in _OBJECT_FIELDS:
        value = _lookup(attrs, record, name, path)
        if value is not None:
            out[name] = value
    return out


class CloudTrailView:
    """Attributes first, raw record second; every accessor tolerates absence.

    An event the CloudTrail normalizer made carries :class:`CloudTrailAttributes`,
    which hold every text field the record has: the view reads those alone. Any other
    event (built elsewhere, or decoded from an older item) has its attributes completed
    from the raw record first, so both give the same view. The fields nearly every rule
    reads are filled in at once (a dozen dictionary reads cost less than looking each
    up on demand); the rest are computed on first use.
    """

    def __init__(self, event: Event) -> None:
        self.event = event
        attrs: Mapping[str, Any] = event.attributes or {}
        record: Mapping[str, Any] = _raw_record(event.raw or {})
        if attrs.__class__ is not CloudTrailAttributes:
            attrs = _completed(attrs, record)
        self.attrs = attrs
        self.record = record
        get = attrs.get
        self.event_name: str | None = get("event_name")
        self.event_source: str | None = get("event_source")
        self.source_ip: str | None = get("source_ip")
        self.user_agent: str | None = get("user_agent")
        self.access_key_id: str | None = get("access_key_id")
        self.principal_arn: str | None = get("principal_arn")
        self.user_type: str | None = get("user_type")
        self.user_name: str | None = get("user_name")
        self.session_issuer_arn: str | None = get("session_issuer_arn")
        self.invoked_by: str | None = get("invoked_by")
        self.error_code: str | None = get("error_code")
        self.region = event.region or _str_or_none(record.get("awsRegion"))

    # --- generic access -----------------------------------------------------------------
    def _attr(self, name: str, *raw_path: str) -> Any:
        return _lookup(self.attrs, self.record, name, raw_path)

    # --- fields -------------------------------------------------------------------------
    @lazy
    def account_id(self) -> str | None:
        return self.attrs.get("account_id")

    @lazy
    def recipient_account_id(self) -> str | None:
        return self.attrs.get("recipient_account_id")

    @lazy
    def error_message(self) -> str | None:
        return _str_or_none(self.record.get("errorMessage"))

    @lazy
    def request_parameters(self) -> Mapping[str, Any]:
        value = self.attrs.get("request_parameters")
        return value if is_mapping(value) else {}

    @lazy
    def response_elements(self) -> Mapping[str, Any]:
        value = self.attrs.get("response_elements")
        return value if is_mapping(value) else {}

    @lazy
    def from_console(self) -> bool:
        """The session's credentials came from a console sign-in."""
        value = self._attr("session_credential_from_console", "sessionCredentialFromConsole")
        return value is True or str(value).lower() == "true" \
            or (self.user_agent or "").strip().lower() in ("console.amazonaws.com",
                                                           "signin.amazonaws.com")

    @lazy
    def own_account(self) -> str | None:
        """The account the call was made in (whose resource changed)."""
        return self.recipient_account_id or self.event.account or self.account_id

    @lazy
    def ipv4(self) -> int | None:
        """The source address as an integer when it is a plain dotted quad (nearly always),
        else None: matched once here for every rule that looks."""
        return None if self.source_ip is None else ipv4_int(self.source_ip)

    @lazy
    def ip(self) -> IpAddress | None:
        if self.ipv4 is not None:
            return ipaddress.IPv4Address(self.ipv4)
        return parse_ip(self.source_ip)

    # --- judgements shared by several rules ----------------------------------------------
    @lazy
    def succeeded(self) -> bool:
        """No errorCode and, for sign-ins, no ``Failure`` response."""
        if self.error_code:
            return False
        return self.response_elements.get("ConsoleLogin") != "Failure"

    @lazy
    def service_originated(self) -> bool:
        """Made by an AWS service on the principal's behalf, not by a person or program."""
        if self.invoked_by or self.user_type == "AWSService":
            return True
        if is_service_name(self.source_ip):
            return True
        ua = (self.user_agent or "").strip().lower()
        return ua == _AWS_INTERNAL or ua.startswith("aws-internal")

    @lazy
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
