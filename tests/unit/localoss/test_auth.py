"""localoss signature verification against the REAL signers: oss2 (V1, V4, STS, presigned) and botocore.

No network: oss2 is given a session that captures the signed request instead of sending it, boto3 a
``before-send`` hook that does the same, and both are turned into exactly what would cross the wire by
``requests``' own URL preparation (the layer oss2 sends through) before the verifier sees them.
"""

from __future__ import annotations

import hashlib
import pickle
import time
from collections.abc import Callable, Iterator, Mapping
from email.utils import formatdate, parsedate_to_datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import boto3
import oss2
import pytest
import requests
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ossmodelconnector.localoss import auth_v4
from ossmodelconnector.localoss.auth import (
    DEFAULT_MAX_SKEW_S,
    OSS_V1_SUBRESOURCES,
    AuthError,
    IncomingRequest,
    ServerCredentials,
    declared_payload_sha256,
    verify,
)

AK = "test-access-key"
SK = "test-secret-key-0123456789"
TOKEN = "sts-token-abcdef/+=="
ENDPOINT = "http://127.0.0.1:9000"
BUCKET = "bucket"
REGION = "cn-hangzhou"
CREDS = ServerCredentials(AK, SK)
STS_CREDS = ServerCredentials(AK, SK, TOKEN)

KEYS = [
    "model.safetensors",
    "a b.bin",
    "100%.txt",
    "a+b=c&d.json",
    "ü/日本語/ファイル.bin",
    "a/b/c",
    "~tilde*'()!",
]


# -- turning signed client requests into what the server receives ------------------------------------------


class _Captured(Exception):
    def __init__(self, request: Any) -> None:
        super().__init__("captured")
        self.request = request


class _CapturingSession:
    """Stands where oss2's http.Session would: receives the signed oss2 Request and stops there."""

    def do_request(self, req: Any, timeout: Any) -> None:
        raise _Captured(req)


def _resolve_path_style(raw_path: str, host: str) -> tuple[str | None, str | None]:
    """What the server does: bucket from the first segment (or the Host), the rest decoded as the key."""
    if not host.startswith("127.0.0.1"):
        bucket, rest = host.split(".", 1)[0], raw_path[1:]
    else:
        bucket, _, rest = raw_path[1:].partition("/")
    return (unquote(bucket) or None), (unquote(rest, errors="strict") or None)


def _wire(
    method: str, url: str, params: Mapping[str, str] | None = None, headers: Any = None, data: Any = None
) -> IncomingRequest:
    """What crosses the wire when requests sends this (oss2 sends through requests)."""
    prepared = requests.Session().prepare_request(
        requests.Request(method, url, params=dict(params or {}), headers=dict(headers or {}), data=data)
    )
    assert prepared.url is not None
    return _incoming(method, prepared.url, dict(prepared.headers))


def _incoming(method: str, url: str, headers: Mapping[str, Any]) -> IncomingRequest:
    parts = urlsplit(url)
    lowered = {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in headers.items()}
    lowered.setdefault("host", parts.netloc)  # http.client adds Host from the URL
    bucket, key = _resolve_path_style(parts.path, lowered["host"])
    return IncomingRequest(method, parts.path, parts.query, lowered, bucket, key)


def _oss2_request(call: Callable[[], Any]) -> IncomingRequest:
    with pytest.raises(_Captured) as info:
        call()
    req = info.value.request
    return _wire(req.method, req.url, req.params, req.headers, req.data)


def _oss2_bucket(auth: Any, endpoint: str = ENDPOINT, **kwargs: Any) -> oss2.Bucket:
    return oss2.Bucket(auth, endpoint, BUCKET, session=_CapturingSession(), region=REGION, **kwargs)


OSS2_AUTHS: dict[str, Callable[[], Any]] = {
    "v1": lambda: oss2.Auth(AK, SK),
    "v4": lambda: oss2.AuthV4(AK, SK),
}
STS_AUTHS: dict[str, Callable[[], Any]] = {
    "v1": lambda: oss2.StsAuth(AK, SK, TOKEN),
    "v4": lambda: oss2.ProviderAuthV4(oss2.credentials.StaticCredentialsProvider(AK, SK, TOKEN)),
}
SCHEME = {"v1": "oss-v1", "v4": "oss-v4"}


