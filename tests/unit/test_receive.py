"""The receive kernel and its twin: same bytes, counts, CRCs, errors and messages, on real sockets.

Every test runs on the Cython module (imported directly, so an unbuilt extension fails instead of
silently testing the twin twice) and on the pure-Python twin. Peers are real sockets: a
``socket.socketpair()`` for pieces, short bodies and silence, a TCP connection on 127.0.0.1 for resets
(only TCP has them). No test asserts a duration.
"""

from __future__ import annotations

import importlib
import math
import os
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ossmodelconnector._fast import _reference, crc64
from ossmodelconnector.errors import CODE_CONNECTION, CODE_TIMEOUT, RequestError, RequestTimeoutError

KERNELS = ["cython", "python"]
LIVENESS_S = 30.0  # a bound so that a bug fails a test instead of hanging it


def load_kernel(name: str) -> ModuleType:
    return importlib.import_module("ossmodelconnector._fast.receive") if name == "cython" else _reference


@contextmanager
def peer(send: Callable[[socket.socket], None], *, tcp: bool = False) -> Iterator[socket.socket]:
    """The receiving end of a connected pair; ``send`` runs on the other end in a thread."""
    if tcp:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            receiver = socket.create_connection(listener.getsockname(), timeout=LIVENESS_S)
            sender, _ = listener.accept()
    else:
        sender, receiver = socket.socketpair()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            send(sender)
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        thread.join(LIVENESS_S)
        receiver.close()
        sender.close()
    assert not thread.is_alive(), "the sending peer did not finish"
    assert not errors, errors


def pieces_of(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for size in sizes:
        if pos >= len(data):
            break
        out.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        out.append(data[pos:])
    return out


def sender(
    data: bytes, sizes: list[int], *, then: str = "close", hold: threading.Event | None = None
) -> Callable[[socket.socket], None]:
    def send(sock: socket.socket) -> None:
        for piece in pieces_of(data, sizes):
            sock.sendall(piece)
        if then == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            assert hold is not None and hold.wait(LIVENESS_S)  # the receiver has every byte
            sock.close()
        elif then == "hold":
            assert hold is not None and hold.wait(LIVENESS_S)  # silent until the receiver timed out
        else:
            sock.shutdown(socket.SHUT_WR)

    return send


@pytest.mark.parametrize("name", KERNELS)
@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(max_size=600_000),
    sizes=st.lists(st.integers(1, 200_000), max_size=8),
    extra=st.integers(-1000, 1000),
    seed=st.integers(0, 2**64 - 1),
    blocking=st.booleans(),
)
def test_fills_the_span_from_any_pieces(
    name: str, data: bytes, sizes: list[int], extra: int, seed: int, blocking: bool
) -> None:
    kernel = load_kernel(name)
    dest = bytearray(max(0, len(data) + extra))
    with peer(sender(data, sizes)) as sock:
        sock.settimeout(None if blocking else LIVENESS_S)  # a timeout makes Python's socket non-blocking
        count, crc = kernel.recv_into(sock.fileno(), dest, LIVENESS_S, seed)
    expected = min(len(dest), len(data))  # fewer only when the peer ended the stream first
    assert count == expected
    assert dest[:count] == data[:count]
    assert crc == crc64(data[:count], seed)


@settings(max_examples=25, deadline=None)
@given(
    data=st.binary(max_size=300_000), sizes=st.lists(st.integers(1, 70_000), max_size=6), short=st.booleans()
)
def test_kernel_and_twin_agree(data: bytes, sizes: list[int], short: bool) -> None:
    results = []
    for name in KERNELS:
        dest = bytearray(len(data) + (17 if short else 0))
        with peer(sender(data, sizes)) as sock:
            results.append((load_kernel(name).recv_into(sock.fileno(), memoryview(dest), LIVENESS_S), dest))
    assert results[0] == results[1]


