"""Parsing OSS answers without a server: Range/Content-Range, object headers, error and listing XML."""

from __future__ import annotations

import base64
from email.message import Message
from xml.etree.ElementTree import ParseError

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ossmodelconnector.oss.exchange import http_range
from ossmodelconnector.oss.responses import (
    check_body_range,
    object_info_from_headers,
    parse_content_range,
    parse_error,
    parse_list_v2,
)

ERROR_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message>
<RequestId>5C3D9175B6FC201293AD4890</RequestId><HostId>bkt.oss.example</HostId></Error>"""


@given(start=st.integers(0, 2**62), length=st.integers(1, 2**40))
def test_range_header_round_trips(start: int, length: int) -> None:
    header = http_range(start, start + length)
    assert header == f"bytes={start}-{start + length - 1}"
    # The server's Content-Range for that request parses back to the same half-open range.
    first, end, total = parse_content_range(f"bytes {header[6:]}/{start + length + 5}")
    assert (first, end, total) == (start, start + length, start + length + 5)


@pytest.mark.parametrize(("start", "end"), [(5, 5), (6, 5), (-1, 3)])
def test_range_header_refuses_empty_or_negative(start: int, end: int) -> None:
    with pytest.raises(ValueError, match="empty or negative"):
        http_range(start, end)


@pytest.mark.parametrize("value", ["bytes 5-3/10", "bytes */10", "items 0-1/2", "bytes 0-1", ""])
def test_bad_content_range(value: str) -> None:
    with pytest.raises(ValueError):
        parse_content_range(value)
    assert parse_content_range("bytes 0-9/*") == (0, 10, None)


def test_check_body_range() -> None:
    check_body_range(206, {"Content-Range": "bytes 10-19/100", "Content-Length": "10"}, 10, 20)
    check_body_range(200, {"Content-Length": "20"}, 0, 20)  # whole object == range: accepted
    with pytest.raises(ValueError, match="Content-Range"):
        check_body_range(206, {"Content-Range": "bytes 10-18/100", "Content-Length": "9"}, 10, 20)
    with pytest.raises(ValueError, match="Range ignored"):
        check_body_range(200, {"Content-Length": "100"}, 10, 20)
    with pytest.raises(ValueError, match="Content-Length"):
        check_body_range(206, {"Content-Range": "bytes 10-19/100", "Content-Length": "11"}, 10, 20)
    with pytest.raises(ValueError, match="without Content-Range"):
        check_body_range(206, {"Content-Length": "10"}, 10, 20)


def test_object_info_from_headers_is_case_insensitive_with_http_messages() -> None:
    msg = Message()
    msg["content-length"] = "1234"
    msg["ETAG"] = '"ABC"'
    msg["last-modified"] = "Wed, 25 Nov 2026 10:11:12 GMT"
    msg["X-OSS-HASH-CRC64ECMA"] = "18446744073709551615"
    info = object_info_from_headers("bkt", "a b.bin", msg)
    assert (info.size, info.etag, info.crc64) == (1234, '"ABC"', 2**64 - 1)
    assert info.last_modified == 1795601472.0
    with pytest.raises(ValueError, match="Content-Length"):
        object_info_from_headers("bkt", "k", {})


def test_parse_error_body_and_head_header() -> None:
    details = parse_error(ERROR_XML, {"x-oss-request-id": "ignored"})
    assert (details.code, details.request_id, details.host_id) == (
        "NoSuchKey",
        "5C3D9175B6FC201293AD4890",
        "bkt.oss.example",
    )
    head = parse_error(b"", {"x-oss-err": base64.b64encode(ERROR_XML).decode(), "x-oss-request-id": "R"})
    assert head.code == "NoSuchKey"
    bare = parse_error(b"", {"x-oss-request-id": "R2"})
    assert (bare.code, bare.request_id) == ("", "R2")
    with pytest.raises(ParseError):
        parse_error(b"<Error><Code>", {})


def test_xml_entity_expansion_is_refused() -> None:
    bomb = b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>
    <Error><Code>&b;</Code></Error>"""
    with pytest.raises(ValueError):
        parse_error(bomb, {})
    with pytest.raises(ValueError):
        parse_list_v2("bkt", bomb.replace(b"Error", b"ListBucketResult"))


def test_parse_list_v2_decodes_url_encoded_keys() -> None:
    body = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult><Name>bkt</Name><Prefix>d%2F</Prefix><MaxKeys>2</MaxKeys><EncodingType>url</EncodingType>
<IsTruncated>true</IsTruncated><NextContinuationToken>tok+/=</NextContinuationToken>
<Contents><Key>d/a%20b%25.bin</Key><LastModified>2026-11-25T10:11:12.500Z</LastModified>
<ETag>"E1"</ETag><Size>7</Size></Contents>
<Contents><Key>d/%E6%A8%A1%2B.bin</Key><LastModified>2026-11-25T10:11:12Z</LastModified>
<ETag>"E2"</ETag><Size>0</Size></Contents>
<CommonPrefixes><Prefix>d/sub%20dir/</Prefix></CommonPrefixes></ListBucketResult>"""
    page = parse_list_v2("bkt", body)
    assert [o.key for o in page.objects] == ["d/a b%.bin", "d/模+.bin"]
    assert [o.size for o in page.objects] == [7, 0]
    assert [o.etag for o in page.objects] == ['"E1"', '"E2"']
    assert page.objects[0].last_modified == 1795601472.5
    assert page.common_prefixes == ["d/sub dir/"]
    assert page.next_token == "tok+/="


def test_parse_list_v2_without_encoding_and_last_page() -> None:
    body = b"""<ListBucketResult><IsTruncated>false</IsTruncated>
<Contents><Key>a%20b</Key><LastModified>2026-11-25T10:11:12Z</LastModified><ETag>"E"</ETag><Size>1</Size></Contents>
</ListBucketResult>"""
    page = parse_list_v2("bkt", body)
    assert [o.key for o in page.objects] == ["a%20b"]  # not encoded: taken literally
    assert page.next_token is None
    with pytest.raises(ValueError, match="NextContinuationToken"):
        parse_list_v2("bkt", b"<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>")


def test_listing_in_another_encoding_cannot_smuggle_a_dtd() -> None:
    bomb = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY a "aaaa">]><ListBucketResult/>'
    with pytest.raises((ValueError, ParseError)):
        parse_list_v2("bkt", bomb.encode("utf-16"))