def _boto_client(
    *, token: str | None = None, secret: str = SK, addressing: str = "path", endpoint: str = ENDPOINT
) -> Any:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=AK,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(
            signature_version="s3v4", s3={"addressing_style": addressing}, retries={"total_max_attempts": 1}
        ),
    )

    def capture(request: Any, **_: Any) -> None:
        raise _Captured(request)

    client.meta.events.register("before-send", capture)
    return client


def _boto_request(call: Callable[[], Any]) -> IncomingRequest:
    with pytest.raises(_Captured) as info:
        call()
    req = info.value.request
    return _incoming(req.method, req.url, dict(req.headers.items()))


def _reject(request: IncomingRequest, creds: ServerCredentials = CREDS, **kwargs: Any) -> AuthError:
    with pytest.raises(AuthError) as info:
        verify(request, creds, **kwargs)
    assert SK not in str(info.value) and SK not in repr(info.value.details)
    return info.value


def _replace(request: IncomingRequest, **changes: Any) -> IncomingRequest:
    fields = {f: getattr(request, f) for f in ("method", "raw_path", "raw_query", "headers", "bucket", "key")}
    fields.update(changes)
    return IncomingRequest(**fields)


def _with_header(request: IncomingRequest, name: str, value: str) -> IncomingRequest:
    return _replace(request, headers={**request.headers, name: value})


# -- oss2 V1 and V4, header-signed --------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v4"])
@pytest.mark.parametrize("key", KEYS)
def test_oss2_get_object_verifies(version: str, key: str) -> None:
    bucket = _oss2_bucket(OSS2_AUTHS[version]())
    request = _oss2_request(lambda: bucket.get_object(key, byte_range=(0, 99)))
    assert request.key == key and request.headers["range"] == "bytes=0-99"
    assert verify(request, CREDS) == SCHEME[version]


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_oss2_requests_with_subresources_and_headers_verify(version: str) -> None:
    bucket = _oss2_bucket(OSS2_AUTHS[version]())
    calls: list[Callable[[], Any]] = [
        lambda: bucket.get_object_meta("dir/model.bin"),
        lambda: bucket.head_object("dir/model.bin"),
        lambda: bucket.put_object_acl("a b", oss2.OBJECT_ACL_PRIVATE),
        lambda: bucket.get_object_acl("a b"),
        lambda: bucket.put_object(
            "ü/x.json", b"{}", headers={"x-oss-meta-note": "hi", "Content-Type": "a/b"}
        ),
        lambda: bucket.get_object("k", headers={"x-oss-range-behavior": "standard"}),
        lambda: bucket.delete_object("k"),
    ]
    for call in calls:
        request = _oss2_request(call)
        assert verify(request, CREDS) == SCHEME[version], request


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_oss2_list_requests_verify(version: str) -> None:
    bucket = _oss2_bucket(OSS2_AUTHS[version]())
    calls: list[Callable[[], Any]] = [
        lambda: bucket.list_objects(prefix="models/ä b/", delimiter="/", marker="models/x+y", max_keys=7),
        lambda: bucket.list_objects_v2(
            prefix="a/", delimiter="/", continuation_token="tok en/+=", max_keys=3
        ),
        lambda: bucket.list_objects_v2(prefix="100%", start_after="a b", fetch_owner=True),
        lambda: bucket.get_bucket_info(),
    ]
    for call in calls:
        request = _oss2_request(call)
        assert request.bucket == BUCKET and request.key is None
        assert verify(request, CREDS) == SCHEME[version], request
    assert "list-type=2" in request.raw_query or "bucketInfo" in request.raw_query


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_oss2_service_level_request_verifies(version: str) -> None:
    service = oss2.Service(OSS2_AUTHS[version](), ENDPOINT, session=_CapturingSession(), region=REGION)
    request = _oss2_request(lambda: service.list_buckets(prefix="b"))
    assert request.bucket is None and request.raw_path == "/"
    assert verify(request, CREDS) == SCHEME[version]


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_oss2_virtual_hosted_request_verifies(version: str) -> None:
    bucket = _oss2_bucket(OSS2_AUTHS[version](), endpoint="http://oss-cn-hangzhou.aliyuncs.com")
    request = _oss2_request(lambda: bucket.get_object("a/b c"))
    assert request.headers["host"].startswith(f"{BUCKET}.") and request.raw_path == "/a%2Fb%20c"
    assert verify(request, CREDS) == SCHEME[version]


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_oss2_sts_requests_verify_only_with_the_token(version: str) -> None:
    request = _oss2_request(lambda: _oss2_bucket(STS_AUTHS[version]()).get_object("k"))
    assert request.headers["x-oss-security-token"] == TOKEN
    assert verify(request, STS_CREDS) == SCHEME[version]
    assert _reject(request, ServerCredentials(AK, SK, "other-token")).code == "InvalidSecurityToken"
    assert _reject(request, CREDS).code == "InvalidSecurityToken"
    no_token = _oss2_request(lambda: _oss2_bucket(OSS2_AUTHS[version]()).get_object("k"))
    error = _reject(no_token, STS_CREDS)
    assert (error.status, error.code) == (403, "InvalidSecurityToken")
    assert "security token" in error.message and TOKEN not in error.message


