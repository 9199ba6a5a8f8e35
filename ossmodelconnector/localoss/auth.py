"""Signature verification for ``localoss``: pure logic, no sockets.

The HTTP server resolves the bucket and the decoded key, then hands the request over::

    IncomingRequest ─> verify() ─ the Authorization header or the query names the scheme
        "OSS AK:sig"                          -> oss-v1            HMAC-SHA1 (oss2 Auth, StsAuth)
        ?OSSAccessKeyId&Expires&Signature     -> oss-v1-presigned  (oss2 Bucket.sign_url)
        "OSS4-HMAC-SHA256 Credential=..."     -> oss-v4            (oss2 AuthV4, ProviderAuthV4)
        ?x-oss-signature-version=OSS4-...     -> oss-v4-presigned
        "AWS4-HMAC-SHA256 Credential=..."     -> aws-v4            (boto3, rclone, Run:ai streamer)
        ?X-Amz-Algorithm=AWS4-HMAC-SHA256     -> aws-v4-presigned  (generate_presigned_url)
    each scheme: access key id -> security token -> clock -> signature (hmac.compare_digest)
    -> the scheme's name, or AuthError(status, code, message) that the server renders as OSS error XML.

The V4 family's canonical forms live in :mod:`ossmodelconnector.localoss.auth_v4`.
"""

from __future__ import annotations

import base64
import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote_plus

from ossmodelconnector.errors import ConfigError
from ossmodelconnector.localoss import auth_v4
from ossmodelconnector.localoss.auth_v4 import UNSIGNED_PAYLOAD, declared_payload_sha256

