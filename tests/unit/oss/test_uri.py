"""oss:// URIs and endpoints: tables of good and bad inputs, and request paths identical to oss2's."""

from __future__ import annotations

import pickle
from urllib.parse import unquote, urlsplit

import oss2
import pytest
import requests
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from ossmodelconnector.errors import ConfigError, InvalidURIError
from ossmodelconnector.oss.uri import (
    Endpoint,
    OssUri,
    is_valid_bucket_name,
    parse_endpoint,
    parse_oss_uri,
    region_from_host,
)

# --- OssUri ----------------------------------------------------------------------------------------------

GOOD_URIS = [
    ("oss://bucket/key", "bucket", "key"),
    ("oss://my-bucket-1/a/b/c.safetensors", "my-bucket-1", "a/b/c.safetensors"),
    ("oss://bucket/", "bucket", ""),
    ("oss://bucket/prefix/", "bucket", "prefix/"),
    ("oss://bucket/a%20b", "bucket", "a%20b"),  # literal: no percent-decoding
    ("oss://bucket/a b?c=d#e", "bucket", "a b?c=d#e"),
    ("oss://bucket/模型/权重.bin", "bucket", "模型/权重.bin"),
    ("oss://bucket/a//b", "bucket", "a//b"),
    ("oss://0ab/k", "0ab", "k"),
    ("oss://" + "a" * 63 + "/k", "a" * 63, "k"),
]


@pytest.mark.parametrize(("uri", "bucket", "key"), GOOD_URIS)
def test_parse_good_uris(uri: str, bucket: str, key: str) -> None:
    parsed = parse_oss_uri(uri)
    assert parsed == OssUri(bucket, key)
    assert str(parsed) == uri


def test_bare_bucket_and_scheme_case() -> None:
    assert parse_oss_uri("oss://bucket") == OssUri("bucket", "")
    assert str(parse_oss_uri("oss://bucket")) == "oss://bucket/"
    assert parse_oss_uri("OSS://bucket/Key") == OssUri("bucket", "Key")


BAD_URIS = [
    ("oss:/bucket/key", "'oss:' must be followed by '//'"),
    ("oss:bucket/key", "'oss:' must be followed by '//'"),
    ("s3://bucket/key", "its scheme is 's3', not 'oss'"),
    ("http://bucket/key", "its scheme is 'http', not 'oss'"),
    ("bucket/key", "does not start with 'oss://'"),
    ("/local/path", "does not start with 'oss://'"),
    ("", "does not start with 'oss://'"),
    ("oss:///key", "the bucket is missing"),
    ("oss://", "the bucket is missing"),
    ("oss://Bucket/key", "'Bucket' is not a valid bucket name"),
    ("oss://ab/key", "'ab' is not a valid bucket name"),
    ("oss://" + "a" * 64 + "/key", "is not a valid bucket name"),
    ("oss://-bucket/key", "is not a valid bucket name"),
    ("oss://bucket-/key", "is not a valid bucket name"),
    ("oss://buc_ket/key", "is not a valid bucket name"),
    ("oss://buc.ket/key", "is not a valid bucket name"),
    ("oss://bucket//key", "the key starts with '/'"),
    ("oss://bucket/\\key", "the key starts with '\\\\'"),
    ("oss://bucket/" + "k" * 1024, "1024 bytes of UTF-8, more than the 1023"),
    ("oss://bucket/\udcff", "not valid UTF-8"),
]


@pytest.mark.parametrize(("uri", "fragment"), BAD_URIS)
def test_bad_uris_name_the_uri_and_the_expected_form(uri: str, fragment: str) -> None:
    with pytest.raises(InvalidURIError) as info:
        parse_oss_uri(uri)
    msg = str(info.value)
    assert fragment in msg
    assert repr(uri) in msg
    assert "expected oss://bucket/key" in msg
    assert isinstance(info.value, ValueError)


def test_uri_type_and_direct_construction_checks() -> None:
    with pytest.raises(InvalidURIError, match="not a string"):
        parse_oss_uri(b"oss://bucket/key")  # type: ignore[arg-type]
    with pytest.raises(InvalidURIError, match="'UPPER' is not a valid bucket name"):
        OssUri("UPPER", "k")
    with pytest.raises(InvalidURIError, match="key starts with '/'"):
        OssUri("bucket", "/k")
    assert pickle.loads(pickle.dumps(OssUri("bucket", "k"))) == OssUri("bucket", "k")