# -- oss2 presigned URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v4"])
@pytest.mark.parametrize("key", KEYS)
def test_oss2_presigned_urls_verify(version: str, key: str) -> None:
    url = _oss2_bucket(OSS2_AUTHS[version]()).sign_url("GET", key, 300)
    request = _wire("GET", url)
    assert request.key == key
    assert verify(request, CREDS) == f"{SCHEME[version]}-presigned"


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_oss2_presigned_put_with_signed_headers_and_params(version: str) -> None:
    bucket = _oss2_bucket(OSS2_AUTHS[version]())
    headers = {"Content-Type": "text/plain", "x-oss-meta-a": "1"}
    url = bucket.sign_url("PUT", "up/load.txt", 300, headers=headers, params={"acl": ""})
    request = _wire("PUT", url, headers=headers, data=b"body")
    assert verify(request, CREDS) == f"{SCHEME[version]}-presigned"
    assert _reject(_with_header(request, "content-type", "text/html")).code == "SignatureDoesNotMatch"


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_oss2_presigned_url_with_sts_token(version: str) -> None:
    url = _oss2_bucket(STS_AUTHS[version]()).sign_url("GET", "k", 60)
    request = _wire("GET", url)
    assert verify(request, STS_CREDS) == f"{SCHEME[version]}-presigned"
    assert _reject(request, ServerCredentials(AK, SK, "nope")).code == "InvalidSecurityToken"


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_expired_presigned_url_is_access_denied(version: str) -> None:
    request = _wire("GET", _oss2_bucket(OSS2_AUTHS[version]()).sign_url("GET", "k", 60))
    error = _reject(request, now=time.time() + 120)
    assert (error.status, error.code) == (403, "AccessDenied")
    assert error.message.startswith("Request has expired")


# -- boto3 / botocore (AWS SigV4, S3 dialect) ---------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
def test_boto3_get_head_put_verify(key: str) -> None:
    client = _boto_client()
    get = _boto_request(lambda: client.get_object(Bucket=BUCKET, Key=key, Range="bytes=0-9"))
    assert get.key == key and "range" in get.headers["authorization"]
    assert verify(get, CREDS) == "aws-v4"
    assert verify(_boto_request(lambda: client.head_object(Bucket=BUCKET, Key=key)), CREDS) == "aws-v4"
    body = b"some bytes \x00\xff"
    put = _boto_request(lambda: client.put_object(Bucket=BUCKET, Key=key, Body=body, ContentType="x/y"))
    assert verify(put, CREDS) == "aws-v4"
    assert declared_payload_sha256(put.headers) == hashlib.sha256(body).hexdigest()


