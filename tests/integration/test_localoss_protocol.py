"""localoss over raw ``http.client``: ranges, conditions, HEAD, PUT digests, DELETE, errors, addressing.

Every request is signed (OSS V1, by oss2's own signer) and goes over a real socket to the subprocess.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import socket
import time
import xml.etree.ElementTree as ET
from email.utils import formatdate

import oss2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from localoss_harness import LocalOss, raw_request, signed_headers

DATA = bytes(range(256)) * 40 + b"tail"  # 10244 bytes, every offset distinguishable
SIZE = len(DATA)


def crc(data: bytes) -> int:
    c = oss2.utils.Crc64(0)
    c.update(data)
    return int(c.crc)


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest().upper()


def error_fields(body: bytes) -> dict[str, str]:
    root = ET.fromstring(body)
    assert root.tag == "Error"
    return {child.tag: child.text or "" for child in root}


@pytest.fixture
def obj(localoss: LocalOss, bucket: str) -> tuple[str, str]:
    resp = raw_request(localoss, "PUT", bucket, "dir/object.bin", body=DATA)
    assert resp.status == 200, resp.body
    return bucket, "dir/object.bin"


# -- GetObject ranges ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=10-19", 10, 20),
        ("bytes=100-", 100, SIZE),
        ("bytes=-10", SIZE - 10, SIZE),
        ("bytes=-100000", 0, SIZE),  # a suffix longer than the object is the whole object
        ("bytes=10000-99999", 10000, SIZE),  # the end is clamped to the object
        (f"bytes={SIZE - 1}-", SIZE - 1, SIZE),
    ],
)
@pytest.mark.parametrize("standard", [False, True])
def test_satisfiable_ranges_give_206(
    localoss: LocalOss, obj: tuple[str, str], spec: str, start: int, end: int, standard: bool
) -> None:
    headers = {"Range": spec}
    if standard:
        headers["x-oss-range-behavior"] = "standard"
    resp = raw_request(localoss, "GET", *obj, headers=headers)
    assert resp.status == 206
    assert resp.body == DATA[start:end]
    assert resp.header("Content-Range") == f"bytes {start}-{end - 1}/{SIZE}"
    assert resp.header("Content-Length") == str(end - start)
    assert resp.header("Accept-Ranges") == "bytes"
    assert resp.header("x-oss-hash-crc64ecma") == str(crc(DATA))  # the whole object's, as OSS


@pytest.mark.parametrize("spec", [f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 10}", "bytes=-0"])
def test_unsatisfiable_range_is_whole_object_unless_standard(
    localoss: LocalOss, obj: tuple[str, str], spec: str
) -> None:
    resp = raw_request(localoss, "GET", *obj, headers={"Range": spec})
    assert resp.status == 200
    assert resp.body == DATA
    assert resp.header("Content-Range") is None

    resp = raw_request(localoss, "GET", *obj, headers={"Range": spec, "x-oss-range-behavior": "standard"})
    assert resp.status == 416
    assert error_fields(resp.body)["Code"] == "InvalidRange"
    assert resp.header("Content-Range") == f"bytes */{SIZE}"


@pytest.mark.parametrize("spec", ["bytes=5-2", "bytes=a-b", "items=0-5", "bytes=0-1,4-5", "bytes=", "0-5"])
def test_invalid_range_syntax_is_whole_object(localoss: LocalOss, obj: tuple[str, str], spec: str) -> None:
    for extra in ({}, {"x-oss-range-behavior": "standard"}):
        resp = raw_request(localoss, "GET", *obj, headers={"Range": spec, **extra})
        assert resp.status == 200
        assert resp.body == DATA


def test_range_on_empty_object(localoss: LocalOss, bucket: str) -> None:
    assert raw_request(localoss, "PUT", bucket, "empty").status == 200
    resp = raw_request(localoss, "GET", bucket, "empty", headers={"Range": "bytes=0-10"})
    assert (resp.status, resp.body) == (200, b"")
    std = {"Range": "bytes=0-10", "x-oss-range-behavior": "standard"}
    assert raw_request(localoss, "GET", bucket, "empty", headers=std).status == 416


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(0, SIZE + 50),
    length=st.integers(1, SIZE + 50),
    form=st.sampled_from(["ab", "a-", "-n"]),
)
def test_range_property(localoss: LocalOss, obj: tuple[str, str], start: int, length: int, form: str) -> None:
    spec = {"ab": f"bytes={start}-{start + length - 1}", "a-": f"bytes={start}-", "-n": f"bytes=-{length}"}[
        form
    ]
    headers = {"Range": spec, "x-oss-range-behavior": "standard"}
    resp = raw_request(localoss, "GET", *obj, headers=headers)
    if form == "-n":
        assert resp.status == 206
        assert resp.body == DATA[-length:]
    elif start >= SIZE:
        assert resp.status == 416
    else:
        end = SIZE if form == "a-" else min(start + length, SIZE)
        assert resp.status == 206
        assert resp.body == DATA[start:end]


# -- conditions, HEAD, metadata -----------------------------------------------------------------------------


def test_object_headers_etag_crc(localoss: LocalOss, obj: tuple[str, str]) -> None:
    resp = raw_request(localoss, "GET", *obj)
    assert resp.status == 200
    assert resp.body == DATA
    assert resp.header("ETag") == f'"{md5_hex(DATA)}"'
    assert resp.header("x-oss-hash-crc64ecma") == str(crc(DATA))
    assert resp.header("x-oss-object-type") == "Normal"
    assert resp.header("Content-Type") == "application/octet-stream"
    assert resp.header("Server") == "localoss"
    assert resp.header("Date") and resp.header("Last-Modified")
    assert resp.header("x-oss-request-id")


def test_conditional_gets(localoss: LocalOss, obj: tuple[str, str]) -> None:
    etag = f'"{md5_hex(DATA)}"'
    ok = raw_request(localoss, "GET", *obj, headers={"If-Match": etag})
    assert (ok.status, ok.body) == (200, DATA)
    failed = raw_request(localoss, "GET", *obj, headers={"If-Match": '"0123"'})
    assert failed.status == 412
    assert error_fields(failed.body)["Code"] == "PreconditionFailed"
    not_modified = raw_request(localoss, "GET", *obj, headers={"If-None-Match": etag})
    assert (not_modified.status, not_modified.body) == (304, b"")
    other = raw_request(localoss, "GET", *obj, headers={"If-None-Match": '"0123"'})
    assert (other.status, other.body) == (200, DATA)
    future = formatdate(time.time() + 3600, usegmt=True)
    past = formatdate(time.time() - 3600, usegmt=True)
    assert raw_request(localoss, "GET", *obj, headers={"If-Modified-Since": future}).status == 304
    assert raw_request(localoss, "GET", *obj, headers={"If-Modified-Since": past}).status == 200
    assert raw_request(localoss, "GET", *obj, headers={"If-Unmodified-Since": past}).status == 412
    assert raw_request(localoss, "GET", *obj, headers={"If-Unmodified-Since": future}).status == 200
    # If-Match wins over a range: a mismatch is 412 even with a valid Range.
    both = raw_request(localoss, "GET", *obj, headers={"If-Match": '"0"', "Range": "bytes=0-1"})
    assert both.status == 412


def test_head_and_object_meta(localoss: LocalOss, obj: tuple[str, str]) -> None:
    get = raw_request(localoss, "GET", *obj)
    head = raw_request(localoss, "HEAD", *obj)
    assert head.status == 200
    assert head.body == b""
    assert head.header("Content-Length") == str(SIZE)
    for name in ("ETag", "Last-Modified", "Content-Type", "x-oss-hash-crc64ecma", "x-oss-object-type"):
        assert head.header(name) == get.header(name)
    meta = raw_request(localoss, "HEAD", *obj, params={"objectMeta": ""})
    assert meta.status == 200
    assert meta.header("ETag") == get.header("ETag")
    assert meta.header("Content-Length") == str(SIZE)
    ranged = raw_request(localoss, "HEAD", *obj, headers={"Range": "bytes=0-9"})
    assert (ranged.status, ranged.header("Content-Length"), ranged.body) == (206, "10", b"")


def test_head_errors_have_no_body_but_a_request_id(localoss: LocalOss, bucket: str) -> None:
    resp = raw_request(localoss, "HEAD", bucket, "missing")
    assert resp.status == 404
    assert resp.body == b""
    assert resp.header("x-oss-request-id")
    decoded = error_fields(base64.b64decode(resp.header("x-oss-err") or ""))
    assert decoded["Code"] == "NoSuchKey"


def test_user_metadata_and_content_type_round_trip(localoss: LocalOss, bucket: str) -> None:
    headers = {"Content-Type": "text/plain", "x-oss-meta-author": "tests", "x-oss-meta-Mixed": "Case"}
    assert raw_request(localoss, "PUT", bucket, "m.txt", headers=headers, body=b"hi").status == 200
    head = raw_request(localoss, "HEAD", bucket, "m.txt")
    assert head.header("Content-Type") == "text/plain"
    assert head.header("x-oss-meta-author") == "tests"
    assert head.header("x-oss-meta-mixed") == "Case"
    override = raw_request(localoss, "GET", bucket, "m.txt", params={"response-content-type": "x/y"})
    assert override.header("Content-Type") == "x/y"


def test_metadata_follows_the_file_on_disk(localoss: LocalOss, bucket: str) -> None:
    path = localoss.put_file(bucket, "dropped.bin", b"first version")
    first = raw_request(localoss, "GET", bucket, "dropped.bin")
    assert first.body == b"first version"
    assert first.header("ETag") == f'"{md5_hex(b"first version")}"'
    assert first.header("x-oss-hash-crc64ecma") == str(crc(b"first version"))
    # Same size, new bytes, mtime moved forward: the server must notice and hash again.
    path.write_bytes(b"other version")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    second = raw_request(localoss, "GET", bucket, "dropped.bin")
    assert second.body == b"other version"
    assert second.header("ETag") == f'"{md5_hex(b"other version")}"'
    assert second.header("x-oss-hash-crc64ecma") == str(crc(b"other version"))
    # A rewrite within the same clock tick and with the same size is caught too (racy-clean rule).
    path.write_bytes(b"third version")
    third = raw_request(localoss, "HEAD", bucket, "dropped.bin")
    assert third.header("ETag") == f'"{md5_hex(b"third version")}"'
    # Metadata lives outside the key space.
    assert (localoss.root / ".localoss").is_dir()
    assert sorted(p.name for p in (localoss.root / bucket).iterdir()) == ["dropped.bin"]


# -- PUT, DELETE --------------------------------------------------------------------------------------------


def test_put_with_content_md5(localoss: LocalOss, bucket: str) -> None:
    good = base64.b64encode(hashlib.md5(DATA).digest()).decode()
    resp = raw_request(localoss, "PUT", bucket, "md5/good", headers={"Content-MD5": good}, body=DATA)
    assert resp.status == 200
    assert resp.header("ETag") == f'"{md5_hex(DATA)}"'
    assert resp.header("x-oss-hash-crc64ecma") == str(crc(DATA))

    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    resp = raw_request(localoss, "PUT", bucket, "md5/bad", headers={"Content-MD5": wrong}, body=DATA)
    assert resp.status == 400
    assert error_fields(resp.body)["Code"] == "InvalidDigest"
    resp = raw_request(localoss, "PUT", bucket, "md5/bad", headers={"Content-MD5": "not base64!"}, body=DATA)
    assert resp.status == 400
    assert error_fields(resp.body)["Code"] == "InvalidDigest"
    assert raw_request(localoss, "HEAD", bucket, "md5/bad").status == 404
    assert not list((localoss.root / ".localoss" / "tmp").iterdir())


def test_put_replaces_and_delete_removes(localoss: LocalOss, bucket: str) -> None:
    assert raw_request(localoss, "PUT", bucket, "a/b/c", body=b"one").status == 200
    assert raw_request(localoss, "PUT", bucket, "a/b/c", body=b"two!").status == 200
    assert raw_request(localoss, "GET", bucket, "a/b/c").body == b"two!"
    assert raw_request(localoss, "DELETE", bucket, "a/b/c").status == 204
    missing = raw_request(localoss, "GET", bucket, "a/b/c")
    assert missing.status == 404
    fields = error_fields(missing.body)
    assert fields["Code"] == "NoSuchKey"
    assert fields["RequestId"] == missing.header("x-oss-request-id")
    assert raw_request(localoss, "DELETE", bucket, "a/b/c").status == 204  # missing key: still 204
    assert not (localoss.root / bucket / "a").exists()  # empty folders pruned
    # ...so that the name is free for an object now.
    assert raw_request(localoss, "PUT", bucket, "a", body=b"x").status == 200


def test_chunked_put_and_expect_continue(localoss: LocalOss, bucket: str) -> None:
    headers = signed_headers(localoss, "PUT", bucket, "chunked")
    conn = http.client.HTTPConnection("127.0.0.1", localoss.port, timeout=30)
    conn.request(
        "PUT",
        f"/{bucket}/chunked",
        body=iter([b"abc", b"defg", b"h" * 70000]),
        headers=headers,
        encode_chunked=True,
    )
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200
    assert raw_request(localoss, "GET", bucket, "chunked", conn=conn).body == b"abcdefg" + b"h" * 70000
    conn.close()

    headers = signed_headers(localoss, "PUT", bucket, "expect")
    headers.update({"Expect": "100-continue", "Content-Length": "5"})
    with socket.create_connection(("127.0.0.1", localoss.port), timeout=30) as sock:
        head = f"PUT /{bucket}/expect HTTP/1.1\r\nHost: x\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        sock.sendall(head.encode() + b"\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"hello")
        assert sock.recv(1000).startswith(b"HTTP/1.1 200 ")
    assert raw_request(localoss, "GET", bucket, "expect").body == b"hello"


def test_folder_markers_and_unrepresentable_keys(localoss: LocalOss, bucket: str) -> None:
    assert raw_request(localoss, "PUT", bucket, "folder/").status == 200
    marker = raw_request(localoss, "GET", bucket, "folder/")
    assert (marker.status, marker.body) == (200, b"")
    assert marker.header("ETag") == f'"{md5_hex(b"")}"'
    assert raw_request(localoss, "PUT", bucket, "folder/inside", body=b"x").status == 200
    listing = raw_request(localoss, "GET", bucket, params={"prefix": "folder/"})
    keys = [e.text for e in ET.fromstring(listing.body).iter("Key")]
    assert keys == ["folder/", "folder/inside"]
    # A key ending in '/' with content cannot be a folder marker.
    assert raw_request(localoss, "PUT", bucket, "other/", body=b"data").status == 400
    # 'x' as an object and 'x/y' at once cannot both live in a folder.
    assert raw_request(localoss, "PUT", bucket, "x", body=b"1").status == 200
    conflict = raw_request(localoss, "PUT", bucket, "x/y", body=b"2")
    assert conflict.status == 409
    assert "cannot be stored" in error_fields(conflict.body)["Message"]
    assert raw_request(localoss, "PUT", bucket, "folder", body=b"3").status == 409
    assert raw_request(localoss, "GET", bucket, "x").body == b"1"
    # Deleting the marker keeps the folder's other objects.
    assert raw_request(localoss, "DELETE", bucket, "folder/").status == 204
    assert raw_request(localoss, "GET", bucket, "folder/").status == 404
    assert raw_request(localoss, "GET", bucket, "folder/inside").body == b"x"


# -- names and addressing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/{b}/../escape", "../escape"),
        ("/{b}/%2e%2e/escape", "../escape"),
        ("/{b}/a/%2E%2E/%2e%2e/escape", "a/../../escape"),
        ("/{b}/..%2fescape", "../escape"),
        ("/{b}//etc/escape", "/etc/escape"),
        ("/{b}/%2Fetc%2Fescape", "/etc/escape"),
        ("/{b}/a%00b", "a\x00b"),
        ("/{b}/a/./b", "a/./b"),
        ("/{b}/..%5c..%5cescape", "..\\..\\escape"),
        ("/{b}/a//b", "a//b"),
    ],
)
def test_traversal_keys_are_refused(localoss: LocalOss, bucket: str, path: str, key: str) -> None:
    before = sorted(str(p) for p in localoss.root.parent.rglob("*"))
    for method in ("PUT", "GET", "DELETE"):
        resp = raw_request(localoss, method, bucket, key, path=path.format(b=bucket), body=b"evil")
        assert resp.status == 400, (method, resp.status, resp.body)
        assert error_fields(resp.body)["Code"] == "InvalidObjectName"
    after = sorted(str(p) for p in localoss.root.parent.rglob("*"))
    assert after == before


def test_bad_bucket_names_are_refused(localoss: LocalOss) -> None:
    for bucket, raw in (("..", ".."), (".localoss", ".localoss"), ("a/b", "a%2fb"), ("UPPER", "UPPER")):
        resp = raw_request(localoss, "GET", bucket, "key", path=f"/{raw}/key")
        assert resp.status == 400
        assert error_fields(resp.body)["Code"] == "InvalidBucketName"


def test_keys_are_decoded_exactly_once(localoss: LocalOss, bucket: str) -> None:
    for key in ("with space", "plus+sign", "percent%41", "ünïcødé/文件", "a%2Fb", "tilde~"):
        assert raw_request(localoss, "PUT", bucket, key, body=key.encode()).status == 200
        assert raw_request(localoss, "GET", bucket, key).body == key.encode()
    assert (localoss.root / bucket / "percent%41").read_bytes() == b"percent%41"
    assert (localoss.root / bucket / "plus+sign").exists()
    assert (localoss.root / bucket / "a%2Fb").exists()


def test_virtual_hosted_addressing(localoss_factory) -> None:  # type: ignore[no-untyped-def]
    server = localoss_factory("--domain", "oss.example.test")
    server.make_bucket("vhost")
    headers = {"Host": f"vhost.oss.example.test:{server.port}"}
    put = raw_request(server, "PUT", "vhost", "k/e y", headers=headers, path="/k/e%20y", body=b"v")
    assert put.status == 200
    assert (server.root / "vhost" / "k" / "e y").read_bytes() == b"v"
    got = raw_request(server, "GET", "vhost", "k/e y", headers=headers, path="/k/e%20y")
    assert got.body == b"v"
    listing = raw_request(server, "GET", "vhost", headers=headers, path="/")
    assert [e.text for e in ET.fromstring(listing.body).iter("Key")] == ["k/e y"]
    # The bare domain (or an IP) is path style.
    plain = raw_request(server, "GET", "vhost", "k/e y", headers={"Host": "oss.example.test"})
    assert plain.body == b"v"


# -- errors, request ids, keep-alive, auth ------------------------------------------------------------------


def test_errors_are_oss_xml(localoss: LocalOss, bucket: str) -> None:
    resp = raw_request(localoss, "GET", "no-such-bucket-here", "k")
    assert resp.status == 404
    fields = error_fields(resp.body)
    assert fields["Code"] == "NoSuchBucket"
    assert fields["RequestId"] == resp.header("x-oss-request-id")
    assert fields["HostId"]
    assert "no-such-bucket-here" in fields["Message"]
    assert resp.header("Content-Type") == "application/xml"
    assert resp.header("Content-Length") == str(len(resp.body))
    assert raw_request(localoss, "POST", bucket, "k", params={"uploads": ""}).status == 501


def test_auth_is_enforced(localoss: LocalOss, obj: tuple[str, str]) -> None:
    anonymous = raw_request(localoss, "GET", *obj, sign=False)
    assert anonymous.status == 403
    assert error_fields(anonymous.body)["Code"] == "AccessDenied"
    wrong = LocalOss(localoss.endpoint, localoss.root, localoss.proc, access_key_secret="wrong")
    assert error_fields(raw_request(wrong, "GET", *obj).body)["Code"] == "SignatureDoesNotMatch"
    unknown = LocalOss(localoss.endpoint, localoss.root, localoss.proc, access_key_id="nobody")
    assert error_fields(raw_request(unknown, "GET", *obj).body)["Code"] == "InvalidAccessKeyId"


def test_request_ids_unique_and_keep_alive(localoss: LocalOss, obj: tuple[str, str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", localoss.port, timeout=30)
    conn.connect()
    sock = conn.sock
    ids = set()
    for i in range(20):
        method = ("GET", "HEAD")[i % 2]
        resp = raw_request(localoss, method, *obj, conn=conn, headers={"Range": f"bytes={i}-{i + 99}"})
        assert resp.status == 206
        assert resp.body == (DATA[i : i + 100] if method == "GET" else b"")
        ids.add(resp.header("x-oss-request-id"))
    assert raw_request(localoss, "GET", *obj, conn=conn, params={"nope": ""}).status == 200
    missing = raw_request(localoss, "GET", obj[0], "missing", conn=conn)
    assert missing.status == 404
    ids.add(missing.header("x-oss-request-id"))
    assert conn.sock is sock  # one connection carried every exchange
    assert len(ids) == 21
    conn.close()


def test_bucket_operations(localoss: LocalOss) -> None:
    name = f"made-by-put-{os.getpid()}"
    assert raw_request(localoss, "PUT", name).status == 200
    assert raw_request(localoss, "PUT", name).status == 200  # idempotent for its owner
    assert raw_request(localoss, "HEAD", name).status == 200
    service = raw_request(localoss, "GET", None)
    assert name in [e.text for e in ET.fromstring(service.body).iter("Name")]
    assert raw_request(localoss, "PUT", name, "k", body=b"x").status == 200
    full = raw_request(localoss, "DELETE", name)
    assert (full.status, error_fields(full.body)["Code"]) == (409, "BucketNotEmpty")
    assert raw_request(localoss, "DELETE", name, "k").status == 204
    assert raw_request(localoss, "DELETE", name).status == 204
    assert raw_request(localoss, "HEAD", name).status == 404
    assert not (localoss.root / name).exists()


def test_if_match_sees_a_rewrite_on_disk(localoss: LocalOss, bucket: str) -> None:
    path = localoss.put_file(bucket, "changing", b"a" * 1000)
    etag = raw_request(localoss, "HEAD", bucket, "changing").header("ETag") or ""
    path.write_bytes(b"b" * 2000)  # the object changes between two ranged GETs of a download
    resp = raw_request(localoss, "GET", bucket, "changing", headers={"Range": "bytes=0-9", "If-Match": etag})
    assert resp.status == 412
    fresh = raw_request(localoss, "GET", bucket, "changing", headers={"Range": "bytes=0-9"})
    assert (fresh.status, fresh.body) == (206, b"b" * 10)
    assert fresh.header("ETag") != etag
