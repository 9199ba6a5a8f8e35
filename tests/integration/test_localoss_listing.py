"""localoss listings and robustness over raw ``http.client``: a listing model, 20,000 keys, concurrency."""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
import xml.etree.ElementTree as ET
from urllib.parse import unquote

from hypothesis import given, settings
from hypothesis import strategies as st
from localoss_harness import LocalOss, raw_request, signed_headers

# -- listings -----------------------------------------------------------------------------------------------

_KEY_ALPHABET = "ab/-.+ %é0~"
_bucket_serial = iter(range(10**9))


def _storable(keys: list[str]) -> list[str]:
    """Keep keys a folder can hold together (no '.'/'..'/empty segments, no key that is another's folder)."""
    kept: list[str] = []
    for key in keys:
        segments = key.split("/")
        if any(s in ("", ".", "..") for s in segments):
            continue
        folders = {"/".join(segments[:i]) for i in range(1, len(segments))}
        if any(k in folders or k.startswith(key + "/") for k in kept):
            continue
        kept.append(key)
    return kept


def _list_all(
    server: LocalOss, bucket: str, *, prefix: str, delimiter: str, max_keys: int, version: int, url: bool
) -> tuple[list[str], list[str], list[list[str]]]:
    objects: list[str] = []
    prefixes: list[str] = []
    pages: list[list[str]] = []
    token = ""
    for _ in range(1000):
        params = {"prefix": prefix, "delimiter": delimiter, "max-keys": str(max_keys)}
        if url:
            params["encoding-type"] = "url"
        if version == 2:
            params["list-type"] = "2"
            if token:
                params["continuation-token"] = token
        elif token:
            params["marker"] = token
        resp = raw_request(server, "GET", bucket, params=params)
        assert resp.status == 200, resp.body
        root = ET.fromstring(resp.body)

        def text(value: str | None) -> str:
            return unquote(value or "") if url else value or ""

        page_objects = [text(c.findtext("Key")) for c in root.iter("Contents")]
        page_prefixes = [text(c.findtext("Prefix")) for c in root.iter("CommonPrefixes")]
        assert len(page_objects) + len(page_prefixes) <= max_keys
        if version == 2:
            assert root.findtext("KeyCount") == str(len(page_objects) + len(page_prefixes))
        objects += page_objects
        prefixes += page_prefixes
        pages.append(sorted(page_objects + page_prefixes))
        if root.findtext("IsTruncated") != "true":
            return objects, prefixes, pages
        token = root.findtext("NextContinuationToken") if version == 2 else text(root.findtext("NextMarker"))
        assert token
    raise AssertionError("listing never ended")


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.text(_KEY_ALPHABET, min_size=1, max_size=6), min_size=0, max_size=25, unique=True),
    prefix=st.text("ab/é", max_size=2),
    delimiter=st.sampled_from(["", "/", "-", "b"]),
    max_keys=st.integers(1, 6),
    version=st.sampled_from([1, 2]),
    url=st.booleans(),
)
def test_listing_matches_a_model(
    localoss: LocalOss,
    keys: list[str],
    prefix: str,
    delimiter: str,
    max_keys: int,
    version: int,
    url: bool,
) -> None:
    bucket = f"listing-model-{os.getpid()}-{next(_bucket_serial)}"
    localoss.make_bucket(bucket)
    stored = _storable(keys)
    for key in stored:
        localoss.put_file(bucket, key, key.encode())
    objects, prefixes, pages = _list_all(
        localoss, bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys, version=version, url=url
    )
    ordered = sorted(stored, key=lambda k: k.encode())
    want_objects = [
        k for k in ordered if k.startswith(prefix) and (not delimiter or delimiter not in k[len(prefix) :])
    ]
    want_prefixes = sorted(
        {
            k[: k.index(delimiter, len(prefix)) + len(delimiter)]
            for k in ordered
            if k.startswith(prefix) and delimiter and delimiter in k[len(prefix) :]
        }
    )
    assert objects == want_objects
    assert prefixes == want_prefixes
    flat = [entry for page in pages for entry in page]
    assert flat == sorted(flat) and len(set(flat)) == len(flat)  # pages follow each other in key order


