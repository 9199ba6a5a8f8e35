"""Fault injection and throttling of localoss, observed on the wire: 503s, cut, short and corrupt bodies."""

from __future__ import annotations

import errno
import random
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable

import oss2
import pytest
from localoss_harness import LocalOss, raw_request, signed_headers

DATA = bytes((i * 7 + 3) % 251 for i in range(3 * 1024 * 1024 + 17))  # bigger than socket buffers
SEED = 20261125


def fault_position(seed: int, length: int, request_index: int = 0) -> int:
    """Where the server cuts or flips the body of its ``request_index``-th request (5 draws per request)."""
    rng = random.Random(seed)
    draws = [rng.random() for _ in range(5 * (request_index + 1))]
    return min(int(draws[5 * request_index + 4] * length), length - 1)


def raw_get(server: LocalOss, bucket: str, key: str) -> tuple[dict[str, str], bytes, str]:
    """GET over a bare socket, reading until the server closes; returns headers, body bytes, how it ended."""
    headers = signed_headers(server, "GET", bucket, key)
    request = f"GET /{bucket}/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    request += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "Connection: close\r\n\r\n"
    received = bytearray()
    ending = "eof"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request.encode())
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                ending = "reset"
                break
            if not chunk:
                break
            received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    parsed = {"status": lines[0].split(" ")[1]}
    parsed.update({k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])})
    return parsed, body, ending


def start_with_object(factory: Callable[..., LocalOss], *args: str) -> LocalOss:
    server = factory(*args)
    server.put_file("faults", "obj.bin", DATA)  # straight into the folder: no request drawn for it
    return server


def test_fault_503_answers_everything(localoss_factory: Callable[..., LocalOss]) -> None:
    server = start_with_object(localoss_factory, "--fault-503", "1")
    for method, key, params in (
        ("GET", "obj.bin", None),
        ("PUT", "new", None),
        ("GET", None, {"prefix": ""}),
    ):
        resp = raw_request(
            server, method, "faults", key, params=params, body=b"x" if method == "PUT" else b""
        )
        assert resp.status == 503
        root = ET.fromstring(resp.body)
        assert root.findtext("Code") == "SlowDown"
        assert root.findtext("RequestId") == resp.header("x-oss-request-id")
    head = raw_request(server, "HEAD", "faults", "obj.bin")
    assert (head.status, head.body) == (503, b"")
    assert not (server.root / "faults" / "new").exists()
    with pytest.raises(oss2.exceptions.ServerError) as info:
        oss2.Bucket(
            oss2.Auth(server.access_key_id, server.access_key_secret), server.endpoint, "faults"
        ).get_object("obj.bin")
    assert (info.value.status, info.value.code) == (503, "SlowDown")


def test_fault_reset_cuts_the_body(localoss_factory: Callable[..., LocalOss]) -> None:
    server = start_with_object(localoss_factory, "--fault-reset", "1", "--seed", str(SEED))
    headers, body, ending = raw_get(server, "faults", "obj.bin")
    assert headers["status"] == "200"
    assert headers["content-length"] == str(len(DATA))
    assert ending == "reset"
    cut = fault_position(SEED, len(DATA))
    # A reset drops what was still in the server's send buffer: at most `cut` bytes arrive, all correct.
    assert len(body) <= cut < len(DATA)
    assert body == DATA[: len(body)]


def test_fault_short_ends_the_body_early(localoss_factory: Callable[..., LocalOss]) -> None:
    server = start_with_object(localoss_factory, "--fault-short", "1", "--seed", str(SEED))
    headers, body, ending = raw_get(server, "faults", "obj.bin")
    assert headers["content-length"] == str(len(DATA))
    assert ending == "eof"
    assert body == DATA[: fault_position(SEED, len(DATA))]


def test_fault_corrupt_flips_exactly_one_byte(localoss_factory: Callable[..., LocalOss]) -> None:
    server = start_with_object(localoss_factory, "--fault-corrupt", "1", "--seed", str(SEED))
    headers, body, ending = raw_get(server, "faults", "obj.bin")
    assert ending == "eof"
    assert headers["content-length"] == str(len(body)) == str(len(DATA))
    differing = [i for i in range(len(DATA)) if body[i] != DATA[i]]
    assert differing == [fault_position(SEED, len(DATA))]
    assert body[differing[0]] == DATA[differing[0]] ^ 0xFF
    # The connection survives a corrupt body: a ranged GET on the same connection works.
    again = raw_request(server, "GET", "faults", "obj.bin", headers={"Range": "bytes=0-99"})
    assert again.status == 206
    assert len(again.body) == 100


def test_faults_only_touch_object_bodies(localoss_factory: Callable[..., LocalOss]) -> None:
    server = start_with_object(localoss_factory, "--fault-reset", "1", "--fault-corrupt", "1")
    listing = raw_request(server, "GET", "faults", params={"prefix": ""})
    assert listing.status == 200
    assert [e.text for e in ET.fromstring(listing.body).iter("Key")] == ["obj.bin"]
    head = raw_request(server, "HEAD", "faults", "obj.bin")
    assert head.header("Content-Length") == str(len(DATA))


def test_seed_makes_decisions_reproducible(localoss_factory: Callable[..., LocalOss]) -> None:
    def statuses(*args: str) -> list[int]:
        server = start_with_object(localoss_factory, "--fault-503", "0.5", *args)
        return [raw_request(server, "HEAD", "faults", "obj.bin").status for _ in range(40)]

    first = statuses("--seed", "7")
    second = statuses("--seed", "7")
    other = statuses("--seed", "8")
    assert first == second
    assert set(first) == {200, 503}
    assert first != other


@pytest.mark.parametrize(
    "args",
    [
        ("--conn-bandwidth-mibps", "4"),
        ("--bandwidth-mibps", "4"),
        ("--latency-ms", "20", "--conn-bandwidth-mibps", "8", "--bandwidth-mibps", "16"),
    ],
)
def test_throttled_bodies_arrive_intact(
    localoss_factory: Callable[..., LocalOss], args: tuple[str, ...]
) -> None:
    server = start_with_object(localoss_factory, *args)
    whole = raw_request(server, "GET", "faults", "obj.bin")
    assert whole.body == DATA
    ranged = raw_request(server, "GET", "faults", "obj.bin", headers={"Range": "bytes=1000-500999"})
    assert ranged.body == DATA[1000:501000]


def test_throttle_then_reset_on_sigterm_still_exits_cleanly(
    localoss_factory: Callable[..., LocalOss],
) -> None:
    server = start_with_object(localoss_factory, "--conn-bandwidth-mibps", "1")
    headers = signed_headers(server, "GET", "faults", "obj.bin")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    request = "GET /faults/obj.bin HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    sock.sendall(request.encode() + b"\r\n")
    assert sock.recv(100).startswith(b"HTTP/1.1 200")  # the body is trickling at 1 MiB/s
    assert server.stop() == 0
    try:
        while sock.recv(1 << 20):
            pass
    except OSError as exc:
        assert exc.errno in (errno.ECONNRESET, errno.EPIPE)
    sock.close()
