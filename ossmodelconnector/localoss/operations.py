"""The OSS operations of ``localoss``: one resolved, authenticated request in, one response out.

The server (``server.py``) resolves bucket and key, checks the signature and writes the response; this
module decides what the response is, from the store: GetObject/HeadObject (ranges, conditions),
GetObjectMeta, PutObject, DeleteObject, Put/Delete/HeadBucket, GetBucketLocation, ListObjects (V1, V2)
and GetService. Ranges are half-open ``[start, end)`` here and converted to HTTP's inclusive form only in
``Content-Range``.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from ossmodelconnector.localoss.protocol import BodyReader, HttpRequest, http_date
from ossmodelconnector.localoss.store import DEFAULT_CONTENT_TYPE, ObjectMeta, Store
from ossmodelconnector.localoss.xmlbody import (
    ListingQuery,
    ServiceError,
    decode_token,
    list_buckets_xml,
    list_objects_xml,
    location_xml,
)

__all__ = [
    "DEFAULT_MAX_KEYS",
    "UNSATISFIABLE",
    "Call",
    "Operations",
    "Response",
    "parse_range",
]

DEFAULT_MAX_KEYS = 100
DEFAULT_S3_MAX_KEYS = 1000
MAX_KEYS_LIMIT = 1000
UNSATISFIABLE = (-1, -1)
_XML = "application/xml"
# Sub-resources this server does not implement: answering them as plain GET/PUT would be wrong.
_UNSUPPORTED = frozenset(
    (  # noqa: SIM905 - a word list reads better than 27 quoted lines
        "acl append bucketInfo comp cors delete encryption lifecycle logging policy position qos referer "
        "replication restore select stat symlink tagging uploadId uploads versioning versions website worm "
        "x-oss-process partNumber"
    ).split()
)
_RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}


@dataclass(frozen=True, slots=True)
class Call:
    """One request, resolved: ``key`` is decoded (None for bucket and service requests)."""

    request: HttpRequest
    bucket: str | None
    key: str | None
    query: dict[str, str]
    s3: bool
    body: BodyReader


@dataclass(slots=True)
class Response:
    """What to answer. A file body is ``length`` bytes of ``fd`` from ``offset``; the server closes ``fd``.

    ``send_body`` is false for HEAD (``Content-Length`` still tells the length a GET would carry);
    ``object_body`` marks bodies that fault injection and bandwidth caps apply to.
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    fd: int | None = None
    offset: int = 0
    length: int = 0
    send_body: bool = True
    object_body: bool = False
    close: bool = False

    @property
    def content_length(self) -> int:
        """The ``Content-Length`` to announce."""
        return self.length if self.fd is not None or not self.send_body else len(self.body)


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """Parse a ``Range`` header against an object of ``size`` bytes.

    Returns:
        ``(start, end)`` half-open; None when the header is not a single ``bytes=`` range (the whole
        object is then sent); :data:`UNSATISFIABLE` when it is well-formed but outside the object.
    """
    spec = value.strip()
    if not spec.startswith("bytes=") or "," in spec:
        return None
    first, sep, last = spec[6:].partition("-")
    first, last = first.strip(), last.strip()
    if not sep:
        return None
    if not first:
        if not last.isdigit():
            return None
        suffix = int(last)
        return UNSATISFIABLE if suffix == 0 or size == 0 else (max(0, size - suffix), size)
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return UNSATISFIABLE
    stop = int(last) + 1 if last else size
    return start, min(stop, size)


def _etag_matches(header: str, etag: str) -> bool:
    for candidate in header.split(","):
        candidate = candidate.strip().removeprefix("W/").strip('"')
        if candidate == "*" or candidate.upper() == etag.upper():
            return True
    return False


def _seconds(header: str) -> float | None:
    try:
        return parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, IndexError):
        return None  # an unparsable date is ignored, as HTTP says


def _user_meta(call: Call) -> tuple[tuple[str, str], ...]:
    prefix = "x-amz-meta-" if call.s3 else "x-oss-meta-"
    return tuple(
        sorted((n[len(prefix) :], v) for n, v in call.request.headers.items() if n.startswith(prefix))
    )


def _invalid_argument(name: str, value: str, accepted: str) -> ServiceError:
    return ServiceError(
        400,
        "InvalidArgument",
        f"{name}={value!r} is not valid; {accepted}",
        extra=[("ArgumentName", name), ("ArgumentValue", value)],
    )