def test_boto3_list_requests_verify() -> None:
    client = _boto_client()
    calls: list[Callable[[], Any]] = [
        lambda: client.list_objects_v2(Bucket=BUCKET, Prefix="a b/ü+", Delimiter="/", MaxKeys=5),
        lambda: client.list_objects_v2(Bucket=BUCKET, ContinuationToken="t o/k+=", StartAfter="x%y"),
        lambda: client.list_objects(Bucket=BUCKET, Prefix="p/", Marker="m&n=o", EncodingType="url"),
        lambda: client.list_buckets(),
        lambda: client.get_object_acl(Bucket=BUCKET, Key="a b"),
        lambda: client.get_bucket_location(Bucket=BUCKET),
    ]
    for call in calls:
        assert verify(_boto_request(call), CREDS) == "aws-v4"


def test_boto3_virtual_hosted_and_session_token() -> None:
    client = _boto_client(addressing="virtual", endpoint="http://s3.localoss.test:9000", token=TOKEN)
    request = _boto_request(lambda: client.get_object(Bucket=BUCKET, Key="a/b c"))
    assert request.headers["host"].startswith(f"{BUCKET}.") and request.raw_path == "/a/b%20c"
    assert verify(request, STS_CREDS) == "aws-v4"
    assert _reject(request, CREDS).code == "InvalidSecurityToken"


@pytest.mark.parametrize("key", KEYS)
def test_boto3_presigned_urls_verify(key: str) -> None:
    client = _boto_client()
    url = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=300)
    request = _wire("GET", url)
    assert request.key == key
    assert verify(request, CREDS) == "aws-v4-presigned"
    error = _reject(request, now=time.time() + 400)
    assert (error.code, error.message.startswith("Request has expired")) == ("AccessDenied", True)


def test_boto3_presigned_url_with_token_and_response_params() -> None:
    client = _boto_client(token=TOKEN)
    params = {"Bucket": BUCKET, "Key": "k", "ResponseContentType": "a/b; c=d"}
    request = _wire("GET", client.generate_presigned_url("get_object", Params=params, ExpiresIn=60))
    assert verify(request, STS_CREDS) == "aws-v4-presigned"


def test_botocore_signers_on_aws_request_verify() -> None:
    credentials = Credentials(AK, SK)
    url = f"{ENDPOINT}/{BUCKET}/dir/a%20b%2Bc?list-type=2&prefix=a%2Fb"
    request = AWSRequest("GET", url, headers={"x-amz-content-sha256": hashlib.sha256(b"").hexdigest()})
    S3SigV4Auth(credentials, "s3", "eu-central-1").add_auth(request)
    assert verify(_incoming("GET", request.url, dict(request.headers.items())), CREDS) == "aws-v4"

    presign = AWSRequest("GET", f"{ENDPOINT}/{BUCKET}/x%20y", headers={})
    S3SigV4QueryAuth(credentials, "s3", "us-west-2", expires=120).add_auth(presign)
    assert verify(_incoming("GET", presign.url, {}), CREDS) == "aws-v4-presigned"


def test_sigv4_with_date_header_instead_of_x_amz_date() -> None:
    request = AWSRequest("GET", f"{ENDPOINT}/{BUCKET}/k", headers={"Date": "placeholder"})
    S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(request)
    incoming = _incoming("GET", request.url, dict(request.headers.items()))
    assert "x-amz-date" not in incoming.headers
    assert verify(incoming, CREDS) == "aws-v4"


def test_aws_chunked_upload_is_refused_clearly() -> None:
    request = AWSRequest("PUT", f"{ENDPOINT}/{BUCKET}/k", data=b"x")
    request.headers["X-Amz-Content-SHA256"] = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(request)
    error = _reject(_incoming("PUT", request.url, dict(request.headers.items())))
    assert (error.status, error.code) == (400, "NotImplemented") and "aws-chunked" in error.message
    # The secret is still checked first: a wrong one is a signature error, not "not implemented".
    assert _reject(
        _incoming("PUT", request.url, dict(request.headers.items())), ServerCredentials(AK, "x")
    ).code == ("SignatureDoesNotMatch")


# -- rejections ---------------------------------------------------------------------------------------------


def _signed_samples() -> Iterator[tuple[str, IncomingRequest]]:
    for version in ("v1", "v4"):
        bucket = _oss2_bucket(OSS2_AUTHS[version]())
        yield (
            version,
            _oss2_request(lambda b=bucket: b.get_object("dir/k.bin", headers={"x-oss-meta-m": "1"})),
        )
        yield f"{version}-presigned", _wire("GET", bucket.sign_url("GET", "dir/k.bin", 300))
    client = _boto_client()
    yield "aws", _boto_request(lambda: client.get_object(Bucket=BUCKET, Key="dir/k.bin", Range="bytes=1-2"))
    url = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "dir/k.bin"})
    yield "aws-presigned", _wire("GET", url)


