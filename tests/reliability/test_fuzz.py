"""Fuzzing the parsers of untrusted server answers and the range planner with hypothesis.

Whatever bytes a server (or a proxy, or an attacker on the path) sends, the parsers raise only what they
document: ``ValueError`` (defusedxml's refusals included) or ``xml.etree.ElementTree.ParseError``, which
``client.py`` translates into the package's errors. The range planner raises only ``ValueError``,
``IndexError`` or ``TypeError`` for bad arguments. The same targets run under atheris with
``python tests/reliability/fuzz_atheris.py`` (by hand; see docs/reliability.md).
"""

from __future__ import annotations

import base64
from urllib.parse import quote
from xml.etree import ElementTree
from xml.etree.ElementTree import ParseError

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ossmodelconnector.objects import ObjectInfo
from ossmodelconnector.oss.responses import (
    ErrorDetails,
    check_body_range,
    object_info_from_headers,
    parse_content_range,
    parse_error,
    parse_list_v2,
)
from ossmodelconnector.ranges import ByteRange, chunk_range, chunk_span, clamp_read, plan_chunks

PARSE_ERRORS = (ValueError, ParseError)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_TAGS = [
    "ListBucketResult",
    "Contents",
    "Key",
    "Size",
    "ETag",
    "LastModified",
    "CommonPrefixes",
    "Prefix",
    "IsTruncated",
    "NextContinuationToken",
    "EncodingType",
    "Error",
    "Code",
    "Message",
    "RequestId",
]
_TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        ["true", "false", "url", "-1", "0", "12", "1e3", "2026-11-25T10:00:00.000Z", "%ZZ", "%00"]
    ),
    st.integers(-(2**70), 2**70).map(str),
)


@st.composite
def xml_trees(draw: st.DrawFn, depth: int = 3) -> str:
    """Well-formed-ish XML over the tags OSS uses, with hostile text: mostly parses, then breaks rules."""
    tag = draw(st.sampled_from(_TAGS))
    if depth == 0 or draw(st.booleans()):
        text = draw(_TEXT)
        escaped = text.replace("&", "&amp;").replace("<", "&lt;")
        return f"<{tag}>{escaped}</{tag}>"
    children = draw(st.lists(xml_trees(depth - 1), max_size=4))
    return f"<{tag}>{''.join(children)}</{tag}>"


def _listing(children: list[str]) -> bytes:
    return f"<?xml version='1.0'?><ListBucketResult>{''.join(children)}</ListBucketResult>".encode()


@FUZZ
@given(st.binary(max_size=512))
@example(b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><ListBucketResult>&a;</ListBucketResult>")
@example("<ListBucketResult>\u00e9</ListBucketResult>".encode("utf-16"))
@example(b"<ListBucketResult><Contents><Size>-5</Size></Contents></ListBucketResult>")
def test_list_parser_on_arbitrary_bytes(body: bytes) -> None:
    try:
        page = parse_list_v2("bucket", body)
    except PARSE_ERRORS:
        return
    assert all(isinstance(info, ObjectInfo) and info.size >= 0 for info in page.objects)


@FUZZ
@given(st.lists(xml_trees(), max_size=6))
def test_list_parser_on_hostile_listings(children: list[str]) -> None:
    try:
        page = parse_list_v2("bucket", _listing(children))
    except PARSE_ERRORS:
        return
    for info in page.objects:
        assert info.size >= 0 and info.bucket == "bucket"
    assert page.next_token is None or page.next_token != ""


@FUZZ
@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=5))
def test_url_encoded_keys_round_trip(keys: list[str]) -> None:
    contents = [
        f"<Contents><Key>{quote(key, safe='/')}</Key><Size>1</Size><ETag>e</ETag></Contents>" for key in keys
    ]
    body = _listing(["<EncodingType>url</EncodingType>", *contents])
    try:
        page = parse_list_v2("bucket", body)
    except PARSE_ERRORS:  # lone surrogates cannot be UTF-8
        assert any(not key.isprintable() or "\ud800" <= c <= "\udfff" for key in keys for c in key)
        return
    assert [info.key for info in page.objects] == keys


@FUZZ
@given(st.binary(max_size=512), st.one_of(st.none(), st.binary(max_size=200), st.text(max_size=50)))
def test_error_parser_on_arbitrary_bodies_and_headers(body: bytes, header: bytes | str | None) -> None:
    headers: dict[str, str] = {"x-oss-request-id": "rid"}
    if isinstance(header, bytes):
        headers["x-oss-err"] = base64.b64encode(header).decode()
    elif header is not None:
        headers["x-oss-err"] = header
    try:
        details = parse_error(body, headers)
    except PARSE_ERRORS:
        return
    assert isinstance(details.code, str) and isinstance(details.request_id, str)


