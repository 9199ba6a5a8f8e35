"""oss/body.py on real sockets: http.client reads the head, the kernel or the python path the body.

The server side is the test writing raw HTTP/1.1 onto one end of a ``socket.socketpair()``; the client
side is a real ``http.client.HTTPResponse`` on the other end. Run on both ``_fast`` backends by the CI
(``OSSMC_PUREPYTHON=1``), like every unit test.
"""

from __future__ import annotations

import http.client
import itertools
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ossmodelconnector._fast import crc64
from ossmodelconnector.errors import RequestTimeoutError
from ossmodelconnector.oss.body import can_use_kernel, receive_into

LIVENESS_S = 30.0


def head(length: int) -> bytes:
    return f'HTTP/1.1 206 Partial Content\r\nContent-Length: {length}\r\nETag: "e"\r\n\r\n'.encode()


@contextmanager
def response(
    parts: list[bytes], *, close: bool = True, hold: threading.Event | None = None
) -> Iterator[http.client.HTTPResponse]:
    """A response whose head was read, fed by a thread sending ``parts`` one ``sendall`` each."""
    server, client = socket.socketpair()
    client.settimeout(LIVENESS_S)  # as the transport sets it: the descriptor is non-blocking
    first = threading.Event()

    def feed() -> None:
        for index, part in enumerate(parts):
            server.sendall(part)
            if index == 0:
                first.set()
        first.set()
        if hold is not None:
            hold.wait(LIVENESS_S)
        if close:
            server.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    resp = http.client.HTTPResponse(client, method="GET")
    first.wait(LIVENESS_S)
    resp.begin()
    try:
        yield resp
    finally:
        if hold is not None:
            hold.set()
        thread.join(LIVENESS_S)
        resp.close()
        client.close()
        server.close()


def receive_all(resp: http.client.HTTPResponse, dest: memoryview, kernel: bool) -> tuple[int, int]:
    pos, crc = 0, 0
    while pos < len(dest):
        got, crc = receive_into(resp, dest[pos:], crc, kernel=kernel, timeout_s=LIVENESS_S, piece_bytes=65536)
        if not got:
            break
        pos += got
    return pos, crc


@settings(max_examples=40, deadline=None)
@given(
    body=st.binary(min_size=1, max_size=300_000),
    cuts=st.lists(st.integers(0, 300_000), max_size=5),
    with_head=st.integers(0, 9000),
    kernel=st.booleans(),
)
def test_body_arrives_whole_however_it_is_cut(
    body: bytes, cuts: list[int], with_head: int, kernel: bool
) -> None:
    # The head and up to ``with_head`` body bytes in one send: http.client buffers some body bytes (the
    # kernel path must take those from its buffer first), the rest in pieces.
    first = head(len(body)) + body[:with_head]
    rest = body[with_head:]
    bounds = sorted({min(c, len(rest)) for c in cuts} | {0, len(rest)})
    parts = [first] + [rest[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    dest = bytearray(len(body))
    with response(parts, close=False, hold=threading.Event()) as resp:
        assert can_use_kernel(resp, cleartext=True)
        count, crc = receive_all(resp, memoryview(dest), kernel)
        # Complete: http.client considers the response done, so its connection would be reused.
        assert resp.isclosed()
    assert (count, bytes(dest), crc) == (len(body), body, crc64(body))


@pytest.mark.parametrize("kernel", [True, False])
def test_short_body_returns_what_came_then_nothing(kernel: bool) -> None:
    body = b"0123456789" * 100
    with response([head(5000) + body[:300], body[300:]]) as resp:
        dest = memoryview(bytearray(5000))
        count, crc = receive_all(resp, dest, kernel)
        assert (count, crc) == (1000, crc64(body))
        assert receive_into(resp, dest[count:], crc, kernel=kernel, timeout_s=1.0, piece_bytes=4096)[0] == 0
        assert not resp.isclosed() or kernel is False  # incomplete: the exchange must not reuse it


def test_kernel_timeout_counts_the_buffered_bytes_too() -> None:
    hold = threading.Event()
    with response([head(1000) + b"a" * 100], close=False, hold=hold) as resp:
        dest = memoryview(bytearray(1000))
        with pytest.raises(RequestTimeoutError) as caught:
            receive_into(resp, dest, 0, kernel=True, timeout_s=0.05, piece_bytes=4096)
        hold.set()
    assert caught.value.range == (0, 100) and bytes(dest[:100]) == b"a" * 100


def test_chunked_and_unsized_bodies_and_tls_stay_on_the_python_path() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    with response([chunked]) as resp:
        assert not can_use_kernel(resp, cleartext=True)
        dest = memoryview(bytearray(5))
        assert receive_all(resp, dest, kernel=False) == (5, crc64(b"hello"))
        assert bytes(dest) == b"hello"
    with response([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"]) as resp:
        assert not can_use_kernel(resp, cleartext=True)  # no Content-Length
    with response([head(3) + b"abc"]) as resp:
        assert can_use_kernel(resp, cleartext=True)
        assert not can_use_kernel(resp, cleartext=False)  # the descriptor carries TLS records