SAMPLES = dict(_signed_samples())


def fresh_sample(name: str) -> IncomingRequest:
    """The sample signed just now: a long test session must not drift past the allowed clock skew."""
    return dict(_signed_samples())[name]


@pytest.mark.parametrize("name", SAMPLES)
def test_wrong_secret_is_signature_does_not_match(name: str) -> None:
    error = _reject(fresh_sample(name), ServerCredentials(AK, "another-secret"))
    assert (error.status, error.code) == (403, "SignatureDoesNotMatch")
    assert "another-secret" not in error.message and error.details["StringToSign"] in error.message.replace(
        "\\n", "\n"
    )


@pytest.mark.parametrize("name", SAMPLES)
def test_unknown_access_key_is_invalid_access_key_id(name: str) -> None:
    error = _reject(fresh_sample(name), ServerCredentials("other-ak", SK))
    assert (error.status, error.code) == (403, "InvalidAccessKeyId") and AK in error.message


@pytest.mark.parametrize("name", SAMPLES)
def test_tampered_path_fails(name: str) -> None:
    request = fresh_sample(name)
    tampered = _replace(request, raw_path=request.raw_path.replace("k.bin", "K.bin"), key="dir/K.bin")
    assert _reject(tampered).code == "SignatureDoesNotMatch"
    other_bucket = _replace(request, raw_path=request.raw_path.replace(BUCKET, "other"), bucket="other")
    assert _reject(other_bucket).code == "SignatureDoesNotMatch"


@pytest.mark.parametrize("name", SAMPLES)
def test_tampered_query_fails(name: str) -> None:
    request = fresh_sample(name)
    # A sub-resource is signed by every scheme (OSS V1 signs nothing else).
    tampered = _replace(request, raw_query="&".join(filter(None, [request.raw_query, "acl"])))
    assert _reject(tampered).code == "SignatureDoesNotMatch"


@pytest.mark.parametrize("name", ["v4", "v4-presigned", "aws", "aws-presigned"])
def test_v4_family_signs_every_query_parameter(name: str) -> None:
    request = fresh_sample(name)
    tampered = _replace(request, raw_query="&".join(filter(None, [request.raw_query, "prefix=evil"])))
    assert _reject(tampered).code == "SignatureDoesNotMatch"


def test_v1_leaves_non_subresource_parameters_unsigned_like_oss() -> None:
    bucket = _oss2_bucket(oss2.Auth(AK, SK))
    request = _oss2_request(lambda: bucket.list_objects(prefix="a/", marker="m"))
    assert verify(_replace(request, raw_query=request.raw_query.replace("prefix=a%2F", "prefix=b%2F")), CREDS)
    tampered_token = _oss2_request(lambda: bucket.list_objects_v2(continuation_token="t1"))
    assert _reject(_replace(tampered_token, raw_query=tampered_token.raw_query.replace("t1", "t2"))).code == (
        "SignatureDoesNotMatch"
    )


@pytest.mark.parametrize(
    ("name", "header", "value"),
    [
        ("v1", "x-oss-meta-m", "2"),
        ("v1", "content-type", "text/html"),
        ("v4", "x-oss-meta-m", "2"),
        ("v4", "content-md5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
        ("aws", "range", "bytes=0-2"),
        ("aws", "host", "127.0.0.1:9001"),
        ("aws", "x-amz-checksum-mode", "DISABLED"),
    ],
)
def test_tampered_signed_header_fails(name: str, header: str, value: str) -> None:
    assert _reject(_with_header(fresh_sample(name), header, value)).code == "SignatureDoesNotMatch"


@pytest.mark.parametrize(("name", "header"), [("v1", "date"), ("v4", "x-oss-date"), ("aws", "x-amz-date")])
def test_signing_time_is_signed(name: str, header: str) -> None:
    request = fresh_sample(name)
    value = request.headers[header]
    # One second later is well inside the allowed skew, so only the signature can object.
    if name == "v1":
        later = formatdate(parsedate_to_datetime(value).timestamp() + 1, usegmt=True)
    else:
        later = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(auth_v4.parse_iso_basic(value) + 1))
    assert later != value
    assert _reject(_with_header(request, header, later)).code == "SignatureDoesNotMatch"