def test_listing_20000_keys_in_pages_of_1000(localoss: LocalOss, bucket: str) -> None:
    keys = [f"shard{i % 20:02d}/part-{i:06d}.bin" for i in range(20000)]
    for key in keys:
        localoss.put_file(bucket, key, b"")
    objects, prefixes, pages = _list_all(
        localoss, bucket, prefix="", delimiter="", max_keys=1000, version=2, url=False
    )
    assert objects == sorted(keys)
    assert len(pages) == 20
    assert prefixes == []
    # A file dropped between pages shows up in the next listing (the index notices the folder changed).
    localoss.put_file(bucket, "shard00/zz-late.bin", b"x")
    again, _, _ = _list_all(
        localoss, bucket, prefix="shard00/", delimiter="/", max_keys=1000, version=1, url=True
    )
    assert again[-1] == "shard00/zz-late.bin"
    assert len(again) == 1001


# -- robustness ---------------------------------------------------------------------------------------------


def test_malformed_requests_and_aborted_uploads(localoss: LocalOss, bucket: str) -> None:
    with socket.create_connection(("127.0.0.1", localoss.port), timeout=30) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        reply = sock.recv(1000)
        assert reply.startswith(b"HTTP/1.1 400 ")
        assert b"x-oss-request-id: " in reply
    headers = signed_headers(localoss, "PUT", bucket, "aborted")
    with socket.create_connection(("127.0.0.1", localoss.port), timeout=30) as sock:
        head = f"PUT /{bucket}/aborted HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
        sock.sendall((head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())
        sock.sendall(b"partial body")  # then the client goes away
    # The server is still fine, and nothing half-written became an object.
    assert raw_request(localoss, "HEAD", bucket, "aborted").status == 404
    assert raw_request(localoss, "PUT", bucket, "after", body=b"ok").status == 200
    deadline = time.monotonic() + 10
    while list((localoss.root / ".localoss" / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list((localoss.root / ".localoss" / "tmp").iterdir())


def test_concurrent_mixed_traffic(localoss: LocalOss, bucket: str) -> None:
    blob = os.urandom(256 * 1024)
    localoss.put_file(bucket, "shared.bin", blob)
    failures: list[str] = []

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", localoss.port, timeout=60)
        try:
            for i in range(25):
                key = f"w{n}/k{i % 5}"
                put = raw_request(localoss, "PUT", bucket, key, body=f"{n}-{i}".encode(), conn=conn)
                got = raw_request(localoss, "GET", bucket, key, conn=conn)
                start = (n * 997 + i * 4099) % (len(blob) - 5000)
                ranged = raw_request(
                    localoss,
                    "GET",
                    bucket,
                    "shared.bin",
                    headers={"Range": f"bytes={start}-{start + 4999}"},
                    conn=conn,
                )
                listing = raw_request(localoss, "GET", bucket, params={"prefix": f"w{n}/"}, conn=conn)
                if i % 7 == 6:
                    raw_request(localoss, "DELETE", bucket, key, conn=conn)
                if (put.status, got.status, got.body) != (200, 200, f"{n}-{i}".encode()):
                    failures.append(f"{key}: {put.status} {got.status} {got.body[:20]!r}")
                if ranged.body != blob[start : start + 5000] or listing.status != 200:
                    failures.append(f"{key}: range or listing wrong")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    listing = raw_request(localoss, "GET", bucket, params={"max-keys": "1000"})
    keys = sorted(e.text or "" for e in ET.fromstring(listing.body).iter("Key"))
    expected = {"shared.bin"}
    for n in range(8):
        for k in range(5):
            last = max(i for i in range(25) if i % 5 == k)
            if last % 7 != 6:
                expected.add(f"w{n}/k{k}")
    assert keys == sorted(expected)
