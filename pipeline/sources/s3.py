"""Fetch a gzip object from S3 and inflate it, streamed and capped.

S3 event notifications only *name* a CloudTrail log file; the records are in the
object. The object is read in chunks and inflated as it arrives so that a huge or
hostile object (a gzip bomb) is refused at ``max_bytes`` of *inflated* data
instead of after it has filled memory.

AWS errors are mapped to the error taxonomy in one place: an object that is gone
or that we may not read will never succeed (permanent, dead-lettered with the
reason), throttling, 5xx answers and network trouble will (retriable).
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

from pipeline.aws import AwsClients
from pipeline.errors import PermanentError, RetriableError, RiposteError

log = logging.getLogger(__name__)

# Errors name the stage that asked for the object (dead-letter reasons read "decode:...").
COMPONENT = "decode"
GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip container only; anything else is an error
_CHUNK = 1 << 16

_MISSING = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
_DENIED = frozenset({"AccessDenied", "403", "AllAccessDisabled", "InvalidObjectState",
                     "KMS.AccessDeniedException", "KMS.DisabledException"})
_THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                        "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable",
                        "503", "500"})


def classify_client_error(exc: Exception, bucket: str, key: str) -> RiposteError:
    """Map a botocore ``ClientError`` (or anything else) onto retriable / permanent."""
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    where = f"s3://{bucket}/{key}"
    if code in _MISSING or status == 404:
        return PermanentError(f"{where}: object not found ({code or status})",
                              reason="s3_object_missing", component=COMPONENT)
    if code in _DENIED or status == 403:
        return PermanentError(f"{where}: access denied ({code or status})",
                              reason="s3_access_denied", component=COMPONENT)
    if code in _THROTTLED or status == 429 or status >= 500:
        return RetriableError(f"{where}: {code or status}", reason="s3_unavailable",
                              component=COMPONENT)
    if response:
        # Another 4xx: the request itself is wrong for this object; retrying won't help.
        return PermanentError(f"{where}: {code or status}", reason="s3_error",
                              component=COMPONENT)
    # Connection errors, timeouts, payload errors: transient by nature.
    return RetriableError(f"{where}: {type(exc).__name__}: {exc}", reason="s3_unavailable",
                          component=COMPONENT)


class GzipInflater:
    """Incremental gunzip with a cap on the inflated size (multi-member aware)."""

    def __init__(self, max_bytes: int, where: str) -> None:
        self.max_bytes = max_bytes
        self.where = where
        self._out = bytearray()
        self._d = zlib.decompressobj(_GZIP_WBITS)
        self._started = False
        self._header = b""

    def _bad(self, why: str) -> PermanentError:
        return PermanentError(f"{self.where}: not a valid gzip file ({why})",
                              reason="bad_gzip", component=COMPONENT)

    def feed(self, chunk: bytes) -> None:
        if not self._started:
            self._header += chunk[: 2 - len(self._header)]
            if len(self._header) == 2:
                if self._header != GZIP_MAGIC:
                    raise self._bad("no gzip header")
                self._started = True
        self._feed(chunk)

    def _feed(self, data: bytes) -> None:
        try:
            while data:
                room = self.max_bytes + 1 - len(self._out)
                self._out += self._d.decompress(data, room)
                if len(self._out) > self.max_bytes:
                    raise PermanentError(
                        f"{self.where}: inflates to more than {self.max_bytes} bytes",
                        reason="object_too_large", component=COMPONENT)
                if self._d.eof:
                    data = self._d.unused_data
                    if data:  # another gzip member follows
                        self._d = zlib.decompressobj(_GZIP_WBITS)
                else:
                    data = self._d.unconsumed_tail
        except zlib.error as exc:
            raise self._bad(str(exc)) from exc

    def finish(self) -> bytes:
        if not self._started:
            raise self._bad("empty or too short")
        if not self._d.eof:
            raise self._bad("truncated")
        return bytes(self._out)


def gunzip_capped(data: bytes, max_bytes: int, where: str = "payload") -> bytes:
    """Inflate an in-memory gzip payload (a CloudWatch Logs subscription record)."""
    inflater = GzipInflater(max_bytes, where)
    inflater.feed(data)
    return inflater.finish()


class S3ObjectFetcher:
    """Reads gzip objects through the shared, cached aiobotocore S3 client."""

    def __init__(self, aws: AwsClients, *, region: str | None = None,
                 chunk_size: int = _CHUNK) -> None:
        self.aws = aws
        self.region = region
        self.chunk_size = chunk_size

    async def fetch_gunzipped(self, bucket: str, key: str, *, max_bytes: int,
                              region: str | None = None) -> bytes:
        """The inflated bytes of ``s3://bucket/key``; errors mapped to the taxonomy."""
        where = f"s3://{bucket}/{key}"
        try:
            client = await self.aws.client("s3", region=region or self.region)
            response = await client.get_object(Bucket=bucket, Key=key)
        except RiposteError:
            raise
        except Exception as exc:
            raise classify_client_error(exc, bucket, key) from exc
        length = int(response.get("ContentLength") or 0)
        inflater = GzipInflater(max_bytes, where)
        try:
            async with response["Body"] as stream:
                if length > max_bytes:
                    raise PermanentError(f"{where}: {length} bytes is over the limit "
                                         f"of {max_bytes}", reason="object_too_large",
                                         component=COMPONENT)
                while chunk := await stream.read(self.chunk_size):
                    inflater.feed(chunk)
        except RiposteError:
            raise
        except Exception as exc:
            raise RetriableError(f"{where}: reading the object failed: "
                                 f"{type(exc).__name__}: {exc}", reason="s3_unavailable",
                                 component=COMPONENT) from exc
        data = inflater.finish()
        log.debug("fetched object", extra={"bucket": bucket, "key": key,
                                           "compressed": length, "inflated": len(data)})
        return data
