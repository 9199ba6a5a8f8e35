"""Reading what OSS answers: object headers, ``Content-Range``, error XML and ListObjectsV2 XML.

Pure functions over bytes and header mappings, so they are tested without a server. The parsers raise
plain ``ValueError`` (defusedxml's refusals included) or ``ParseError`` on malformed input;
:mod:`ossmodelconnector.oss.client`, the one place where foreign errors are translated, turns those into the
package's errors. :func:`error_for_status` turns a failed answer into the package's error, with the fix
in its message.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote
from xml.etree.ElementTree import Element, XMLParser

from defusedxml import ElementTree

from ossmodelconnector.errors import (
    CODE_CONNECTION,
    CODE_TIMEOUT,
    AccessDeniedError,
    CredentialsError,
    ObjectChangedError,
    ObjectNotFoundError,
    RequestError,
)
from ossmodelconnector.objects import ObjectInfo

__all__ = [
    "CODE_CONNECTION",
    "CODE_INCOMPLETE",
    "CODE_INVALID_RESPONSE",
    "CODE_TIMEOUT",
    "CODE_TLS",
    "CODE_UNKNOWN_HOST",
    "CREDENTIAL_CODES",
    "REFRESH_CODES",
    "RETRYABLE_CODES",
    "ErrorDetails",
    "Headers",
    "ListPage",
    "check_body_range",
    "error_for_status",
    "object_info_from_headers",
    "parse_content_range",
    "parse_error",
    "parse_list_v2",
    "where",
]

Headers = Mapping[str, str] | Message
"""Response headers: a case-insensitive ``http.client`` message, or any mapping (tests)."""

# Failures below HTTP (resets, timeouts, short bodies) get codes of our own, in the ``code`` attribute
# like the server's codes, so that retry decisions never parse a message. The socket ones live in
# errors.py, because the receive kernel (_fast) raises them too.
CODE_INCOMPLETE = "IncompleteBody"
CODE_INVALID_RESPONSE = "InvalidResponse"
CODE_TLS = "TLSError"
CODE_UNKNOWN_HOST = "UnknownHost"  # the endpoint's name does not resolve: a typo, not worth retrying
RETRYABLE_CODES = frozenset({CODE_CONNECTION, CODE_INCOMPLETE, CODE_TIMEOUT, "SlowDown"})
# The server refused the credentials themselves: re-read them once and retry (STS tokens rotate).
REFRESH_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SecurityTokenExpired",
        "InvalidSecurityToken",
        "ExpiredToken",
        "SignatureDoesNotMatch",
    }
)
CREDENTIAL_CODES = REFRESH_CODES - {"SignatureDoesNotMatch"}
_DEFAULT_CODES = {
    403: "AccessDenied",
    404: "NoSuchKey",
    412: "PreconditionFailed",
    416: "InvalidRange",
    500: "InternalError",
    503: "ServiceUnavailable",
}
_FIXES = {
    "NoSuchKey": "check the key (keys are case-sensitive and taken literally) or list the prefix",
    "NoSuchBucket": "check the bucket name and that the endpoint is in the bucket's region",
    "AccessDenied": "grant this access key read access (oss:GetObject, oss:ListObjects) to the bucket "
    "in its RAM policy, or use credentials that have it",
    "SignatureDoesNotMatch": "the AccessKeySecret does not belong to the AccessKeyId: fix the secret in the "
    "credentials (they were re-read once)",
    "InvalidAccessKeyId": "the AccessKeyId is unknown or disabled, or the STS token is not valid for it: "
    "fix the credentials source (they were re-read once)",
    "InvalidSecurityToken": "the STS SecurityToken is not valid: renew it in the credentials source "
    "(they were re-read once)",
    "SecurityTokenExpired": "the STS token expired and no fresh one was available: renew the credentials "
    "file or provider before the Expiration time",
    "ExpiredToken": "the STS token expired and no fresh one was available: renew the credentials",
    "RequestTimeTooSkewed": "this machine's clock is more than 15 minutes off the server's: sync it (NTP)",
    "InvalidRange": "ask for a byte range inside the object: [0, size)",
}

_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*\Z", re.IGNORECASE)
_ISO8601 = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?Z?\Z")


@dataclass(frozen=True)
class ErrorDetails:
    """The fields of an OSS error response (``<Error><Code>...``); empty strings when absent."""

    code: str = ""
    message: str = ""
    request_id: str = ""
    host_id: str = ""


@dataclass(frozen=True)
class ListPage:
    """One page of a ListObjectsV2 answer.

    Args:
        objects: the objects of this page, in key order.
        common_prefixes: the "sub-folders" (with a delimiter), decoded, in order.
        next_token: the continuation token of the next page, None on the last page.
    """

    objects: list[ObjectInfo] = field(default_factory=list)
    common_prefixes: list[str] = field(default_factory=list)
    next_token: str | None = None


def _text(element: Element | None, tag: str) -> str:
    if element is None:
        return ""
    child = element.find(tag)
    return (child.text or "") if child is not None else ""


def parse_error(body: bytes, headers: Headers) -> ErrorDetails:
    """The error details of a failed response.

    HEAD answers have no body; OSS then sends the error XML base64-encoded in ``x-oss-err``.

    Args:
        body: the response body (may be empty).
        headers: the response headers (a case-insensitive mapping such as ``http.client``'s).

    Returns:
        The parsed details; fields missing from the response are ``""``, and the request id falls back
        to the ``x-oss-request-id`` header.

    Raises:
        ValueError: ``x-oss-err`` is not base64, or the XML holds forbidden constructs (entities).
        ParseError: the body or ``x-oss-err`` is not well-formed XML.
    """
    header_request_id = headers.get("x-oss-request-id") or ""
    if not body:
        encoded = headers.get("x-oss-err")
        if encoded:
            try:
                body = base64.b64decode(encoded, validate=False)
            except binascii.Error as exc:
                raise ValueError(f"x-oss-err is not base64: {exc}") from exc
    if not body.strip():
        return ErrorDetails(request_id=header_request_id)
    root = ElementTree.fromstring(body)
    return ErrorDetails(
        code=_text(root, "Code"),
        message=_text(root, "Message"),
        request_id=_text(root, "RequestId") or header_request_id,
        host_id=_text(root, "HostId"),
    )


def parse_content_range(value: str) -> tuple[int, int, int | None]:
    """Parse ``Content-Range: bytes a-b/total`` into a half-open range and the total size.

    Args:
        value: the header value.

    Returns:
        ``(a, b + 1, total)``; ``total`` is None when the server sent ``*``.

    Raises:
        ValueError: the value is not a satisfied byte range.
    """
    match = _CONTENT_RANGE.match(value)
    if match is None:
        raise ValueError(f"Content-Range {value!r} is not of the form 'bytes a-b/total'")
    first, last, total = match.groups()
    if int(last) < int(first):
        raise ValueError(f"Content-Range {value!r} ends before it starts")
    return int(first), int(last) + 1, None if total == "*" else int(total)


def _http_time(value: str | None) -> float:
    if not value:
        return 0.0
    return parsedate_to_datetime(value).timestamp()


@functools.lru_cache(maxsize=4096)
def _iso_time(value: str) -> float:
    match = _ISO8601.match(value.strip())
    if match is None:
        raise ValueError(f"LastModified {value!r} is not an ISO 8601 UTC time")
    year, month, day, hour, minute, second, fraction = match.groups()
    whole = calendar.timegm((int(year), int(month), int(day), int(hour), int(minute), int(second), 0, 0, 0))
    return whole + (float("0." + fraction) if fraction else 0.0)


def _crc64(value: str | None) -> int | None:
    if value is None or value.strip() == "":
        return None
    return int(value.strip(), 10)


def object_info_from_headers(bucket: str, key: str, headers: Headers) -> ObjectInfo:
    """The :class:`ObjectInfo` described by a HeadObject (or full GetObject) answer.

    Args:
        bucket: the bucket asked for.
        key: the key asked for.
        headers: the response headers.

    Returns:
        Size from ``Content-Length``, ``ETag`` as sent, ``Last-Modified`` as epoch seconds and
        ``x-oss-hash-crc64ecma`` when present.

    Raises:
        ValueError: ``Content-Length`` is missing, or a header is malformed.
    """
    length = headers.get("Content-Length")
    if length is None:
        raise ValueError("the answer has no Content-Length")
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=int(length),
        etag=headers.get("ETag") or "",
        last_modified=_http_time(headers.get("Last-Modified")),
        crc64=_crc64(headers.get("x-oss-hash-crc64ecma")),
    )


def parse_list_v2(bucket: str, body: bytes) -> ListPage:
    """Parse a ListObjectsV2 ``ListBucketResult``; keys and prefixes are URL-decoded when encoded.

    Args:
        bucket: the bucket listed (recorded in each :class:`ObjectInfo`).
        body: the XML body.

    Returns:
        The page: objects, common prefixes, and the next continuation token (None when not truncated).

    Raises:
        ValueError: a field has the wrong form, or the XML holds forbidden constructs.
        ParseError: the XML is not well-formed.
    """
    root = _parse_untrusted_xml(body)
    encoded = _text(root, "EncodingType").lower() == "url"

    def decode(value: str) -> str:
        return unquote(value) if encoded and "%" in value else value

    objects = []
    for item in root.iterfind("Contents"):
        fields = {child.tag: child.text or "" for child in item}
        stamp = fields.get("LastModified", "")
        objects.append(
            ObjectInfo(
                bucket=bucket,
                key=decode(fields.get("Key", "")),
                size=int(fields.get("Size") or "0"),
                etag=fields.get("ETag", ""),
                last_modified=_iso_time(stamp) if stamp else 0.0,
            )
        )
    prefixes = [decode(_text(item, "Prefix")) for item in root.iterfind("CommonPrefixes")]
    truncated = _text(root, "IsTruncated").strip().lower() == "true"
    token = _text(root, "NextContinuationToken")
    if truncated and not token:
        raise ValueError("the listing is truncated but carries no NextContinuationToken")
    return ListPage(objects=objects, common_prefixes=prefixes, next_token=token if truncated else None)


def _parse_untrusted_xml(body: bytes) -> Element:
    """Parse a listing with the C parser, refusing what defusedxml refuses.

    defusedxml's parser runs a Python callback per element, which made a 1000-key page cost ~40 ms
    (measured); listings are large and frequent. The attacks it stops (entity expansion, external
    entities) all need a DTD, and a DTD needs ``<!DOCTYPE``. A body without NUL bytes is not UTF-16/32
    (whose byte-order mark expat would obey), so it is read in an ASCII-compatible encoding and that
    byte search is reliable; a document with a DTD or a NUL byte is refused.
    """
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body or b"\x00" in body:
        raise ValueError(
            "the XML carries a DTD (<!DOCTYPE, <!ENTITY) or NUL bytes (UTF-16/32), which OSS never sends: "
            "refused"
        )
    parser = XMLParser(encoding="utf-8")
    parser.feed(body)
    root: Element = parser.close()
    return root


def check_body_range(status: int, headers: Headers, first: int, end: int) -> None:
    """Check that a successful ranged GET answer carries exactly the bytes ``[first, end)``.

    Args:
        status: 206, or 200 (accepted only when the whole object is exactly the range asked for).
        headers: the answer's headers (``Content-Range``, ``Content-Length``).
        first: the first byte asked for.
        end: one past the last byte asked for.

    Raises:
        ValueError: the answer carries other bytes, or does not say which.
    """
    length = headers.get("Content-Length")
    if status == 206:
        content_range = headers.get("Content-Range")
        if content_range is None:
            raise ValueError("a 206 answer without Content-Range")
        got_first, got_end, _ = parse_content_range(content_range)
        if (got_first, got_end) != (first, end):
            raise ValueError(f"asked for bytes [{first}, {end}), got Content-Range {content_range!r}")
    elif first != 0 or length is None or int(length) != end:
        raise ValueError(f"asked for bytes [{first}, {end}), got the whole object (HTTP 200, Range ignored)")
    if length is None or int(length) != end - first:
        raise ValueError(f"asked for {end - first} bytes, Content-Length is {length!r}")


def where(bucket: str, key: str, rng: tuple[int, int] | None) -> str:
    """``oss://bucket/key`` and the half-open byte range, the way every message names an object."""
    place = f"oss://{bucket}/{key}"
    return f"{place} bytes [{rng[0]}, {rng[1]})" if rng else place


def error_for_status(
    status: int, details: ErrorDetails, method: str, bucket: str, key: str, rng: tuple[int, int] | None
) -> RequestError | CredentialsError:
    """The package's error for a failed OSS answer.

    Args:
        status: the HTTP status (not 2xx).
        details: the parsed error document (:func:`parse_error`).
        method: the HTTP method, for the message.
        bucket: the bucket asked for.
        key: the key asked for ("" for a listing).
        rng: the half-open byte range asked for, if any.

    Returns:
        404 -> :class:`ObjectNotFoundError`; 412 -> :class:`ObjectChangedError`; refused credentials
        (``InvalidAccessKeyId``, ``SecurityTokenExpired``...) -> :class:`CredentialsError`; other 403
        (``AccessDenied``, ``SignatureDoesNotMatch``...) -> :class:`AccessDeniedError`; anything else
        (416 ``InvalidRange``, 5xx...) -> :class:`RequestError`. Each carries bucket, key, range, status,
        code and request id, and a message naming the object, the cause and the fix.
    """
    code = details.code or _DEFAULT_CODES.get(status, f"HTTP{status}")
    said = f": {details.message}" if details.message else ""
    cause = f"HTTP {status} {code}{said}"
    context: dict[str, Any] = {
        "bucket": bucket,
        "key": key,
        "range": rng,
        "status": status,
        "code": code,
        "request_id": details.request_id or None,
    }
    place = where(bucket, key, rng)
    fix = _FIXES.get(code)
    if status == 404:
        return ObjectNotFoundError(
            f"{place} does not exist ({cause}); {fix or _FIXES['NoSuchKey']}", **context
        )
    if status == 412:
        return ObjectChangedError(
            f"{place} changed while it was being read ({cause}: its ETag is no longer the one pinned); "
            "the object was rewritten: open it again to read the new version",
            **context,
        )
    if status == 403 or code in REFRESH_CODES:
        if code in CREDENTIAL_CODES:
            return CredentialsError(f"{method} {place} was refused ({cause}); {fix}", **context)
        return AccessDeniedError(
            f"{method} {place} was refused ({cause}); {fix or _FIXES['AccessDenied']}", **context
        )
    if status >= 500 or status == 429:
        return RequestError(
            f"{method} {place} failed on the server side ({cause}); a transient failure: it is retried",
            **context,
        )
    return RequestError(
        f"{method} {place} was rejected ({cause}); {fix or 'see the server message'}", **context
    )
