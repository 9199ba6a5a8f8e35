"""The chunk-store kernel and its twin: same bytes, times, steps and errnos, on real files.

Every test runs on the Cython module (imported directly, so an unbuilt extension fails instead of
silently testing the twin twice) and on the pure-Python twin. Failures are provoked for real: a path
that is gone or a symlink, a file replaced under the same name, a full tmpfs (``ENOSPC``), a file size
limit (``RLIMIT_FSIZE``: ``EFBIG``), a file whose times this thread may not set (``EPERM``), a write
lock held by someone else. No test asserts a duration.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import os
import resource
import struct
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_harness import as_other_file_user, can_mount, give_away, tmpfs

from ossmodelconnector._fast import (
    STORE_DONE,
    STORE_IDENTITY,
    STORE_OPEN,
    STORE_TIMES,
    STORE_WRITE,
    _reference,
)

KERNELS = ["cython", "python"]
LIVENESS_S = 30.0  # a bound so that a bug fails a test instead of hanging it
LAST_MODIFIED_NS = 1_620_284_889_123_456_789
KIB = 1 << 10


def load_kernel(name: str) -> ModuleType:
    return importlib.import_module("ossmodelconnector._fast.store") if name == "cython" else _reference


@pytest.fixture(params=KERNELS)
def kernel(request: pytest.FixtureRequest) -> ModuleType:
    return load_kernel(request.param)


def new_file(path: Path, size: int) -> tuple[bytes, int, int]:
    """A file of ``size`` zero bytes: its encoded path, device and inode."""
    path.write_bytes(bytes(size))
    info = os.stat(path)
    return os.fsencode(path), info.st_dev, info.st_ino


def in_thread(function: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=function, daemon=True)
    thread.start()
    return thread


writes = st.lists(
    st.tuples(st.integers(min_value=0, max_value=64 * KIB), st.binary(min_size=0, max_size=16 * KIB)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.integers(min_value=0, max_value=64 * KIB),
    writes=writes,
    mtime_ns=st.one_of(st.none(), st.integers(min_value=-(2**40), max_value=2**62)),
)
def test_kernel_and_twin_store_the_same_bytes_and_times(
    tmp_path: Path, size: int, writes: list[tuple[int, bytes]], mtime_ns: int | None
) -> None:
    expected = bytearray(size)
    for offset, data in writes:
        if data:
            expected[len(expected) : offset] = bytes(max(0, offset - len(expected)))
            expected[offset : offset + len(data)] = data
    outcomes = {}
    for name in KERNELS:
        path = tmp_path / f"{name}-{time.monotonic_ns()}"
        encoded, device, inode = new_file(path, size)
        results = [
            load_kernel(name).store_chunk(encoded, data, offset, device, inode, mtime_ns)
            for offset, data in writes
        ]
        assert results == [(STORE_DONE, 0)] * len(writes)
        if mtime_ns is not None:
            info = os.stat(path)  # before a read moves the access time
            assert (info.st_mtime_ns, info.st_atime_ns) == (mtime_ns, mtime_ns)
        outcomes[name] = path.read_bytes()
        assert outcomes[name] == bytes(expected)
    assert outcomes["cython"] == outcomes["python"]


def test_any_buffer_is_stored_from_its_first_byte(tmp_path: Path, kernel: ModuleType) -> None:
    encoded, device, inode = new_file(tmp_path / "f", 32)
    words = memoryview(bytearray(struct.pack("<4I", 1, 2, 3, 4))).cast("I")  # not format "B"
    assert kernel.store_chunk(encoded, words, 8, device, inode, None) == (STORE_DONE, 0)
    assert kernel.store_chunk(encoded, memoryview(b"xyz")[1:], 0, device, inode, None) == (STORE_DONE, 0)
    assert (tmp_path / "f").read_bytes() == b"yz" + bytes(6) + struct.pack("<4I", 1, 2, 3, 4) + bytes(8)


def test_without_a_time_the_write_moves_it_and_with_one_it_stays(tmp_path: Path, kernel: ModuleType) -> None:
    path = tmp_path / "f"
    encoded, device, inode = new_file(path, 10)
    os.utime(path, ns=(LAST_MODIFIED_NS, LAST_MODIFIED_NS))
    assert kernel.store_chunk(encoded, b"a", 0, device, inode, None) == (STORE_DONE, 0)
    assert os.stat(path).st_mtime_ns != LAST_MODIFIED_NS  # the write moved it, nothing set it back
    assert kernel.store_chunk(encoded, b"b", 1, device, inode, LAST_MODIFIED_NS) == (STORE_DONE, 0)
    assert os.stat(path).st_mtime_ns == LAST_MODIFIED_NS
    assert path.read_bytes() == b"ab" + bytes(8)


def test_no_bytes_only_sets_the_times(tmp_path: Path, kernel: ModuleType) -> None:
    path = tmp_path / "f"
    encoded, device, inode = new_file(path, 10)
    path.write_bytes(b"0123456789")
    assert kernel.store_chunk(encoded, b"", 5, device, inode, LAST_MODIFIED_NS) == (STORE_DONE, 0)
    assert path.read_bytes() == b"0123456789"
    assert os.stat(path).st_mtime_ns == LAST_MODIFIED_NS


def test_another_file_under_the_name_is_never_written(tmp_path: Path, kernel: ModuleType) -> None:
    path = tmp_path / "f"
    encoded, device, inode = new_file(path, 10)
    new_file(tmp_path / "other", 10)  # made while ours exists: another inode
    os.replace(tmp_path / "other", path)  # someone else's file, same name
    os.utime(path, ns=(0, 0))
    assert kernel.store_chunk(encoded, b"x", 0, device, inode, LAST_MODIFIED_NS) == (STORE_IDENTITY, 0)
    assert path.read_bytes() == bytes(10)
    assert os.stat(path).st_mtime_ns == 0


def test_a_file_that_is_gone_is_not_created_again(tmp_path: Path, kernel: ModuleType) -> None:
    path = tmp_path / "f"
    encoded, device, inode = new_file(path, 10)
    os.unlink(path)
    assert kernel.store_chunk(encoded, b"x", 0, device, inode, None) == (STORE_OPEN, errno.ENOENT)
    assert not path.exists()


def test_a_symlink_is_never_followed(tmp_path: Path, kernel: ModuleType) -> None:
    target = tmp_path / "target"
    _, device, inode = new_file(target, 10)
    (tmp_path / "link").symlink_to(target)
    link = os.fsencode(tmp_path / "link")
    assert kernel.store_chunk(link, b"x", 0, device, inode, None) == (STORE_OPEN, errno.ELOOP)
    assert target.read_bytes() == bytes(10)


@pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root")
def test_a_full_file_system_is_reported_as_a_failed_write(tmp_path: Path, kernel: ModuleType) -> None:
    with tmpfs(tmp_path / "small", "64k") as mount:
        encoded, device, inode = new_file(mount / "f", 0)
        data = os.urandom(256 * KIB)
        assert kernel.store_chunk(encoded, data, 0, device, inode, None) == (STORE_WRITE, errno.ENOSPC)
        stored = (mount / "f").read_bytes()
        assert stored == data[: len(stored)]  # what fitted is the chunk's start, nothing else


def test_a_file_size_limit_is_reported_as_a_failed_write(tmp_path: Path, kernel: ModuleType) -> None:
    path = tmp_path / "f"
    encoded, device, inode = new_file(path, 0)
    data = os.urandom(64 * KIB)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * KIB, limit[1]))  # Python ignores SIGXFSZ: EFBIG
    try:
        result = kernel.store_chunk(encoded, data, 4 * KIB, device, inode, LAST_MODIFIED_NS)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    assert result == (STORE_WRITE, errno.EFBIG)
    assert path.read_bytes() == bytes(4 * KIB) + data[: 12 * KIB]  # the part below the limit
    assert os.stat(path).st_mtime_ns != LAST_MODIFIED_NS  # a failed store sets no time


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another file user")
def test_refused_times_are_reported_after_the_bytes_are_stored(tmp_path: Path, kernel: ModuleType) -> None:
    path = Path("/dev/shm") / f"test-store-{uuid.uuid4().hex}"  # where nobody reaches it (tmp_path: 0700)
    try:
        encoded, device, inode = new_file(path, 8)
        give_away(path)
        result = as_other_file_user(
            lambda: kernel.store_chunk(encoded, b"abc", 2, device, inode, LAST_MODIFIED_NS)
        )
        assert result == (STORE_TIMES, errno.EPERM)
        assert os.stat(path).st_mtime_ns != LAST_MODIFIED_NS
        assert path.read_bytes() == b"\0\0abc\0\0\0"
    finally:
        path.unlink(missing_ok=True)


def test_a_store_waits_for_the_files_write_lock_and_setting_times_does_not(
    tmp_path: Path, kernel: ModuleType
) -> None:
    path = tmp_path / "f"
    encoded, device, inode = new_file(path, 8)
    holder = os.open(path, os.O_WRONLY)
    results: list[tuple[int, int]] = []
    try:
        fcntl.fcntl(holder, fcntl.F_OFD_SETLKW, struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        store = in_thread(lambda: results.append(kernel.store_chunk(encoded, b"x", 0, device, inode, None)))
        times = in_thread(lambda: kernel.store_chunk(encoded, b"", 0, device, inode, LAST_MODIFIED_NS))
        times.join(LIVENESS_S)
        assert not times.is_alive()  # no bytes, no lock
        assert os.stat(path).st_mtime_ns == LAST_MODIFIED_NS
        store.join(0.2)
        assert store.is_alive() and path.read_bytes() == bytes(8)  # still waiting for the lock
    finally:
        os.close(holder)  # drops the lock
    store.join(LIVENESS_S)
    assert not store.is_alive() and results == [(STORE_DONE, 0)]
    assert path.read_bytes() == b"x" + bytes(7)


def test_many_writers_of_one_file_each_land_their_bytes(tmp_path: Path, kernel: ModuleType) -> None:
    path = tmp_path / "f"
    pieces = [os.urandom(64 * KIB) for _ in range(16)]
    encoded, device, inode = new_file(path, 0)
    results: list[tuple[int, int]] = []
    threads = [
        in_thread(
            lambda i=i: results.append(
                kernel.store_chunk(encoded, pieces[i], i * 64 * KIB, device, inode, LAST_MODIFIED_NS)
            )
        )
        for i in range(len(pieces))
    ]
    for thread in threads:
        thread.join(LIVENESS_S)
    assert results == [(STORE_DONE, 0)] * len(pieces)
    assert path.read_bytes() == b"".join(pieces)
    assert os.stat(path).st_mtime_ns == LAST_MODIFIED_NS


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (("f", b"x", 0, 1, 1, None), TypeError, "path must be bytes"),
        ((b"", b"x", 0, 1, 1, None), ValueError, "empty or holds a NUL"),
        ((b"a\0b", b"x", 0, 1, 1, None), ValueError, "empty or holds a NUL"),
        ((b"f", "text", 0, 1, 1, None), TypeError, "data must be a buffer"),
        ((b"f", memoryview(bytes(8))[::2], 0, 1, 1, None), ValueError, "not C-contiguous"),
        ((b"f", b"x", -1, 1, 1, None), ValueError, "outside a file"),
        ((b"f", b"xy", 2**63 - 2, 1, 1, None), ValueError, "outside a file"),
        ((b"f", b"x", 1.5, 1, 1, None), TypeError, "offset must be an int"),
        ((b"f", b"x", 0, -1, 1, None), ValueError, "device=-1"),
        ((b"f", b"x", 0, 1, 2**64, None), ValueError, "inode="),
        ((b"f", b"x", 0, 1, 1, 1.5), TypeError, "mtime_ns must be an int"),
        ((b"f", b"x", 0, 1, 1, 2**63), ValueError, "does not fit a 64-bit time"),
    ],
)
def test_bad_arguments_are_refused_alike(
    tmp_path: Path, arguments: tuple[object, ...], error: type[Exception], message: str
) -> None:
    for name in KERNELS:
        with pytest.raises(error, match=message) as raised:
            load_kernel(name).store_chunk(*arguments)
        if name == "cython":
            cython_message = str(raised.value)
        else:
            assert str(raised.value) == cython_message