__all__ = [
    "DEFAULT_MAX_PRESIGN_EXPIRES_S",
    "DEFAULT_MAX_SKEW_S",
    "OSS_V1_SUBRESOURCES",
    "AuthError",
    "IncomingRequest",
    "ServerCredentials",
    "declared_payload_sha256",
    "verify",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_SKEW_S = 15 * 60
"""How far a signed request's time may be from the server's clock, in seconds (OSS and S3 allow 15 min)."""

DEFAULT_MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600
"""The longest validity a V4 presigned URL may ask for, in seconds (7 days, as OSS and S3)."""

# The query parameters OSS V1 signs (copied from oss2 ProviderAuth._subresource_key_set, which a unit test
# keeps in step); every other parameter (prefix, marker, max-keys...) is left out of the signature.
OSS_V1_SUBRESOURCES = frozenset(
    {
        "response-content-type", "response-content-language", "response-cache-control", "logging",
        "response-content-encoding", "acl", "uploadId", "uploads", "partNumber", "group", "link", "delete",
        "website", "location", "objectInfo", "objectMeta", "response-expires", "response-content-disposition",
        "cors", "lifecycle", "restore", "qos", "referer", "stat", "bucketInfo", "append", "position",
        "security-token", "live", "comp", "status", "vod", "startTime", "endTime", "x-oss-process", "symlink",
        "callback", "callback-var", "tagging", "encryption", "versions", "versioning", "versionId", "policy",
        "requestPayment", "x-oss-traffic-limit", "qosInfo", "asyncFetch", "x-oss-request-payer", "sequential",
        "inventory", "inventoryId", "continuation-token", "worm", "wormId", "wormExtend", "replication",
        "replicationLocation", "replicationProgress", "transferAcceleration", "cname", "metaQuery",
        "x-oss-ac-source-ip", "x-oss-ac-subnet-mask", "x-oss-ac-vpc-id", "x-oss-ac-forward-allow",
        "resourceGroup", "style", "styleName", "x-oss-async-process", "regionList",
        "x-oss-write-get-object-response", "bucketArchiveDirectRead", "httpsConfig", "redundancyTransition",
        "x-oss-target-redundancy-type", "x-oss-redundancy-transition-taskid", "accessPoint",
        "accessPointPolicy", "publicAccessBlock", "x-oss-access-point-name", "requesterQosInfo",
        "qosRequester", "resourcePoolInfo", "resourcePool", "resourcePoolBuckets",
    }
)  # fmt: skip

# Where each client family puts a security token (the signed place comes first in each scheme).
_TOKEN_HEADERS = ("x-oss-security-token", "x-amz-security-token")
_TOKEN_PARAMS = ("security-token", "x-oss-security-token", "X-Amz-Security-Token")


@dataclass(frozen=True, repr=False)
class ServerCredentials:
    """The one key pair (and optional STS token) a ``localoss`` server accepts.

    Attributes:
        access_key_id: the key id clients must sign with.
        access_key_secret: the secret; never in a repr, a log line or an error message.
        sts_token: when set, every request must carry exactly this security token
            (``x-oss-security-token`` / ``x-amz-security-token`` header or ``security-token``,
            ``x-oss-security-token``, ``X-Amz-Security-Token`` query parameter).
        sts_tokens: when set (``--sts-token-file``), the tokens accepted instead, each with the epoch
            second it expires at (None: never); an expired one is refused with ``SecurityTokenExpired``.

    Raises:
        ConfigError: the key id or the secret is empty, or the token is empty but not ``None``.
    """

    access_key_id: str
    access_key_secret: str
    sts_token: str | None = None
    sts_tokens: Mapping[str, float | None] | None = None

    def __post_init__(self) -> None:
        if not self.access_key_id or not self.access_key_secret:
            raise ConfigError(
                "localoss ServerCredentials need a non-empty access_key_id and access_key_secret; "
                "pass both (the defaults live in tests/localoss_harness.py)"
            )
        if self.sts_token == "":
            raise ConfigError("localoss ServerCredentials.sts_token is empty; pass None for no token")

    def __repr__(self) -> str:
        token = "None" if self.sts_token is None and self.sts_tokens is None else "'***'"
        name = type(self).__name__
        return f"{name}(access_key_id={self.access_key_id!r}, access_key_secret='***', sts_token={token})"


@dataclass(frozen=True)
class IncomingRequest:
    """What the server read off the wire, before it touched the body.

    Attributes:
        method: ``GET``, ``PUT``...
        raw_path: the path exactly as on the request line, still percent-encoded, without the query.
        raw_query: the query exactly as on the wire, ``""`` if none.
        headers: the request headers, names lower-cased, values as received (decoded as UTF-8 with
            ``surrogateescape`` when not ASCII, so that their bytes are what the client signed).
        bucket: the bucket the server resolved (path style or virtual-hosted), ``None`` for the service.
        key: the decoded object key, ``None`` for bucket-level requests.
    """

    method: str
    raw_path: str
    raw_query: str
    headers: Mapping[str, str]
    bucket: str | None
    key: str | None


class AuthError(Exception):
    """A request failed authentication; the server answers with ``status`` and an OSS error XML body.

    Args:
        status: HTTP status (400 or 403).
        code: OSS error code (``AccessDenied``, ``SignatureDoesNotMatch``...).
        message: what was wrong with which request, and the fix; never a secret.
        details: extra elements for the error XML (``StringToSign``, ``SignatureProvided``...).
    """

    def __init__(
        self, status: int, code: str, message: str, *, details: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.details: dict[str, str] = dict(details or {})

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status, self.code, self.message), {"details": self.details})

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


@dataclass(frozen=True)
class _Parsed:
    """The request with its headers lower-cased and its query decoded once."""

    request: IncomingRequest
    headers: dict[str, str]
    params: dict[str, str]  # decoded; a repeated name keeps its last value, as a dict-built client sends
    pairs: tuple[tuple[str, str], ...]
    now: float
    max_skew_s: float

    @property
    def what(self) -> str:
        r = self.request
        if not r.bucket:
            return "the service"
        return f"object '{r.bucket}/{r.key}'" if r.key else f"bucket '{r.bucket}'"


