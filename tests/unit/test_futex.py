"""Futex waits and 32-bit atomics: both backends, within a process and across real processes.

Every test that takes ``kernel`` runs on the Cython module (imported directly, so an unbuilt extension
fails instead of silently testing the twin twice) and on the pure-Python twin. Waiters are released by
the test itself; no test asserts a duration.
"""

from __future__ import annotations

import importlib
import mmap
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import posix_ipc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ossmodelconnector._fast import _reference

LIVENESS_S = 60.0  # generous bound so that a bug fails a test instead of hanging it
KERNELS = ["cython", "python"]


def load_kernel(name: str) -> ModuleType:
    return importlib.import_module("ossmodelconnector._fast.futex") if name == "cython" else _reference


@pytest.fixture(params=KERNELS)
def kernel(request: pytest.FixtureRequest) -> ModuleType:
    return load_kernel(request.param)


@pytest.fixture
def segment() -> Iterator[tuple[str, mmap.mmap]]:
    """A fresh 4 KiB POSIX shared-memory segment, mapped, removed after the test."""
    name = f"ossmc-test-futex-{uuid.uuid4().hex[:12]}"
    memory = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=0o600, size=4096)
    mapping = mmap.mmap(memory.fd, 4096)
    memory.close_fd()
    try:
        yield name, mapping
    finally:
        mapping.close()
        memory.unlink()


def native_u32(buffer: Any, offset: int) -> int:
    return int(struct.unpack_from("=I", buffer, offset)[0])


# --- atomics -------------------------------------------------------------------------------------------


def test_load_store_increment_round_trip(kernel: ModuleType) -> None:
    buffer = bytearray(16)
    assert kernel.atomic_load_u32(buffer, 4) == 0
    kernel.atomic_store_u32(buffer, 4, 0x12345678)
    assert native_u32(buffer, 4) == 0x12345678
    assert kernel.atomic_load_u32(buffer, 4) == 0x12345678
    assert kernel.atomic_increment_u32(buffer, 4) == 0x12345679
    assert buffer[:4] == bytes(4) and buffer[8:] == bytes(8)  # the neighbours are untouched


def test_increment_wraps_at_two_to_the_32(kernel: ModuleType) -> None:
    buffer = bytearray(4)
    kernel.atomic_store_u32(buffer, 0, 0xFFFFFFFF)
    assert kernel.atomic_increment_u32(buffer, 0) == 0
    assert kernel.atomic_load_u32(buffer, 0) == 0


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["store", "increment", "load"]),
            st.integers(0, 15),
            st.integers(0, 0xFFFFFFFF),
        ),
        max_size=40,
    ),
    backend=st.sampled_from(KERNELS),
)
def test_atomics_match_a_plain_model(ops: list[tuple[str, int, int]], backend: str) -> None:
    kernel = load_kernel(backend)
    buffer = bytearray(64)
    model = [0] * 16
    for op, word, value in ops:
        if op == "store":
            kernel.atomic_store_u32(buffer, word * 4, value)
            model[word] = value
        elif op == "increment":
            model[word] = (model[word] + 1) & 0xFFFFFFFF
            assert kernel.atomic_increment_u32(buffer, word * 4) == model[word]
        else:
            assert kernel.atomic_load_u32(buffer, word * 4) == model[word]
    assert list(struct.unpack("=16I", buffer)) == model


def test_atomics_work_on_shared_mappings_and_memoryviews(kernel: ModuleType, segment: Any) -> None:
    _, mapping = segment
    kernel.atomic_store_u32(mapping, 8, 7)
    assert kernel.atomic_increment_u32(memoryview(mapping), 8) == 8
    assert kernel.atomic_load_u32(memoryview(mapping)[8:12], 0) == 8


BAD_CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("atomic_load_u32", (12345, 0)),
    ("atomic_load_u32", (bytearray(8), 6)),
    ("atomic_load_u32", (bytearray(8), 2)),
    ("atomic_load_u32", (bytearray(8), -4)),
    ("atomic_load_u32", (bytearray(8), "0")),
    ("atomic_load_u32", (memoryview(bytearray(16))[::2], 0)),
    ("atomic_increment_u32", (b"abcd", 0)),
    ("atomic_store_u32", (bytearray(4), 0, 1 << 32)),
    ("atomic_store_u32", (bytearray(4), 0, -1)),
    ("atomic_store_u32", (bytearray(4), 0, 1.5)),
    ("futex_wake", (bytearray(8), 8)),
    ("futex_wait", (bytearray(4), 0, 1 << 32, 0.0)),
    ("futex_wait", (bytearray(4), 0, 0, "soon")),
    ("futex_wait", (bytearray(4), 0, 0, float("nan"))),
    ("futex_wait", (object(), 0, 0, 0.0)),
]


@pytest.mark.parametrize(("function", "args"), BAD_CALLS)
def test_both_backends_refuse_bad_arguments_with_the_same_error(function: str, args: tuple[Any, ...]) -> None:
    errors = []
    for name in KERNELS:
        with pytest.raises((TypeError, ValueError)) as info:
            getattr(load_kernel(name), function)(*args)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1]


