"""XML bodies of ``localoss``: the OSS error document and the listing results, plus the error type itself.

OSS and S3 share these shapes. OSS clients (oss2) look elements up without a namespace, so OSS-dialect
bodies carry none; S3-dialect bodies carry the S3 namespace, which botocore strips. Strings are escaped by
hand rather than through an XML library: a 1000-key listing page is built in a few milliseconds this way.
"""

from __future__ import annotations

import base64
import datetime as _dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote
from xml.sax.saxutils import escape

__all__ = [
    "S3_NAMESPACE",
    "ListedBucket",
    "ListedObject",
    "ListingQuery",
    "ServiceError",
    "decode_token",
    "encode_token",
    "error_xml",
    "iso8601",
    "list_buckets_xml",
    "list_objects_xml",
    "location_xml",
]

S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
DEFAULT_OWNER_ID = "localoss"


class ServiceError(Exception):
    """An OSS error answer: HTTP status, OSS error code and a message naming object, cause and fix.

    Args:
        status: the HTTP status to answer with.
        code: the OSS error code (``NoSuchKey``, ``InvalidObjectName``...).
        message: what happened, to which object, and how to fix it.
        extra: additional ``<Name>value</Name>`` elements of the error document (``Key``, ``BucketName``).
        headers: additional response headers (``Content-Range`` of a 416).
        close: whether the connection must be closed after this answer (the request body was not read).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        extra: Sequence[tuple[str, str]] = (),
        headers: Sequence[tuple[str, str]] = (),
        close: bool = False,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.extra = tuple(extra)
        self.headers = tuple(headers)
        self.close = close


@dataclass(frozen=True, slots=True)
class ListedObject:
    """One ``<Contents>`` entry of a listing."""

    key: str
    size: int
    etag: str
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class ListedBucket:
    """One ``<Bucket>`` entry of GetService."""

    name: str
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class ListingQuery:
    """The request side of a listing, echoed back in the result document.

    ``version`` is 1 (``marker``) or 2 (``continuation-token``/``start-after``); ``after`` is the V1 marker
    or the V2 start-after.
    """

    bucket: str
    prefix: str
    delimiter: str
    max_keys: int
    url_encoded: bool
    version: int = 1
    after: str = ""
    continuation_token: str = ""
    fetch_owner: bool = False


def iso8601(mtime_ns: int) -> str:
    """Format a POSIX time in nanoseconds as OSS listings do: ``2024-05-01T12:00:00.000Z``.

    Milliseconds are always ``000``, as on OSS: oss2 refuses any other value.
    """
    moment = _dt.datetime.fromtimestamp(mtime_ns // 1_000_000_000, tz=_dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def encode_token(last: str) -> str:
    """Make an opaque V2 continuation token from the last key or prefix returned.

    URL-safe base64 without padding, so that url-decoding it (as oss2 does) leaves it unchanged.
    """
    return base64.urlsafe_b64encode(last.encode("utf-8")).decode("ascii").rstrip("=")


def decode_token(token: str) -> str:
    """Inverse of :func:`encode_token`.

    Raises:
        ServiceError: 400 ``InvalidArgument`` when the token was not made by this server.
    """
    try:
        padded = token + "=" * (-len(token) % 4)
        return base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError) as exc:
        raise ServiceError(
            400,
            "InvalidArgument",
            f"continuation-token {token!r} was not issued by this server; pass the NextContinuationToken "
            "of the previous page unchanged",
        ) from exc


def _text(value: str) -> str:
    # XML 1.0 cannot carry most control characters even escaped: show them as \xNN instead.
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", escape(value))


def _maybe_url(value: str, url_encoded: bool) -> str:
    # As S3 encodes: '/' kept, the rest percent-encoded, so unquote and unquote_plus both invert it.
    return quote(value, safe="/") if url_encoded else _text(value)


def _root(name: str, s3: bool) -> str:
    return f'<{name} xmlns="{S3_NAMESPACE}">' if s3 else f"<{name}>"


def error_xml(error: ServiceError, request_id: str, host_id: str) -> bytes:
    """The OSS error document for ``error``."""
    parts = [
        _DECLARATION,
        "<Error>\n",
        f"  <Code>{_text(error.code)}</Code>\n",
        f"  <Message>{_text(error.message)}</Message>\n",
        f"  <RequestId>{_text(request_id)}</RequestId>\n",
        f"  <HostId>{_text(host_id)}</HostId>\n",
    ]
    parts += [f"  <{name}>{_text(value)}</{name}>\n" for name, value in error.extra]
    parts.append("</Error>\n")
    return "".join(parts).encode("utf-8")


def list_objects_xml(
    query: ListingQuery,
    objects: Sequence[ListedObject],
    prefixes: Sequence[str],
    *,
    truncated: bool,
    next_after: str,
    s3: bool,
) -> bytes:
    """``ListBucketResult`` for ListObjects (V1) or ListObjectsV2, depending on ``query.version``."""
    enc = query.url_encoded
    parts = [
        _DECLARATION,
        _root("ListBucketResult", s3),
        f"<Name>{_text(query.bucket)}</Name>",
        f"<Prefix>{_maybe_url(query.prefix, enc)}</Prefix>",
    ]
    if query.version == 1:
        parts.append(f"<Marker>{_maybe_url(query.after, enc)}</Marker>")
    else:
        if query.continuation_token:
            parts.append(f"<ContinuationToken>{_text(query.continuation_token)}</ContinuationToken>")
        if query.after:
            parts.append(f"<StartAfter>{_maybe_url(query.after, enc)}</StartAfter>")
    parts.append(f"<MaxKeys>{query.max_keys}</MaxKeys>")
    if query.version == 2:
        parts.append(f"<KeyCount>{len(objects) + len(prefixes)}</KeyCount>")
    if query.delimiter:
        parts.append(f"<Delimiter>{_maybe_url(query.delimiter, enc)}</Delimiter>")
    if enc:
        parts.append("<EncodingType>url</EncodingType>")
    parts.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
    if truncated and query.version == 1:
        parts.append(f"<NextMarker>{_maybe_url(next_after, enc)}</NextMarker>")
    if truncated and query.version == 2:
        parts.append(f"<NextContinuationToken>{encode_token(next_after)}</NextContinuationToken>")
    # V1 always names the owner (as OSS does); V2 only with fetch-owner=true.
    owner = query.version == 1 or query.fetch_owner
    owner_xml = (
        f"<Owner><ID>{DEFAULT_OWNER_ID}</ID><DisplayName>{DEFAULT_OWNER_ID}</DisplayName></Owner>"
        if owner
        else ""
    )
    for obj in objects:
        parts.append(
            f"<Contents><Key>{_maybe_url(obj.key, enc)}</Key>"
            f"<LastModified>{iso8601(obj.mtime_ns)}</LastModified>"
            f'<ETag>"{obj.etag.lower() if s3 else obj.etag}"</ETag><Type>Normal</Type><Size>{obj.size}</Size>'
            f"<StorageClass>Standard</StorageClass>{owner_xml}</Contents>"
        )
    for prefix in prefixes:
        parts.append(f"<CommonPrefixes><Prefix>{_maybe_url(prefix, enc)}</Prefix></CommonPrefixes>")
    parts.append("</ListBucketResult>\n")
    return "".join(parts).encode("utf-8")


def list_buckets_xml(buckets: Iterable[ListedBucket], *, s3: bool) -> bytes:
    """``ListAllMyBucketsResult`` for GetService."""
    parts = [
        _DECLARATION,
        _root("ListAllMyBucketsResult", s3),
        f"<Owner><ID>{DEFAULT_OWNER_ID}</ID><DisplayName>{DEFAULT_OWNER_ID}</DisplayName></Owner><Buckets>",
    ]
    for bucket in buckets:
        parts.append(
            f"<Bucket><Name>{_text(bucket.name)}</Name><CreationDate>{iso8601(bucket.mtime_ns)}</CreationDate>"
            "<Location>oss-cn-hangzhou</Location><ExtranetEndpoint>127.0.0.1</ExtranetEndpoint>"
            "<IntranetEndpoint>127.0.0.1</IntranetEndpoint><StorageClass>Standard</StorageClass></Bucket>"
        )
    parts.append("</Buckets></ListAllMyBucketsResult>\n")
    return "".join(parts).encode("utf-8")


def location_xml(*, s3: bool) -> bytes:
    """``LocationConstraint`` for GetBucketLocation (S3 says ``us-east-1`` by leaving it empty)."""
    if s3:
        return f'{_DECLARATION}<LocationConstraint xmlns="{S3_NAMESPACE}"></LocationConstraint>\n'.encode()
    return f"{_DECLARATION}<LocationConstraint>oss-cn-hangzhou</LocationConstraint>\n".encode()