def test_dropping_a_signed_header_fails() -> None:
    request = SAMPLES["aws"]
    headers = {k: v for k, v in request.headers.items() if k != "range"}
    assert _reject(_replace(request, headers=headers)).code == "SignatureDoesNotMatch"


def test_method_is_signed() -> None:
    for name in SAMPLES:
        assert _reject(_replace(fresh_sample(name), method="DELETE")).code == "SignatureDoesNotMatch", name


@pytest.mark.parametrize("name", ["v1", "v4", "aws"])
@pytest.mark.parametrize("offset_s", [-3600, DEFAULT_MAX_SKEW_S + 60])
def test_stale_or_future_date_is_request_time_too_skewed(name: str, offset_s: float) -> None:
    error = _reject(fresh_sample(name), now=time.time() - offset_s)
    assert (error.status, error.code) == (403, "RequestTimeTooSkewed")
    assert verify(fresh_sample(name), CREDS, now=time.time() + 60) in ("oss-v1", "oss-v4", "aws-v4")


def test_anonymous_request_is_access_denied() -> None:
    request = _wire("GET", f"{ENDPOINT}/{BUCKET}/k")
    error = _reject(request)
    assert (error.status, error.code) == (403, "AccessDenied")
    assert "anonymous access is forbidden for this bucket" in error.message


@pytest.mark.parametrize(
    "authorization",
    [
        "garbage",
        "Bearer abc",
        "OSS no-colon",
        "OSS :sig",
        "OSS2 AccessKeyId:ak,Signature:x",
        "AWS ak:sig",
        "OSS4-HMAC-SHA256 garbage",
        "OSS4-HMAC-SHA256 Credential=ak/2025/cn/oss/aliyun_v4_request, Signature=00",
        "AWS4-HMAC-SHA256 Credential=test-access-key/20250101/us-east-1/s3/aws4_request, Signature=00",
        "AWS4-HMAC-SHA256 Credential=a, Credential=b, SignedHeaders=host, Signature=0",
    ],
)
def test_malformed_authorization_is_invalid_argument(authorization: str) -> None:
    request = _wire("GET", f"{ENDPOINT}/{BUCKET}/k", headers={"Authorization": authorization})
    error = _reject(request)
    assert (error.status, error.code) == (400, "InvalidArgument"), error


def test_both_header_and_presigned_query_is_invalid() -> None:
    request = SAMPLES["v1-presigned"]
    both = _with_header(request, "authorization", SAMPLES["v1"].headers["authorization"])
    assert _reject(both).code == "InvalidArgument"


def test_missing_date_is_access_denied() -> None:
    request = SAMPLES["v1"]
    headers = {k: v for k, v in request.headers.items() if k != "date"}
    assert _reject(_replace(request, headers=headers)).code == "AccessDenied"


def test_mismatch_details_carry_the_server_string_to_sign() -> None:
    error = _reject(SAMPLES["v4"], ServerCredentials(AK, "wrong"))
    assert error.details["StringToSign"].startswith("OSS4-HMAC-SHA256\n")
    assert error.details["CanonicalRequest"].startswith("GET\n/bucket/dir/k.bin\n")
    assert error.details["OSSAccessKeyId"] == AK


# -- properties ---------------------------------------------------------------------------------------------

_TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_KEYS = st.text(_TEXT, min_size=1, max_size=40) | st.sampled_from(["/", "a/", "?x", "#y", "%41", " + "])
_PARAM_NAMES = st.sampled_from(
    [
        "acl",
        "objectMeta",
        "versionId",
        "response-content-type",
        "x-oss-process",
        "continuation-token",
        "prefix",
        "marker",
        "delimiter",
        "encoding-type",
    ]
)
_PARAMS = st.dictionaries(_PARAM_NAMES, st.text(_TEXT, max_size=12), max_size=4)