def test_a_buffer_that_is_not_aligned_in_memory_is_refused_by_the_kernel() -> None:
    # The twin cannot see addresses; the Cython kernel can, and a misaligned futex word would be EINVAL.
    mapping = mmap.mmap(-1, 64)
    with pytest.raises(ValueError, match="aligned"):
        load_kernel("cython").atomic_increment_u32(memoryview(mapping)[1:9], 0)
    mapping.close()


# --- waiting within one process ------------------------------------------------------------------------


def test_wait_returns_true_at_once_when_the_word_already_differs(kernel: ModuleType) -> None:
    buffer = bytearray(8)
    kernel.atomic_store_u32(buffer, 4, 3)
    assert kernel.futex_wait(buffer, 4, 2, 30.0) is True
    assert kernel.futex_wait(buffer, 4, 2, 0.0) is True


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, 0.05])
def test_wait_times_out_with_false(kernel: ModuleType, timeout_s: float) -> None:
    buffer = bytearray(8)
    assert kernel.futex_wait(buffer, 0, 0, timeout_s) is False


def run_waiter(kernel: ModuleType, buffer: Any, expected: int) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(
        target=lambda: result.append(kernel.futex_wait(buffer, 0, expected, LIVENESS_S))
    )
    thread.start()
    return thread, result


def test_a_thread_is_woken_by_a_bump_and_wake(kernel: ModuleType, segment: Any) -> None:
    _, mapping = segment
    thread, result = run_waiter(kernel, mapping, 0)
    kernel.atomic_increment_u32(mapping, 0)
    kernel.futex_wake(mapping, 0)
    thread.join(LIVENESS_S)
    assert result == [True]


def test_a_wake_without_a_change_does_not_end_the_wait() -> None:
    # Spurious wakes: the Cython waiter goes back to sleep while the word still equals expected.
    kernel = load_kernel("cython")
    mapping = mmap.mmap(-1, 4096)
    thread, result = run_waiter(kernel, mapping, 0)
    woken = 0
    deadline = time.monotonic() + LIVENESS_S
    while not woken and time.monotonic() < deadline:
        woken = kernel.futex_wake(mapping, 0)
    assert woken == 1, "the waiter never reached the kernel"
    assert thread.is_alive() and result == []
    kernel.atomic_increment_u32(mapping, 0)
    kernel.futex_wake(mapping, 0)
    thread.join(LIVENESS_S)
    assert result == [True]
    mapping.close()


def test_waiting_works_on_a_read_only_mapping(kernel: ModuleType, segment: Any) -> None:
    name, mapping = segment
    fd = os.open(f"/dev/shm/{name}", os.O_RDONLY)
    readonly = mmap.mmap(fd, 4096, prot=mmap.PROT_READ)
    os.close(fd)
    thread, result = run_waiter(kernel, readonly, 0)
    kernel.atomic_increment_u32(mapping, 0)
    kernel.futex_wake(readonly, 0)  # a wake needs no write access either
    thread.join(LIVENESS_S)
    assert result == [True]
    readonly.close()


def test_a_signal_handler_error_interrupts_the_wait(kernel: ModuleType) -> None:
    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted):
            kernel.futex_wait(bytearray(4), 0, 0, LIVENESS_S)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_signal_whose_handler_returns_lets_the_wait_go_on(kernel: ModuleType) -> None:
    calls = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: calls.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.01)
        assert kernel.futex_wait(bytearray(4), 0, 0, 0.3) is False  # EINTR is retried, then times out
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert calls == [signal.SIGALRM]


# --- waiting across processes --------------------------------------------------------------------------

# The child maps the segment, announces itself by bumping word 4, then waits for word 0 to change.
CHILD = """
import mmap, os, sys
from ossmodelconnector._fast import _reference
import importlib
name, backend = sys.argv[1], sys.argv[2]
kernel = importlib.import_module("ossmodelconnector._fast.futex") if backend == "cython" else _reference
fd = os.open("/dev/shm/" + name, os.O_RDONLY)
mapping = mmap.mmap(fd, 4096, prot=mmap.PROT_READ)  # a reader waits on a read-only mapping
seen = kernel.atomic_load_u32(mapping, 0)
ready = os.open("/dev/shm/" + name, os.O_RDWR)
ready_map = mmap.mmap(ready, 4096)
kernel.atomic_increment_u32(ready_map, 4)
kernel.futex_wake(ready_map, 4)
woken = kernel.futex_wait(mapping, 0, seen, 60.0)
print("woken" if woken else "timeout", kernel.atomic_load_u32(mapping, 0))
"""


@pytest.mark.parametrize("backend", KERNELS)
def test_a_waiter_in_another_process_is_woken_by_the_parent(backend: str, segment: Any) -> None:
    name, mapping = segment
    kernel = load_kernel(backend)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, name, backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert kernel.futex_wait(mapping, 4, 0, LIVENESS_S), "the child never attached"
        kernel.atomic_increment_u32(mapping, 0)
        kernel.futex_wake(mapping, 0)
        out, err = child.communicate(timeout=LIVENESS_S)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert out.split() == ["woken", "1"]