@pytest.mark.parametrize("name", KERNELS)
@settings(max_examples=10, deadline=None)
@given(arrived=st.integers(0, 100_000), timeout_s=st.sampled_from([0.0, 0.01, 0.05]))
def test_silence_times_out_with_what_arrived(name: str, arrived: int, timeout_s: float) -> None:
    data = bytes(range(256)) * (arrived // 256 + 1)
    data = data[:arrived]
    dest = bytearray(arrived + 10)
    done = threading.Event()
    with peer(sender(data, [arrived or 1], then="hold", hold=done)) as sock:
        got = 0
        crc = 0
        # The sender may still be sending: count what has arrived until the peer falls silent.
        while True:
            try:
                count, crc = load_kernel(name).recv_into(
                    sock.fileno(), memoryview(dest)[got:], timeout_s, crc
                )
            except RequestTimeoutError as exc:
                assert exc.code == CODE_TIMEOUT and exc.range is not None
                kept = exc.range[1]
                crc = crc64(dest[got : got + kept], crc)
                got += kept
                assert f"no byte arrived for {timeout_s:g} s" in str(exc)
                if got == arrived:
                    break
            else:
                pytest.fail(f"returned {count} bytes although the peer neither sent more nor closed")
        done.set()
    assert dest[:arrived] == data and crc == crc64(data)


@pytest.mark.parametrize("name", KERNELS)
@settings(max_examples=8, deadline=None)
@given(arrived=st.integers(0, 50_000))
def test_reset_reports_the_bytes_before_it(name: str, arrived: int) -> None:
    data = bytes((i * 7) % 251 for i in range(arrived))
    dest = bytearray(arrived + 4096)
    ready = threading.Event()
    with peer(sender(data, [max(1, arrived)], then="reset", hold=ready), tcp=True) as sock:
        got = 0
        while got < arrived:  # take the bytes first, so the reset cannot overtake them
            count, _ = load_kernel(name).recv_into(sock.fileno(), memoryview(dest)[got:arrived], LIVENESS_S)
            got += count
        ready.set()
        with pytest.raises(RequestError) as caught:
            load_kernel(name).recv_into(sock.fileno(), memoryview(dest)[arrived:], LIVENESS_S)
    error = caught.value
    assert not isinstance(error, RequestTimeoutError)
    assert error.code == CODE_CONNECTION and error.range == (0, 0)
    assert isinstance(error.__cause__, ConnectionResetError)
    assert "Connection reset by peer" in str(error)
    assert dest[:arrived] == data


@pytest.mark.parametrize("name", KERNELS)
def test_reset_mid_span_keeps_the_count(name: str) -> None:
    data = b"x" * 1000
    ready = threading.Event()

    def send(sock: socket.socket) -> None:
        sock.sendall(data)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert ready.wait(LIVENESS_S)
        sock.close()

    dest = bytearray(5000)
    with peer(send, tcp=True) as sock:
        # Wait until the bytes are queued on our side, then let the reset follow them.
        assert len(sock.recv(1000, socket.MSG_PEEK | socket.MSG_WAITALL)) == 1000
        ready.set()
        with pytest.raises(RequestError) as caught:
            load_kernel(name).recv_into(sock.fileno(), dest, LIVENESS_S)
    assert caught.value.range == (0, 1000) and dest[:1000] == data


@pytest.mark.parametrize("name", KERNELS)
def test_empty_span_reads_nothing(name: str) -> None:
    with peer(sender(b"abc", [3])) as sock:
        assert load_kernel(name).recv_into(sock.fileno(), bytearray(0), 1.0, 42) == (0, 42)
        assert load_kernel(name).recv_into(sock.fileno(), bytearray(3), 1.0) == (3, crc64(b"abc"))


@pytest.mark.parametrize("name", KERNELS)
def test_a_signal_during_the_wait_is_handled_and_the_receive_goes_on(name: str) -> None:
    seen = threading.Event()
    release = threading.Event()

    def send(sock: socket.socket) -> None:
        assert seen.wait(LIVENESS_S)  # only after the handler ran: the receive was interrupted first
        sock.sendall(b"after the signal")
        sock.shutdown(socket.SHUT_WR)
        release.set()

    previous = signal.signal(signal.SIGALRM, lambda *_: seen.set())
    try:
        with peer(send) as sock:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            dest = bytearray(16)
            assert load_kernel(name).recv_into(sock.fileno(), dest, LIVENESS_S) == (
                16,
                crc64(b"after the signal"),
            )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert release.is_set() and dest == b"after the signal"


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("name", KERNELS)
def test_a_signal_handler_that_raises_ends_the_receive(name: str) -> None:
    done = threading.Event()

    def raise_it(*_: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, raise_it)
    try:
        with peer(lambda sock: assert_(done.wait(LIVENESS_S))) as sock:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            try:
                with pytest.raises(Interrupted):
                    load_kernel(name).recv_into(sock.fileno(), bytearray(10), LIVENESS_S)
            finally:
                done.set()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def assert_(value: bool) -> None:
    assert value


BAD_ARGUMENTS: list[tuple[str, Callable[[int], tuple[object, ...]], type[Exception], str]] = [
    ("read-only dest", lambda fd: (fd, b"abc", 1.0), TypeError, "read-only"),
    ("not a buffer", lambda fd: (fd, "abc", 1.0), TypeError, "writable buffer"),
    ("strided dest", lambda fd: (fd, memoryview(bytearray(8))[::2], 1.0), ValueError, "contiguous"),
    ("negative fd", lambda fd: (-1, bytearray(4), 1.0), ValueError, "not a file descriptor"),
    ("fd not an int", lambda fd: ("3", bytearray(4), 1.0), TypeError, "int file descriptor"),
    ("NaN timeout", lambda fd: (fd, bytearray(4), math.nan), ValueError, "NaN"),
    ("negative timeout", lambda fd: (fd, bytearray(4), -1.0), ValueError, "negative"),
    ("crc out of range", lambda fd: (fd, bytearray(4), 1.0, 2**64), ValueError, "crc"),
]


@pytest.mark.parametrize(("case", "args", "kind", "text"), BAD_ARGUMENTS, ids=[c[0] for c in BAD_ARGUMENTS])
def test_bad_arguments_fail_alike(
    case: str, args: Callable[[int], tuple[object, ...]], kind: type[Exception], text: str
) -> None:
    messages = []
    a, b = socket.socketpair()
    try:
        for name in KERNELS:
            with pytest.raises(kind, match=text) as caught:
                load_kernel(name).recv_into(*args(b.fileno()))
            messages.append(str(caught.value))
    finally:
        a.close()
        b.close()
    assert messages[0] == messages[1]


@pytest.mark.parametrize("name", KERNELS)
def test_a_closed_descriptor_is_a_connection_error(name: str) -> None:
    a, b = socket.socketpair()
    fd = b.detach()
    a.close()
    os.close(fd)
    with pytest.raises(RequestError) as caught:
        load_kernel(name).recv_into(fd, bytearray(4), 1.0)
    assert caught.value.code == CODE_CONNECTION and caught.value.range == (0, 0)