def verify(
    request: IncomingRequest,
    creds: ServerCredentials,
    *,
    now: float | None = None,
    max_skew_s: float = DEFAULT_MAX_SKEW_S,
) -> str:
    """Check a request's signature against the server's credentials.

    Args:
        request: the request as received.
        creds: the credentials the server accepts.
        now: the server time in POSIX seconds (``time.time()`` if ``None``); tests pass it to move the clock.
        max_skew_s: allowed distance between the request's signing time and ``now``.

    Returns:
        The scheme that matched: ``"oss-v1"``, ``"oss-v1-presigned"``, ``"oss-v4"``,
        ``"oss-v4-presigned"``, ``"aws-v4"`` or ``"aws-v4-presigned"``.

    Raises:
        AuthError: 403 ``AccessDenied`` (anonymous, expired URL, no valid date), ``InvalidAccessKeyId``,
            ``SignatureDoesNotMatch``, ``InvalidSecurityToken``, ``RequestTimeTooSkewed``; 400
            ``InvalidArgument`` (malformed or unsupported authorization), ``NotImplemented``
            (aws-chunked uploads).

    Example:
        >>> creds = ServerCredentials("ak", "secret")
        >>> req = IncomingRequest("GET", "/b/k", "", {}, "b", "k")
        >>> try:
        ...     verify(req, creds)
        ... except AuthError as exc:
        ...     print(exc.status, exc.code)
        403 AccessDenied
    """
    p = _parse(request, time.time() if now is None else now, max_skew_s)
    authorization = p.headers.get("authorization", "").strip()
    presigned = _presigned_scheme(p)
    if authorization and presigned:
        raise _invalid(
            f"the request for {p.what} has both an Authorization header and a {presigned} query; send one"
        )
    if authorization:
        scheme = authorization.partition(" ")[0]
        if scheme == "OSS":
            return _verify_oss_v1(p, creds, authorization)
        if scheme in (auth_v4.OSS4_ALGORITHM, auth_v4.AWS4_ALGORITHM):
            return _verify_v4(p, creds, authorization, aws=scheme == auth_v4.AWS4_ALGORITHM)
        raise _invalid(
            f"the Authorization scheme {scheme[:32]!r} of the request for {p.what} is malformed or not "
            "supported by localoss; sign with OSS V1 (oss2.Auth), OSS V4 (oss2.AuthV4) or AWS SigV4 (s3v4)"
        )
    if presigned == "oss-v1-presigned":
        return _verify_oss_v1(p, creds, None)
    if presigned is not None:
        return _verify_v4(p, creds, None, aws=presigned == "aws-v4-presigned")
    raise _deny(
        "AccessDenied",
        f"anonymous access is forbidden for this bucket: the request for {p.what} is not signed; sign it "
        "with the server's access key (oss2.Auth/AuthV4, boto3 credentials) or use a presigned URL",
    )


# -- shared steps -----------------------------------------------------------------------------------------


def _parse(request: IncomingRequest, now: float, max_skew_s: float) -> _Parsed:
    pairs: list[tuple[str, str]] = []
    for piece in request.raw_query.split("&"):
        name, _, value = piece.partition("=")
        try:
            if piece:  # '+' is a space: requests (under oss2) encodes the query with quote_plus
                pairs.append((unquote_plus(name, errors="strict"), unquote_plus(value, errors="strict")))
        except UnicodeDecodeError:
            raise _invalid(f"the query {request.raw_query[:200]!r} is not percent-encoded UTF-8") from None
    headers = {k.lower(): v for k, v in request.headers.items()}
    return _Parsed(request, headers, dict(pairs), tuple(pairs), now, max_skew_s)


def _presigned_scheme(p: _Parsed) -> str | None:
    version = p.params.get("x-oss-signature-version")
    if "X-Amz-Algorithm" in p.params:
        return "aws-v4-presigned"
    if version == auth_v4.OSS4_ALGORITHM:
        return "oss-v4-presigned"
    if version is not None or "AWSAccessKeyId" in p.params:
        raise _invalid(
            f"this kind of presigned URL (for {p.what}) is not supported by localoss; presign with OSS V1 "
            "(oss2.Auth), OSS V4 (oss2.AuthV4) or AWS SigV4 (signature_version='s3v4')"
        )
    if "OSSAccessKeyId" in p.params or "Signature" in p.params:
        return "oss-v1-presigned"
    return None


def _invalid(message: str) -> AuthError:
    return AuthError(400, "InvalidArgument", message)


def _deny(code: str, message: str, **details: str) -> AuthError:
    return AuthError(403, code, message, details=details)


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _iso(posix_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(posix_s))


def _check_key_id(p: _Parsed, creds: ServerCredentials, access_key_id: str) -> None:
    if access_key_id != creds.access_key_id:
        raise _deny(
            "InvalidAccessKeyId",
            f"the access key id {access_key_id[:64]!r} used for {p.what} does not exist on this server; "
            "sign with the access key id this localoss server was started with",
            OSSAccessKeyId=access_key_id[:64],
        )