class Operations:
    """Answers resolved requests from a :class:`Store`.

    Args:
        store: the folder of objects.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def dispatch(self, call: Call) -> Response:
        """Answer ``call``.

        Raises:
            ServiceError: the OSS error to answer with.
        """
        method = call.request.method
        unsupported = _UNSUPPORTED.intersection(call.query)
        if unsupported or method not in ("GET", "HEAD", "PUT", "DELETE"):
            what = f"sub-resource {sorted(unsupported)[0]!r}" if unsupported else f"method {method}"
            raise ServiceError(501, "NotImplemented", f"localoss does not implement {what}; use OSS for it")
        if call.bucket is None:
            if method != "GET":
                raise ServiceError(405, "MethodNotAllowed", f"{method} / is not allowed; name a bucket")
            return Response(
                200, [("Content-Type", _XML)], list_buckets_xml(self.store.list_buckets(), s3=call.s3)
            )
        if call.key is None:
            return self._bucket(call, method, call.bucket)
        handler: dict[str, Callable[[Call, str, str], Response]] = {
            "GET": self._get,
            "HEAD": self._get,
            "PUT": self._put,
            "DELETE": self._delete,
        }
        return handler[method](call, call.bucket, call.key)

    # -- objects ----------------------------------------------------------------------------------------

    def _object_headers(self, call: Call, meta: ObjectMeta) -> list[tuple[str, str]]:
        etag = meta.etag.lower() if call.s3 else meta.etag
        headers = [
            ("ETag", f'"{etag}"'),
            ("Last-Modified", http_date(meta.mtime_ns / 1e9)),
            ("Content-Type", meta.content_type),
            ("Accept-Ranges", "bytes"),
            ("x-oss-object-type", "Normal"),
            ("x-oss-storage-class", "Standard"),
            ("x-oss-hash-crc64ecma", str(meta.crc64)),
        ]
        prefix = "x-amz-meta-" if call.s3 else "x-oss-meta-"
        headers += [(prefix + name, value) for name, value in meta.user_meta]
        return headers

    def _check_conditions(self, call: Call, meta: ObjectMeta) -> Response | None:
        headers = call.request.headers
        modified_s = meta.mtime_ns // 1_000_000_000  # HTTP dates have whole seconds
        if "if-match" in headers:
            if not _etag_matches(headers["if-match"], meta.etag):
                raise ServiceError(
                    412,
                    "PreconditionFailed",
                    f'object {call.key!r} has ETag "{meta.etag}", not If-Match {headers["if-match"]}; '
                    "it changed since you read its ETag: read it again",
                    extra=[("Condition", "If-Match")],
                )
        elif "if-unmodified-since" in headers:
            since = _seconds(headers["if-unmodified-since"])
            if since is not None and modified_s > since:
                raise ServiceError(
                    412,
                    "PreconditionFailed",
                    f"object {call.key!r} was modified after If-Unmodified-Since; read it again",
                    extra=[("Condition", "If-Unmodified-Since")],
                )
        not_modified = False
        if "if-none-match" in headers:
            not_modified = _etag_matches(headers["if-none-match"], meta.etag)
        elif "if-modified-since" in headers:
            since = _seconds(headers["if-modified-since"])
            not_modified = since is not None and modified_s <= since
        if not_modified:
            kept = {"ETag", "Last-Modified"}
            return Response(304, [h for h in self._object_headers(call, meta) if h[0] in kept])
        return None

    def _get(self, call: Call, bucket: str, key: str) -> Response:
        head = call.request.method == "HEAD"
        opened = self.store.open_object(bucket, key)
        try:
            response = self._answer_get(call, opened.meta, opened.fd, head)
        except BaseException:
            if opened.fd is not None:
                os.close(opened.fd)
            raise
        if opened.fd is not None and response.fd is None:
            os.close(opened.fd)
        return response

    def _answer_get(self, call: Call, meta: ObjectMeta, fd: int | None, head: bool) -> Response:
        headers = self._object_headers(call, meta)
        if head and "objectMeta" in call.query:  # GetObjectMeta: the basic headers, no body
            return Response(200, headers, length=meta.size, send_body=False)
        early = self._check_conditions(call, meta)
        if early is not None:
            return early
        start, end, status = 0, meta.size, 200
        range_header = call.request.headers.get("range")
        if range_header is not None:
            parsed = parse_range(range_header, meta.size)
            standard = call.s3 or call.request.headers.get("x-oss-range-behavior", "").lower() == "standard"
            if parsed == UNSATISFIABLE and standard:
                raise ServiceError(
                    416,
                    "InvalidRange",
                    f"range {range_header!r} is outside object {call.key!r} of {meta.size} bytes; "
                    "ask for bytes below its size",
                    extra=[("RangeRequested", range_header), ("ActualObjectSize", str(meta.size))],
                    headers=[("Content-Range", f"bytes */{meta.size}")],
                )
            if parsed is not None and parsed != UNSATISFIABLE:
                start, end = parsed
                status = 206
                headers.append(("Content-Range", f"bytes {start}-{end - 1}/{meta.size}"))
        for name, header in _RESPONSE_OVERRIDES.items():
            if name in call.query:
                headers = [h for h in headers if h[0] != header] + [(header, call.query[name])]
        if head or fd is None or start == end:
            return Response(status, headers, length=end - start, send_body=not head)
        return Response(status, headers, fd=fd, offset=start, length=end - start, object_body=True)

    def _put(self, call: Call, bucket: str, key: str) -> Response:
        headers = call.request.headers
        if "x-oss-copy-source" in headers or "x-amz-copy-source" in headers:
            raise ServiceError(501, "NotImplemented", "localoss does not implement CopyObject; PUT the bytes")
        if "content-length" not in headers and not call.body.chunked:
            raise ServiceError(
                411, "MissingContentLength", f"PUT of {key!r} has no Content-Length; send one", close=True
            )
        self.store.check_writable(bucket, key)
        expected = None
        if "content-md5" in headers:
            try:
                expected = base64.b64decode(headers["content-md5"], validate=True)
            except binascii.Error:
                expected = b""
            if len(expected) != 16:
                raise ServiceError(
                    400,
                    "InvalidDigest",
                    f"Content-MD5 {headers['content-md5']!r} of object {key!r} is not the base64 of a "
                    "16-byte MD5 digest; send base64(md5(body))",
                )
        meta = self.store.put_object(
            bucket,
            key,
            call.body.readinto,
            expected_md5=expected,
            # OSS answers a mismatch with InvalidDigest (oss2 maps that code); S3 with BadDigest.
            digest_mismatch_code="BadDigest" if call.s3 else "InvalidDigest",
            content_type=headers.get("content-type") or DEFAULT_CONTENT_TYPE,
            user_meta=_user_meta(call),
        )
        md5_b64 = base64.b64encode(bytes.fromhex(meta.etag)).decode("ascii")
        etag = meta.etag.lower() if call.s3 else meta.etag
        return Response(
            200,
            [("ETag", f'"{etag}"'), ("Content-MD5", md5_b64), ("x-oss-hash-crc64ecma", str(meta.crc64))],
        )

    def _delete(self, call: Call, bucket: str, key: str) -> Response:
        self.store.delete_object(bucket, key)
        return Response(204)

    # -- buckets ----------------------------------------------------------------------------------------

    def _bucket(self, call: Call, method: str, bucket: str) -> Response:
        if method == "PUT":
            self.store.create_bucket(bucket)
            return Response(200, [("Location", f"/{bucket}")])
        if method == "DELETE":
            self.store.delete_bucket(bucket)
            return Response(204)
        self.store.require_bucket(bucket)
        if method == "HEAD":
            return Response(200)
        if "location" in call.query:
            return Response(200, [("Content-Type", _XML)], location_xml(s3=call.s3))
        return self._list(call, bucket)

    def _list(self, call: Call, bucket: str) -> Response:
        q = call.query
        text = q.get("max-keys", "")
        if text and not text.isdigit():
            raise _invalid_argument("max-keys", text, f"give an integer from 0 to {MAX_KEYS_LIMIT}")
        default = DEFAULT_S3_MAX_KEYS if call.s3 else DEFAULT_MAX_KEYS
        max_keys = min(int(text), MAX_KEYS_LIMIT) if text else default
        encoding = q.get("encoding-type", "")
        if encoding not in ("", "url"):
            raise _invalid_argument("encoding-type", encoding, "the only encoding is 'url'")
        version = 2 if q.get("list-type") == "2" else 1
        token = q.get("continuation-token", "") if version == 2 else ""
        start_after = q.get("start-after", "") if version == 2 else q.get("marker", "")
        after = decode_token(token) if token else start_after
        query = ListingQuery(
            bucket=bucket,
            prefix=q.get("prefix", ""),
            delimiter=q.get("delimiter", ""),
            max_keys=max_keys,
            url_encoded=encoding == "url",
            version=version,
            after=start_after,
            continuation_token=token,
            fetch_owner=q.get("fetch-owner", "").lower() == "true",
        )
        page = self.store.list_objects(
            bucket, prefix=query.prefix, delimiter=query.delimiter, after=after, max_keys=max_keys
        )
        body = list_objects_xml(
            query,
            page.objects,
            page.prefixes,
            truncated=page.truncated,
            next_after=page.next_after,
            s3=call.s3,
        )
        return Response(200, [("Content-Type", _XML)], body)