def _flip(text: str, index: int) -> str:
    index %= len(text)
    replacement = chr(ord(text[index]) ^ 1)
    if replacement in "\x00" or "\ud800" <= replacement <= "\udfff":
        replacement = "x" if text[index] != "x" else "y"
    return text[:index] + replacement + text[index + 1 :]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=_KEYS, params=_PARAMS, version=st.sampled_from(["v1", "v4"]), flip_at=st.integers(0, 1000))
def test_any_key_and_subresources_signed_by_oss2_verify(
    key: str, params: dict[str, str], version: str, flip_at: int
) -> None:
    bucket = _oss2_bucket(OSS2_AUTHS[version](), is_verify_object_strict=False)
    request = _oss2_request(lambda: bucket.get_object(key, params=params))
    assert request.key == key
    assert verify(request, CREDS) == SCHEME[version]
    flipped = _flip(key, flip_at)
    tampered = _replace(request, key=flipped, raw_path=f"/{BUCKET}/{quote(flipped, safe='')}")
    with pytest.raises(AuthError) as info:
        verify(tampered, CREDS)
    assert info.value.code == "SignatureDoesNotMatch"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=_KEYS, prefix=st.text(_TEXT, max_size=12), flip_at=st.integers(0, 1000))
def test_any_key_signed_by_boto3_verifies(key: str, prefix: str, flip_at: int) -> None:
    client = _boto_client()
    request = _boto_request(lambda: client.get_object(Bucket=BUCKET, Key=key))
    assert verify(request, CREDS) == "aws-v4"
    listing = _boto_request(lambda: client.list_objects_v2(Bucket=BUCKET, Prefix=prefix))
    assert verify(listing, CREDS) == "aws-v4"
    flipped = quote(_flip(key, flip_at), safe="/~")
    with pytest.raises(AuthError) as info:
        verify(_replace(request, raw_path=f"/{BUCKET}/{flipped}"), CREDS)
    assert info.value.code == "SignatureDoesNotMatch"


@given(text=st.text(_TEXT, max_size=30))
def test_uri_encode_matches_botocore_and_oss2(text: str) -> None:
    from botocore.utils import percent_encode

    assert auth_v4.uri_encode(text, keep_slash=False) == percent_encode(text)
    oss2_encode = oss2.AuthV4(AK, SK)._ProviderAuthV4__v4_uri_encode
    assert auth_v4.uri_encode(text, keep_slash=True) == oss2_encode(text, True)
    assert auth_v4.uri_encode(text, keep_slash=False) == oss2_encode(text, False)


# -- the value types ----------------------------------------------------------------------------------------


def test_subresource_set_matches_oss2() -> None:
    assert oss2.auth.ProviderAuth._subresource_key_set == OSS_V1_SUBRESOURCES


def test_credentials_repr_hides_secret_and_token() -> None:
    text = repr(STS_CREDS) + str(STS_CREDS) + repr(CREDS)
    assert SK not in text and TOKEN not in text and AK in text


def test_empty_credentials_are_a_config_error() -> None:
    from ossmodelconnector.errors import ConfigError

    with pytest.raises(ConfigError):
        ServerCredentials("", SK)
    with pytest.raises(ConfigError):
        ServerCredentials(AK, SK, "")


def test_auth_error_pickles_with_details() -> None:
    error = AuthError(403, "SignatureDoesNotMatch", "m", details={"StringToSign": "s"})
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status, copy.code, copy.message, copy.details) == (
        403,
        "SignatureDoesNotMatch",
        "m",
        {"StringToSign": "s"},
    )
    assert str(copy) == "403 SignatureDoesNotMatch: m"


def test_verify_docstring_example_runs() -> None:
    import doctest

    from ossmodelconnector.localoss import auth

    assert doctest.testmod(auth).failed == 0


def test_declared_payload_sha256_ignores_unsigned_payloads() -> None:
    assert declared_payload_sha256({"X-Amz-Content-Sha256": "UNSIGNED-PAYLOAD"}) is None
    assert declared_payload_sha256({"x-oss-content-sha256": "A" * 64}) == "a" * 64
    assert declared_payload_sha256({}) is None