def _check_token(p: _Parsed, creds: ServerCredentials) -> None:
    presented = next((p.headers[n] for n in _TOKEN_HEADERS if p.headers.get(n)), None)
    presented = presented or next((p.params[n] for n in _TOKEN_PARAMS if p.params.get(n)), None)
    if creds.sts_tokens is not None:
        _check_rotating_token(p, creds.sts_tokens, presented)
        return
    if creds.sts_token is None:
        problem = None if presented is None else "carries a security token but the server key is no STS key"
    elif presented is None:
        problem = "has no security token but the server key is an STS key"
    else:
        match = hmac.compare_digest(_b(presented), _b(creds.sts_token))
        problem = None if match else "carries a security token that is not the one this server issued"
    if problem:
        raise _deny(
            "InvalidSecurityToken",
            f"the request for {p.what} {problem}; sign with exactly the server's credentials "
            "(oss2.StsAuth or ProviderAuthV4 with the token, boto3 aws_session_token; no token otherwise)",
        )


def _check_rotating_token(p: _Parsed, tokens: Mapping[str, float | None], presented: str | None) -> None:
    expires = next(
        (at for token, at in tokens.items() if presented and hmac.compare_digest(_b(presented), _b(token))),
        False,
    )
    if expires is False:
        raise _deny(
            "InvalidSecurityToken",
            f"the request for {p.what} carries {'no' if presented is None else 'an unknown'} security token; "
            "sign with a token this server issued (see its --sts-token-file)",
        )
    if expires is not None and p.now >= expires:
        raise _deny(
            "SecurityTokenExpired",
            f"the security token used for {p.what} expired at {_iso(expires)}; "
            "get a fresh token from the STS provider and sign with it",
        )


def _check_skew(p: _Parsed, signed_at: float, source: str) -> None:
    if abs(signed_at - p.now) > p.max_skew_s:
        raise _deny(
            "RequestTimeTooSkewed",
            f"the {source} of the request for {p.what} ({_iso(signed_at)}) is more than {p.max_skew_s:.0f} s "
            f"from the server time ({_iso(p.now)}); fix the client clock and sign the request again",
        )


def _check_presign_window(p: _Parsed, signed_at: float, expires_at: float) -> None:
    if p.now > expires_at:
        raise _deny(
            "AccessDenied",
            f"Request has expired: the presigned URL for {p.what} expired at {_iso(expires_at)} "
            f"(server time {_iso(p.now)}); presign a new URL",
        )
    if signed_at > p.now + p.max_skew_s:
        raise _deny(
            "AccessDenied",
            f"Request is not valid yet: the presigned URL for {p.what} was signed at {_iso(signed_at)}, "
            f"after the server time {_iso(p.now)}; fix the client clock",
        )


def _required(p: _Parsed, names: list[str]) -> dict[str, str]:
    missing = [n for n in names if not p.params.get(n)]
    if missing:
        raise _invalid(
            f"the presigned URL for {p.what} lacks the query parameter(s) {', '.join(missing)}; "
            "use the URL exactly as the SDK presigned it"
        )
    return {n: p.params[n] for n in names}


def _http_date(p: _Parsed, text: str) -> float:
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        raise _deny(
            "AccessDenied",
            f"authentication requires a valid Date header (RFC 1123, 'Tue, 01 Jul 2025 00:00:00 GMT'); "
            f"the request for {p.what} has {text[:64]!r}",
        ) from None


def _mismatch(
    p: _Parsed, scheme: str, access_key_id: str, provided: str, sts: str, canonical: str
) -> AuthError:
    details = {
        "AWSAccessKeyId" if scheme.startswith("aws") else "OSSAccessKeyId": access_key_id,
        "SignatureProvided": provided[:128],
        "StringToSign": sts,
        "StringToSignBytes": " ".join(f"{b:02x}" for b in _b(sts)),
    }
    if canonical:
        details["CanonicalRequest"] = canonical
    log.debug("%s signature mismatch for %s; the server signed %r", scheme, p.what, sts)
    return _deny(
        "SignatureDoesNotMatch",
        f"The request signature we calculated does not match the signature you provided for {p.what} "
        f"({scheme}). Check your access key secret and signing method; the server signed {sts!r}",
        **details,
    )