def test_bucket_name_rules() -> None:
    assert is_valid_bucket_name("abc") and is_valid_bucket_name("a-b-c") and is_valid_bucket_name("123")
    for bad in ("ab", "a" * 64, "Abc", "-ab", "ab-", "a_b", "a.b", "", "abc\n"):
        assert not is_valid_bucket_name(bad), bad


keys = st.text(st.characters(codec="utf-8"), max_size=60).filter(
    lambda k: k[:1] not in ("/", "\\") and len(k.encode()) <= 1023
)
buckets = st.from_regex(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", fullmatch=True)


@settings(max_examples=300)
@given(bucket=buckets, key=keys)
@example(bucket="bucket", key="a%2Fb%20c")
@example(bucket="bucket", key="\x00\n\t?#[]@!$&'()*+,;=")
def test_any_utf8_key_round_trips(bucket: str, key: str) -> None:
    uri = f"oss://{bucket}/{key}"
    parsed = parse_oss_uri(uri)
    assert (parsed.bucket, parsed.key) == (bucket, key)
    assert str(parsed) == uri


# --- Endpoint --------------------------------------------------------------------------------------------

# (endpoint, scheme, host, port, path_style, region, str())
GOOD_ENDPOINTS = [
    (
        "oss-cn-beijing-internal.aliyuncs.com",
        "http",
        "oss-cn-beijing-internal.aliyuncs.com",
        80,
        False,
        "cn-beijing",
        "http://oss-cn-beijing-internal.aliyuncs.com",
    ),
    (
        "https://oss-cn-hangzhou.aliyuncs.com",
        "https",
        "oss-cn-hangzhou.aliyuncs.com",
        443,
        False,
        "cn-hangzhou",
        "https://oss-cn-hangzhou.aliyuncs.com",
    ),
    (
        "http://oss-cn-hangzhou.aliyuncs.com/",
        "http",
        "oss-cn-hangzhou.aliyuncs.com",
        80,
        False,
        "cn-hangzhou",
        "http://oss-cn-hangzhou.aliyuncs.com",
    ),
    (
        "cn-hangzhou.oss.aliyuncs.com",
        "http",
        "cn-hangzhou.oss.aliyuncs.com",
        80,
        False,
        "cn-hangzhou",
        "http://cn-hangzhou.oss.aliyuncs.com",
    ),
    (
        "oss-ap-southeast-1.aliyuncs.com",
        "http",
        "oss-ap-southeast-1.aliyuncs.com",
        80,
        False,
        "ap-southeast-1",
        "http://oss-ap-southeast-1.aliyuncs.com",
    ),
    (
        "oss-accelerate.aliyuncs.com",
        "http",
        "oss-accelerate.aliyuncs.com",
        80,
        False,
        None,
        "http://oss-accelerate.aliyuncs.com",
    ),
    (
        "oss-accelerate-overseas.aliyuncs.com",
        "http",
        "oss-accelerate-overseas.aliyuncs.com",
        80,
        False,
        None,
        "http://oss-accelerate-overseas.aliyuncs.com",
    ),
    (
        "OSS-CN-Shanghai.Aliyuncs.com",
        "http",
        "oss-cn-shanghai.aliyuncs.com",
        80,
        False,
        "cn-shanghai",
        "http://oss-cn-shanghai.aliyuncs.com",
    ),
    ("http://127.0.0.1:9000", "http", "127.0.0.1", 9000, True, None, "http://127.0.0.1:9000"),
    ("127.0.0.1:9000", "http", "127.0.0.1", 9000, True, None, "http://127.0.0.1:9000"),
    ("localhost:9000", "http", "localhost", 9000, True, None, "http://localhost:9000"),
    ("  http://localhost  ", "http", "localhost", 80, True, None, "http://localhost"),
    ("HTTPS://10.0.0.5:8443", "https", "10.0.0.5", 8443, True, None, "https://10.0.0.5:8443"),
    ("http://[::1]:9000", "http", "::1", 9000, True, None, "http://[::1]:9000"),
    (
        "https://minio.internal:9000",
        "https",
        "minio.internal",
        9000,
        False,
        None,
        "https://minio.internal:9000",
    ),
    ("http://oss_server:80", "http", "oss_server", 80, False, None, "http://oss_server"),
]


@pytest.mark.parametrize(("text", "scheme", "host", "port", "path_style", "region", "as_str"), GOOD_ENDPOINTS)
def test_parse_good_endpoints(
    text: str, scheme: str, host: str, port: int, path_style: bool, region: str | None, as_str: str
) -> None:
    ep = parse_endpoint(text)
    assert ep == Endpoint(scheme, host, port, path_style, region)
    assert str(ep) == as_str


def test_explicit_region_and_path_style_win() -> None:
    ep = parse_endpoint("oss-cn-hangzhou.aliyuncs.com", "cn-shanghai")
    assert ep.region == "cn-shanghai"
    assert parse_endpoint("127.0.0.1:9", "us-east-1").region == "us-east-1"
    assert parse_endpoint("oss.example.com", path_style=True).path_style is True
    assert parse_endpoint("127.0.0.1:9", path_style=False).path_style is False
    with pytest.raises(ConfigError, match="region 'CN HZ' for endpoint"):
        parse_endpoint("127.0.0.1:9", "CN HZ")


BAD_ENDPOINTS = [
    ("", "it is empty"),
    ("   ", "it is empty"),
    ("oss-cn-hangzhou .aliyuncs.com", "white space"),
    ("http://127.0.0.1:9000/bucket", "it has a path '/bucket'"),
    ("oss-cn-hangzhou.aliyuncs.com/models", "it has a path"),
    ("oss://bucket/key", "its scheme 'oss' is not http or https (an oss:// URI names an object"),
    ("s3://bucket", "its scheme 's3' is not http or https"),
    ("ftp://host", "its scheme 'ftp'"),
    ("http://127.0.0.1:99999", "does not parse"),
    ("http://127.0.0.1:port", "does not parse"),
    ("localhost:", "the port after ':' is missing"),
    ("http://127.0.0.1:0", "port 0"),
    ("http://", "the host is missing"),
    ("http://:9000", "the host is missing"),
    ("http://user:pw@127.0.0.1:9000", "user info"),
    ("http://127.0.0.1:9000?x=1", "query or fragment"),
    ("http://127.0.0.1:9000#frag", "query or fragment"),
    ("http://bad_host!:9000", "is not a host name or IP address"),
    ("http://999.1.1.1", "is not a valid IP address"),
    ("http://[zz::1]:9000", "does not parse"),
    ("mybucket.oss-cn-hangzhou.aliyuncs.com", "it is the domain of bucket 'mybucket'"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_ENDPOINTS)
def test_bad_endpoints_are_named(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_endpoint(text)
    msg = str(info.value)
    assert fragment in msg, msg
    assert f"endpoint {text!r}" in msg
    assert "expected a host such as" in msg


def test_bucket_domain_error_says_which_endpoint_to_use() -> None:
    with pytest.raises(ConfigError, match=r"use oss-cn-hangzhou-internal\.aliyuncs\.com"):
        parse_endpoint("b1.oss-cn-hangzhou-internal.aliyuncs.com")


@pytest.mark.parametrize(
    ("host", "region"),
    [
        ("oss-cn-hangzhou.aliyuncs.com", "cn-hangzhou"),
        ("oss-cn-hangzhou-internal.aliyuncs.com", "cn-hangzhou"),
        ("cn-hangzhou.oss.aliyuncs.com", "cn-hangzhou"),
        ("oss-us-east-1-internal.aliyuncs.com", "us-east-1"),
        ("oss-rg-china-mainland.aliyuncs.com", "rg-china-mainland"),
        ("oss-accelerate.aliyuncs.com", None),
        ("oss-accelerate-overseas.aliyuncs.com", None),
        ("oss.aliyuncs.com", None),
        ("oss-internal.aliyuncs.com", None),
        ("s3.amazonaws.com", None),
        ("127.0.0.1", None),
        ("aliyuncs.com", None),
    ],
)
def test_region_from_host(host: str, region: str | None) -> None:
    assert region_from_host(host) == region


def test_host_and_path_for_both_styles() -> None:
    local = parse_endpoint("http://127.0.0.1:9000")
    assert local.host_for("bucket") == "127.0.0.1:9000"
    assert local.path_for("bucket", "a/b c.bin") == "/bucket/a%2Fb%20c.bin"
    assert local.path_for("bucket") == "/bucket/"
    assert local.url_for("bucket", "k") == "http://127.0.0.1:9000/bucket/k"
    remote = parse_endpoint("oss-cn-hangzhou.aliyuncs.com")
    assert remote.host_for("bucket") == "bucket.oss-cn-hangzhou.aliyuncs.com"
    assert remote.host_for("") == "oss-cn-hangzhou.aliyuncs.com"
    assert remote.path_for("bucket", "a/b c.bin") == "/a%2Fb%20c.bin"
    assert remote.path_for("bucket", "") == "/"
    assert remote.url_for("bucket", "模型") == "http://bucket.oss-cn-hangzhou.aliyuncs.com/%E6%A8%A1%E5%9E%8B"
    custom_port = parse_endpoint("https://oss.example.com:8443")
    assert custom_port.host_for("bucket") == "bucket.oss.example.com:8443"
    ipv6 = parse_endpoint("http://[::1]:9000")
    assert ipv6.host_for("bucket") == "[::1]:9000"
    assert ipv6.url_for("bucket", "k") == "http://[::1]:9000/bucket/k"
    with pytest.raises(InvalidURIError, match="'Bad' is not a valid bucket name"):
        remote.host_for("Bad")
    with pytest.raises(InvalidURIError, match="not a valid bucket name"):
        local.path_for("b", "k")
    with pytest.raises(InvalidURIError, match="lone surrogate"):
        local.path_for("bucket", "\udcff")
    assert pickle.loads(pickle.dumps(remote)) == remote


def oss2_wire_url(endpoint: str, bucket: str, key: str) -> str:
    """The URL oss2 puts on the wire for a GetObject: its URL maker, then requests' preparation."""
    maker = oss2.api._UrlMaker(oss2.api._normalize_endpoint(endpoint), False, False)
    return str(requests.Request("GET", maker(bucket, key)).prepare().url)


@settings(max_examples=300)
@given(
    endpoint=st.sampled_from(
        ["http://127.0.0.1:9000", "oss-cn-hangzhou.aliyuncs.com", "https://localhost:8443"]
    ),
    bucket=buckets,
    key=keys,
)
@example(
    endpoint="http://127.0.0.1:9000", bucket="bucket", key="a/b c+d%e~f_g.h!i*j'k(l)m;n:o@p&q=r$s,t?u#v[w]x"
)
@example(endpoint="oss-cn-hangzhou.aliyuncs.com", bucket="bucket", key="")
def test_url_for_matches_what_oss2_sends(endpoint: str, bucket: str, key: str) -> None:
    # urllib3 (under oss2) removes dot segments, so oss2 sends a key "." or ".." as the bucket itself;
    # we send them literally (test_dot_keys_are_sent_literally).
    assume(key not in (".", ".."))
    ours = parse_endpoint(endpoint)
    theirs = oss2_wire_url(endpoint, bucket, key)
    assert ours.url_for(bucket, key) == theirs
    parts = urlsplit(theirs)
    assert ours.host_for(bucket) == parts.netloc
    assert ours.path_for(bucket, key) == parts.path
    decoded = unquote(ours.path_for(bucket, key), errors="strict")
    assert decoded == (f"/{bucket}/{key}" if ours.path_style else f"/{key}")


def test_dot_keys_are_sent_literally() -> None:
    assert parse_endpoint("127.0.0.1:9").path_for("bucket", ".") == "/bucket/."
    assert parse_endpoint("127.0.0.1:9").path_for("bucket", "..") == "/bucket/.."
    assert parse_endpoint("oss-cn-hangzhou.aliyuncs.com").path_for("bucket", "a/../b") == "/a%2F..%2Fb"