def _first_child_text(root: ElementTree.Element, tag: str) -> str:
    """The text of the first direct child named ``tag``, ``""`` when it has none or there is none."""
    return next((child.text or "" for child in root if child.tag == tag), "")


@FUZZ
@given(st.lists(xml_trees(), max_size=4))
@example(["<Code>NoSuchKey</Code>", "<Message>gone</Message>", "<RequestId>5C3D</RequestId>"])
@example(["<Contents><Code>Nested</Code></Contents>", "<Code></Code>", "<Code>Second</Code>"])
def test_error_parser_on_hostile_documents(children: list[str]) -> None:
    body = f"<?xml version='1.0'?><Error>{''.join(children)}</Error>".encode()
    try:
        details = parse_error(body, {})
    except PARSE_ERRORS:
        return
    # What the document says, read by the plain parser: the first Code/Message/RequestId/HostId directly
    # under <Error>, "" for a missing or empty one; nested ones never count, and with no header the
    # request id has no fallback.
    root = ElementTree.fromstring(body)
    assert details == ErrorDetails(
        code=_first_child_text(root, "Code"),
        message=_first_child_text(root, "Message"),
        request_id=_first_child_text(root, "RequestId"),
        host_id=_first_child_text(root, "HostId"),
    )


@FUZZ
@given(st.text(max_size=60))
@example("bytes 5-3/10")
@example("bytes 0-0/*")
@example("bytes 99999999999999999999999-99999999999999999999999/1")
def test_content_range_parser(value: str) -> None:
    try:
        first, end, total = parse_content_range(value)
    except ValueError:
        return
    assert 0 <= first < end and (total is None or total >= 0)


_HEADER_VALUES = st.one_of(st.none(), st.text(max_size=30), st.integers(-5, 2**65).map(str))


@FUZZ
@given(
    st.sampled_from([200, 206, 204, 302]),
    _HEADER_VALUES,
    _HEADER_VALUES,
    st.integers(0, 2**40),
    st.integers(1, 2**20),
)
def test_body_range_check(
    status: int, length: str | None, content_range: str | None, first: int, size: int
) -> None:
    headers = {
        k: v for k, v in (("Content-Length", length), ("Content-Range", content_range)) if v is not None
    }
    try:
        check_body_range(status, headers, first, first + size)
    except ValueError:
        return
    assert headers["Content-Length"].strip().lstrip("+").isdigit()


@FUZZ
@given(_HEADER_VALUES, _HEADER_VALUES, _HEADER_VALUES, _HEADER_VALUES)
@example("10", None, "Mon, 99 Foo 2026 00:00:00 GMT", None)
@example("10", None, None, "18446744073709551616")
@example("-1", None, None, None)
def test_object_headers(length: str | None, etag: str | None, modified: str | None, crc: str | None) -> None:
    pairs = (
        ("Content-Length", length),
        ("ETag", etag),
        ("Last-Modified", modified),
        ("x-oss-hash-crc64ecma", crc),
    )
    headers = {k: v for k, v in pairs if v is not None}
    try:
        info = object_info_from_headers("bucket", "key", headers)
    except ValueError:
        return
    assert info.size >= 0 and (info.crc64 is None or 0 <= info.crc64 < 2**64)


_INTS = st.one_of(st.integers(-(2**64), 2**64), st.sampled_from([0, 1, -1, 2**63]))


@FUZZ
@given(_INTS, _INTS, _INTS)
def test_range_planner_raises_only_what_it_documents(a: int, b: int, c: int) -> None:
    for call in (
        lambda: plan_chunks(a, b) if 0 <= a // max(b, 1) < 10_000 else chunk_span(a, b, c),
        lambda: chunk_span(a, b, c),
        lambda: chunk_range(a, b, c),
        lambda: clamp_read(a, b, c),
        lambda: ByteRange(a, b),
    ):
        try:
            result = call()
        except (ValueError, IndexError):
            continue
        if isinstance(result, ByteRange):
            assert 0 <= result.start <= result.end
        elif isinstance(result, range):
            assert result.start >= 0 and result.step == 1
        else:
            assert all(0 <= r.start < r.end for r in result)


@FUZZ
@given(st.one_of(st.floats(), st.text(max_size=3), st.none(), st.booleans()), st.integers(0, 10))
def test_range_planner_refuses_non_integers(bad: object, good: int) -> None:
    for call in (lambda: ByteRange(bad, good), lambda: ByteRange(good, bad)):  # type: ignore[arg-type]
        try:
            call()
        except (TypeError, ValueError):
            continue
        assert isinstance(bad, int)  # bool is an int: accepted as 0/1