# -- OSS V1 (HMAC-SHA1) -----------------------------------------------------------------------------------


def _verify_oss_v1(p: _Parsed, creds: ServerCredentials, authorization: str | None) -> str:
    if authorization is not None:
        scheme = "oss-v1"
        access_key_id, sep, provided = authorization[len("OSS ") :].strip().rpartition(":")
        if not sep or not access_key_id or not provided:
            raise _invalid(
                f"malformed Authorization header for {p.what}; expected 'OSS <AccessKeyId>:<Signature>'"
            )
        _check_key_id(p, creds, access_key_id)
        _check_token(p, creds)
        # oss2 signs x-oss-date instead of Date when both are present.
        date = p.headers.get("x-oss-date") or p.headers.get("date", "")
        _check_skew(p, _http_date(p, date), "Date")
    else:
        scheme = "oss-v1-presigned"
        q = _required(p, ["OSSAccessKeyId", "Expires", "Signature"])
        access_key_id, provided, date = q["OSSAccessKeyId"], q["Signature"], q["Expires"]
        _check_key_id(p, creds, access_key_id)
        _check_token(p, creds)
        if not date.isdigit():
            raise _invalid(
                f"the Expires parameter of the URL for {p.what} is {date[:32]!r}, not POSIX seconds"
            )
        _check_presign_window(p, p.now, int(date))
    sts = _oss_v1_string_to_sign(p, date)
    expected = base64.b64encode(hmac.new(_b(creds.access_key_secret), _b(sts), "sha1").digest())
    if not hmac.compare_digest(expected, _b(provided)):
        raise _mismatch(p, scheme, access_key_id, provided, sts, "")
    return scheme


def _oss_v1_string_to_sign(p: _Parsed, date: str) -> str:
    r = p.request
    oss_headers = "".join(f"{k}:{v}\n" for k, v in sorted(p.headers.items()) if k.startswith("x-oss-"))
    # The resource names the DECODED key; only the listed sub-resources are signed, sorted by name.
    resource = f"/{r.bucket}/{r.key or ''}" if r.bucket else "/"
    sub = sorted((k, v) for k, v in p.params.items() if k in OSS_V1_SUBRESOURCES)
    if sub:
        resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in sub)
    md5, content_type = p.headers.get("content-md5", ""), p.headers.get("content-type", "")
    return f"{r.method}\n{md5}\n{content_type}\n{date}\n{oss_headers}{resource}"


# -- OSS V4 and AWS SigV4 (HMAC-SHA256) -------------------------------------------------------------------


