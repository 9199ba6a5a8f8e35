"""Canonical forms of the HMAC-SHA256 signature family: OSS V4 (``OSS4-HMAC-SHA256``) and AWS SigV4.

Pure string functions over plain values: ``ValueError`` for text that cannot be parsed and ``KeyError`` for
a signed header that was not sent are their only errors; :mod:`ossmodelconnector.localoss.auth` drives them
and maps failures onto OSS error codes.

Both schemes sign the same shape (OSS copied AWS and renamed the pieces)::

    canonical request = METHOD \\n URI \\n QUERY \\n HEADERS \\n SIGNED-HEADER-LIST \\n PAYLOAD-HASH
    string to sign    = ALGORITHM \\n TIMESTAMP \\n SCOPE \\n hex(sha256(canonical request))
    signing key       = HMAC chain over (prefix + secret) -> date -> region -> service -> terminator
    signature         = hex(HMAC-SHA256(signing key, string to sign))

They differ in the details that this module keeps apart: OSS V4 rebuilds the URI from the *decoded*
``/bucket/key`` and encodes query pairs without ``=`` for an empty value, signs every ``x-oss-*`` header
plus ``content-type``/``content-md5`` and lists only the *additional* ones; S3 signs the path exactly as
sent and lists every signed header.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, unquote_plus

__all__ = [
    "AWS4_ALGORITHM",
    "OSS4_ALGORITHM",
    "UNSIGNED_PAYLOAD",
    "CredentialScope",
    "aws4_canonical_query",
    "aws4_canonical_requests",
    "aws4_canonical_uris",
    "aws4_header_block",
    "canonical_request",
    "declared_payload_sha256",
    "is_sha256_hex",
    "oss4_canonical_query",
    "oss4_canonical_request",
    "oss4_canonical_uri",
    "oss4_header_block",
    "parse_authorization_fields",
    "parse_iso_basic",
    "sign",
    "string_to_sign",
    "uri_encode",
]

OSS4_ALGORITHM = "OSS4-HMAC-SHA256"
AWS4_ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_HEX = frozenset("0123456789abcdef")

# Headers OSS V4 always signs when present, besides every x-oss-* one (oss2 DEFAULT_SIGNED_HEADERS).
_OSS4_DEFAULT_SIGNED = frozenset({"content-type", "content-md5"})


@dataclass(frozen=True)
class CredentialScope:
    """The ``Credential=`` value: ``<access key id>/<yyyymmdd>/<region>/<service>/<terminator>``.

    Attributes:
        access_key_id: the key id that signed.
        date: ``yyyymmdd`` of the signing key.
        region: region the client signed for (any region is accepted).
        service: ``oss`` for OSS V4 (``oss-cloudbox`` for cloud boxes), ``s3`` for S3.
        terminator: ``aliyun_v4_request`` or ``aws4_request``.
    """

    access_key_id: str
    date: str
    region: str
    service: str
    terminator: str

    @classmethod
    def parse(cls, text: str) -> CredentialScope:
        """Split a credential string; the key id may itself contain ``/``, so split from the right.

        Args:
            text: the ``Credential`` (or ``X-Amz-Credential`` / ``x-oss-credential``) value.

        Returns:
            The parsed scope.

        Raises:
            ValueError: fewer than five parts, an empty part, or a date that is not ``yyyymmdd``.
        """
        parts = text.strip().rsplit("/", 4)
        if len(parts) != 5 or not all(parts):
            raise ValueError(
                f"credential {text!r} is not <AccessKeyId>/<yyyymmdd>/<region>/<service>/<terminator>"
            )
        access_key_id, date, region, service, terminator = parts
        if len(date) != 8 or not date.isdigit():
            raise ValueError(f"credential date {date!r} is not yyyymmdd")
        return cls(access_key_id, date, region, service, terminator)

    @property
    def scope(self) -> str:
        """The scope line of the string to sign (everything after the key id)."""
        return f"{self.date}/{self.region}/{self.service}/{self.terminator}"


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """Percent-encode UTF-8 bytes except the RFC 3986 unreserved set (``A-Za-z0-9-_.~``), upper-case hex.

    Args:
        text: decoded text.
        keep_slash: leave ``/`` as is (paths) instead of ``%2F`` (query keys and values).

    Returns:
        The encoded text, as both OSS V4 and SigV4 define it.
    """
    # quote() always keeps the unreserved set and encodes everything else as UTF-8 %XX.
    return quote(text, safe="/" if keep_slash else "")


def parse_authorization_fields(value: str, algorithm: str) -> dict[str, str]:
    """Parse ``<algorithm> Name=value, Name=value...`` into a dict.

    Args:
        value: the whole ``Authorization`` header.
        algorithm: the expected leading token (:data:`OSS4_ALGORITHM` or :data:`AWS4_ALGORITHM`).

    Returns:
        The fields by name (``Credential``, ``Signature``, ``SignedHeaders``, ``AdditionalHeaders``).

    Raises:
        ValueError: wrong algorithm, a field without ``=``, or a field given twice.
    """
    head, _, rest = value.strip().partition(" ")
    if head != algorithm:
        raise ValueError(f"expected {algorithm!r} at the start, got {head!r}")
    fields: dict[str, str] = {}
    # Clients differ in the separator (", " from botocore and oss2, "," from others): split on commas only.
    for item in rest.split(","):
        item = item.strip()
        if not item:
            continue
        name, eq, field_value = item.partition("=")
        if not eq:
            raise ValueError(f"field {item!r} has no '='")
        if name in fields:
            raise ValueError(f"field {name!r} appears twice")
        fields[name.strip()] = field_value.strip()
    return fields


def parse_iso_basic(text: str) -> float:
    """Parse ``yyyymmddThhmmssZ`` (``x-oss-date``, ``x-amz-date``) into POSIX seconds.

    Args:
        text: the timestamp.

    Returns:
        Seconds since the epoch, UTC.

    Raises:
        ValueError: the text is not in that exact format.
    """
    if len(text) != 16 or text[8] != "T" or text[15] != "Z":
        raise ValueError(f"timestamp {text!r} is not yyyymmddThhmmssZ")
    return float(calendar.timegm(time.strptime(text, "%Y%m%dT%H%M%SZ")))


def oss4_canonical_uri(bucket: str | None, key: str | None) -> str:
    """``/bucket/key`` from the *decoded* names, ``/`` kept, everything else encoded (oss2 ``AuthV4``).

    Args:
        bucket: the bucket, ``None`` for service-level requests (``/``).
        key: the decoded key, ``None`` or ``""`` for bucket-level requests (``/bucket/``).

    Returns:
        The canonical URI line.
    """
    if not bucket:
        return "/"
    return uri_encode(f"/{bucket}/{key or ''}", keep_slash=True)


def oss4_canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """Every query parameter, encoded, sorted by encoded name; an empty value gives ``name`` alone.

    Args:
        params: decoded ``(name, value)`` pairs (a later duplicate replaces an earlier one, as in the
            dict oss2 signs from).

    Returns:
        The canonical query line.
    """
    encoded = {uri_encode(k, keep_slash=False): uri_encode(v, keep_slash=False) for k, v in params}
    return "&".join(f"{k}={v}" if v else k for k, v in sorted(encoded.items()))


def oss4_header_block(headers: Mapping[str, str], additional: Iterable[str]) -> tuple[str, str]:
    """Canonical headers and the additional-headers line of OSS V4.

    Args:
        headers: request headers, names lower-cased.
        additional: the names from ``AdditionalHeaders`` / ``x-oss-additional-headers``.

    Returns:
        ``(header lines each ending in "\\n", sorted additional names joined by ";")``.
    """
    extra = {name.strip().lower() for name in additional if name.strip()}
    signed = sorted(
        (name, value)
        for name, value in headers.items()
        if name.startswith("x-oss-") or name in _OSS4_DEFAULT_SIGNED or name in extra
    )
    return "".join(f"{name}:{value}\n" for name, value in signed), ";".join(sorted(extra))


def aws4_header_block(headers: Mapping[str, str], signed_names: Sequence[str]) -> str:
    """Canonical headers of SigV4: ``name:trimmed value`` for each listed name, in the listed order.

    Args:
        headers: request headers, names lower-cased.
        signed_names: the ``SignedHeaders`` list as the client sent it.

    Returns:
        The header lines, each ending in ``"\\n"``.

    Raises:
        KeyError: a listed header is absent from the request.
    """
    # "Trimall": strip and collapse inner runs of white space to one space (botocore _header_value).
    return "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in signed_names)


def aws4_canonical_uris(raw_path: str) -> list[str]:
    """Candidate canonical URIs for S3: the path as sent first, then its re-encoding per AWS rules.

    S3 does not normalise or double-encode; a client that encodes exactly the AWS way (botocore, the Go
    and C++ SDKs) signs the path it sends. A client that sends a character raw but signed it encoded (or
    the reverse) is matched by the second form.

    Args:
        raw_path: the path as on the request line, still percent-encoded.

    Returns:
        One or two distinct candidate URIs.
    """
    candidates = [raw_path or "/"]
    try:
        reencoded = uri_encode(unquote(raw_path, errors="strict"), keep_slash=True) or "/"
    except UnicodeDecodeError:
        return candidates
    if reencoded not in candidates:
        candidates.append(reencoded)
    return candidates


def aws4_canonical_query(raw_query: str, *, exclude: Iterable[str] = ()) -> list[str]:
    """Candidate canonical query strings for SigV4, the AWS rule first.

    The AWS rule decodes each name and value and re-encodes it (unreserved set only, ``%20`` for a
    space), sorts by name then value, and writes ``name=value`` even for an empty value. Two fallbacks
    keep odd clients working: ``+`` taken literally rather than as a space, and the pieces exactly as sent
    (what botocore signs when the query is already in the URL).

    Args:
        raw_query: the query exactly as on the wire.
        exclude: parameter names (as sent) to leave out, e.g. ``X-Amz-Signature``.

    Returns:
        One to three distinct candidates.
    """
    skip = set(exclude)
    pieces: list[tuple[str, str]] = []
    for piece in raw_query.split("&"):
        name, _, value = piece.partition("=")
        if piece and name not in skip:
            pieces.append((name, value))
    candidates: list[str] = []
    for decode in (unquote_plus, unquote, None):
        pairs: list[tuple[str, str]] = []
        try:
            for k, v in pieces:
                if decode is None:
                    pairs.append((k, v))
                else:
                    pairs.append(
                        (
                            uri_encode(decode(k, errors="strict"), keep_slash=False),
                            uri_encode(decode(v, errors="strict"), keep_slash=False),
                        )
                    )
        except UnicodeDecodeError:
            continue
        line = "&".join(f"{k}={v}" for k, v in sorted(pairs))
        if line not in candidates:
            candidates.append(line)
    return candidates


def canonical_request(
    method: str, uri: str, query: str, header_block: str, header_list: str, payload_hash: str
) -> str:
    """Join the six canonical-request lines (the header block already ends in a newline).

    Args:
        method: HTTP method, upper-case.
        uri: canonical URI.
        query: canonical query.
        header_block: canonical header lines, each ending in ``"\\n"``.
        header_list: ``SignedHeaders`` (SigV4) or sorted ``AdditionalHeaders`` (OSS V4).
        payload_hash: hex SHA-256 of the body, or ``UNSIGNED-PAYLOAD``.

    Returns:
        The canonical request.
    """
    return f"{method}\n{uri}\n{query}\n{header_block}\n{header_list}\n{payload_hash}"


def string_to_sign(algorithm: str, timestamp: str, scope: str, canonical: str) -> str:
    """The four-line string to sign.

    Args:
        algorithm: :data:`OSS4_ALGORITHM` or :data:`AWS4_ALGORITHM`.
        timestamp: ``yyyymmddThhmmssZ`` as the client sent it.
        scope: :attr:`CredentialScope.scope`.
        canonical: the canonical request.

    Returns:
        The string to sign.
    """
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{algorithm}\n{timestamp}\n{scope}\n{digest}"


def sign(secret: str, scope: CredentialScope, text: str) -> str:
    """Derive the signing key for ``scope`` and return the hex signature of ``text``.

    Args:
        secret: the access key secret.
        scope: the credential scope; its terminator picks the key prefix (``aliyun_v4`` or ``AWS4``).
        text: the string to sign.

    Returns:
        Lower-case hex HMAC-SHA256.
    """
    prefix = "AWS4" if scope.terminator == "aws4_request" else "aliyun_v4"
    key = (prefix + secret).encode("utf-8")
    for part in (scope.date, scope.region, scope.service, scope.terminator):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return hmac.new(key, text.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def oss4_canonical_request(
    method: str,
    bucket: str | None,
    key: str | None,
    params: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    additional: str,
    payload_hash: str,
) -> str:
    """The canonical request of OSS V4, as oss2 ``ProviderAuthV4`` builds it.

    Args:
        method: HTTP method.
        bucket: the bucket, ``None`` for the service.
        key: the decoded key, ``None`` for bucket-level requests.
        params: decoded query pairs (without ``x-oss-signature`` for presigned URLs).
        headers: request headers, names lower-cased.
        additional: the ``AdditionalHeaders`` value (``;``-separated, may be empty).
        payload_hash: ``x-oss-content-sha256`` or ``UNSIGNED-PAYLOAD``.

    Returns:
        The canonical request.
    """
    header_block, header_list = oss4_header_block(headers, additional.split(";"))
    uri, query = oss4_canonical_uri(bucket, key), oss4_canonical_query(params)
    return canonical_request(method, uri, query, header_block, header_list, payload_hash)


def aws4_canonical_requests(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    signed_headers: str,
    payload_hash: str,
    exclude: Iterable[str] = (),
) -> list[str]:
    """Every canonical request a correct S3 SigV4 client may have signed, the AWS rule first.

    Args:
        method: HTTP method.
        raw_path: the path as sent.
        raw_query: the query as sent.
        headers: request headers, names lower-cased.
        signed_headers: the ``SignedHeaders`` value as sent.
        payload_hash: ``x-amz-content-sha256`` (or ``UNSIGNED-PAYLOAD`` for presigned URLs).
        exclude: query parameters to leave out (``X-Amz-Signature`` for presigned URLs).

    Returns:
        Candidates from :func:`aws4_canonical_uris` x :func:`aws4_canonical_query`.

    Raises:
        KeyError: a signed header is absent from the request.
    """
    names = [name.strip().lower() for name in signed_headers.split(";") if name.strip()]
    header_block = aws4_header_block(headers, names)
    return [
        canonical_request(method, uri, query, header_block, signed_headers, payload_hash)
        for uri in aws4_canonical_uris(raw_path)
        for query in aws4_canonical_query(raw_query, exclude=exclude)
    ]


def is_sha256_hex(text: str) -> bool:
    """Whether ``text`` is a lower-case hex SHA-256 digest (64 characters).

    Args:
        text: a payload-hash header value.

    Returns:
        ``True`` for a digest, ``False`` for ``UNSIGNED-PAYLOAD``, ``STREAMING-...`` or garbage.
    """
    return len(text) == 64 and set(text) <= _HEX


def declared_payload_sha256(headers: Mapping[str, str]) -> str | None:
    """The body hash a V4 client signed, which the server must check the received body against.

    Args:
        headers: the request headers (any case).

    Returns:
        The lower-case hex SHA-256 from ``x-amz-content-sha256`` or ``x-oss-content-sha256``, or ``None``
        when the client did not sign the body (``UNSIGNED-PAYLOAD``, no such header, OSS V1).
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    for name in ("x-amz-content-sha256", "x-oss-content-sha256"):
        value = lowered.get(name, "").strip().lower()
        if is_sha256_hex(value):
            return value
    return None