def _verify_v4(p: _Parsed, creds: ServerCredentials, authorization: str | None, *, aws: bool) -> str:
    algorithm = auth_v4.AWS4_ALGORITHM if aws else auth_v4.OSS4_ALGORITHM
    list_name = "SignedHeaders" if aws else "AdditionalHeaders"
    if authorization is not None:
        scheme = "aws-v4" if aws else "oss-v4"
        try:
            fields = auth_v4.parse_authorization_fields(authorization, algorithm)
            credential, provided = fields["Credential"], fields["Signature"]
            listed = fields[list_name] if aws else fields.get(list_name, "")
        except (ValueError, KeyError) as exc:
            raise _invalid(
                f"malformed {algorithm} Authorization header for {p.what} ({exc}); expected "
                f"'{algorithm} Credential=AK/date/region/service/terminator, {list_name}=..., Signature=...'"
            ) from None
        timestamp = p.headers.get("x-amz-date" if aws else "x-oss-date", "")
        if aws and not timestamp and p.headers.get("date"):
            # SigV4 allows Date instead of X-Amz-Date; the string to sign then carries it in ISO form.
            timestamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(_http_date(p, p.headers["date"])))
    else:
        scheme = "aws-v4-presigned" if aws else "oss-v4-presigned"
        names = ["Credential", "Date", "Expires", "Signature"] + (["SignedHeaders"] if aws else [])
        q = _required(p, [f"X-Amz-{n}" if aws else f"x-oss-{n.lower()}" for n in names])
        credential, timestamp, expires, provided, *rest = q.values()
        listed = rest[0] if aws else p.params.get("x-oss-additional-headers", "")
        if aws and p.params["X-Amz-Algorithm"] != algorithm:
            raise _invalid(f"X-Amz-Algorithm of the URL for {p.what} is not supported; expected {algorithm}")
    try:
        scope = auth_v4.CredentialScope.parse(credential)
        if scope.terminator != ("aws4_request" if aws else "aliyun_v4_request"):
            raise ValueError(f"unexpected terminator {scope.terminator!r}")
    except ValueError as exc:
        raise _invalid(f"malformed credential in the request for {p.what}: {exc}") from None
    _check_key_id(p, creds, scope.access_key_id)
    _check_token(p, creds)
    try:
        signed_at = auth_v4.parse_iso_basic(timestamp)
    except ValueError:
        raise _deny(
            "AccessDenied",
            f"the request for {p.what} needs a valid {'x-amz' if aws else 'x-oss'}-date (yyyymmddThhmmssZ); "
            f"it has {timestamp[:32]!r}",
        ) from None
    if authorization is not None:
        _check_skew(p, signed_at, "date")
    else:
        seconds = int(expires) if expires.isdigit() else 0
        if not 0 < seconds <= DEFAULT_MAX_PRESIGN_EXPIRES_S:
            limit = DEFAULT_MAX_PRESIGN_EXPIRES_S
            raise _invalid(
                f"the URL for {p.what} asks for a lifetime of {expires[:32]!r} s; expected 1..{limit}"
            )
        _check_presign_window(p, signed_at, signed_at + seconds)
    if scope.date != timestamp[:8]:
        raise _invalid(
            f"the credential date {scope.date} of the request for {p.what} is not the date of its timestamp "
            f"{timestamp}; sign with one date"
        )
    canonicals = _canonicals(p, listed, aws=aws, presigned=authorization is None)
    for canonical in canonicals:
        sts = auth_v4.string_to_sign(algorithm, timestamp, scope.scope, canonical)
        if hmac.compare_digest(_b(auth_v4.sign(creds.access_key_secret, scope, sts)), _b(provided)):
            payload = canonical.rpartition("\n")[2]
            if payload.startswith("STREAMING-"):
                raise AuthError(
                    400,
                    "NotImplemented",
                    f"aws-chunked uploads (x-amz-content-sha256: {payload}) to {p.what} are not implemented "
                    "by localoss; send a plain body (boto3 over http does; request_checksum_calculation="
                    "'when_required' also avoids trailers)",
                )
            return scheme
    sts = auth_v4.string_to_sign(algorithm, timestamp, scope.scope, canonicals[0])
    raise _mismatch(p, scheme, scope.access_key_id, provided, sts, canonicals[0])


def _canonicals(p: _Parsed, listed: str, *, aws: bool, presigned: bool) -> list[str]:
    r = p.request
    if not aws:
        pairs = [kv for kv in p.pairs if kv[0] != "x-oss-signature"] if presigned else list(p.pairs)
        payload = p.headers.get("x-oss-content-sha256", UNSIGNED_PAYLOAD)
        return [auth_v4.oss4_canonical_request(r.method, r.bucket, r.key, pairs, p.headers, listed, payload)]
    if "host" not in [n.strip().lower() for n in listed.split(";")]:
        raise _invalid(f"the request for {p.what} does not sign the host header; SigV4 requires it")
    if presigned:
        payload = p.params.get("X-Amz-Content-Sha256", UNSIGNED_PAYLOAD)
    else:
        payload = p.headers.get("x-amz-content-sha256", "")
        if not (
            auth_v4.is_sha256_hex(payload) or payload == UNSIGNED_PAYLOAD or payload.startswith("STREAMING-")
        ):
            raise _invalid(
                f"x-amz-content-sha256 of the request for {p.what} is {payload[:80]!r}; S3 SigV4 needs the "
                "hex SHA-256 of the body, UNSIGNED-PAYLOAD or STREAMING-... (use signature_version='s3v4')"
            )
    exclude = ("X-Amz-Signature",) if presigned else ()
    try:
        return auth_v4.aws4_canonical_requests(
            r.method, r.raw_path, r.raw_query, p.headers, listed, payload, exclude
        )
    except KeyError as exc:
        raise _deny(
            "SignatureDoesNotMatch",
            f"header {exc.args[0]!r} is listed in SignedHeaders of the request for {p.what} but was not "
            "sent; send every header you sign",
        ) from None
