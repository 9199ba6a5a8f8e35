"""CRC-64 kernels: both backends equal oss2's ``Crc64`` (crcmod configured as OSS wants) on every input.

Every test that takes ``kernel`` runs three times: the Cython module's default loop (pclmulqdq where the CPU
has it), its slicing-by-16 loop, and the pure-Python twin. The Cython module is imported directly, so an
unbuilt extension fails these tests instead of silently testing the twin twice.
"""

from __future__ import annotations

import array
import hashlib
import importlib
import itertools
import mmap
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import crcmod
import crcmod.predefined
import numpy as np
import oss2.utils
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ossmodelconnector._fast import _reference

OSS_POLY = 0x142F0E1EBA9EA3693  # as oss2.utils.Crc64 spells it: ECMA-182 with the x^64 term
MASK64 = (1 << 64) - 1
XZ_CHECK = 0x995DC9BBDF1939FA  # CRC-64/XZ catalogue check value, crc of b"123456789"
# oss2.utils.Crc64 over golden_megabyte(), recorded once; recomputed live in the test as well.
ONE_MIB_CRC = 0xD82B956B423767D5
ONE_MIB_ZEROS_CRC = 0x606B70A23EBAF6C2


def cython_module() -> ModuleType:
    return importlib.import_module("ossmodelconnector._fast.crc64")


@dataclass(frozen=True)
class Kernel:
    name: str
    crc64: Callable[..., int]
    crc64_combine: Callable[..., int]


def _make_kernel(name: str) -> Kernel:
    if name == "python":
        return Kernel(name, _reference.crc64, _reference.crc64_combine)
    module = cython_module()
    if name == "cython-tables":
        return Kernel(name, module._crc64_tables, module.crc64_combine)
    return Kernel(name, module.crc64, module.crc64_combine)


KERNEL_NAMES = ["cython", "cython-tables", "python"]


@pytest.fixture(params=KERNEL_NAMES)
def kernel(request: pytest.FixtureRequest) -> Kernel:
    return _make_kernel(request.param)


def oss2_crc(data: bytes, crc: int = 0) -> int:
    acc = oss2.utils.Crc64(crc)
    acc.update(data)
    return int(acc.crc)


def crcmod_as_oss2(data: bytes, crc: int = 0) -> int:
    acc = crcmod.Crc(OSS_POLY, initCrc=crc, rev=True, xorOut=MASK64)
    acc.update(data)
    return int(acc.crcValue)


def bitwise_crc64_xz(data: bytes) -> int:
    """The Rocksoft-model definition of CRC-64/XZ, one bit at a time, independent of every table."""
    poly, register = 0x42F0E1EBA9EA3693, MASK64
    for byte in data:
        for bit in range(8):  # refin: least significant bit first
            top = (register >> 63) ^ ((byte >> bit) & 1)
            register = ((register << 1) & MASK64) ^ (poly if top else 0)
    reflected = int(f"{register:064b}"[::-1], 2)  # refout
    return reflected ^ MASK64


def golden_megabyte() -> bytes:
    """1 MiB that any Python on any machine rebuilds bit for bit."""
    return b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(32768))


def random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


crcs = st.integers(min_value=0, max_value=MASK64)
# Sizes that cross every branch: byte tail, 16-byte blocks, the 128-byte pclmulqdq threshold, the
# 128-byte folding loop and the 64 KiB point where the GIL is released.
sizes = st.one_of(st.integers(0, 600), st.integers(600, 5000), st.integers(60_000, 140_000))


# -- golden vectors -----------------------------------------------------------------------------------


def test_check_value_is_crc64_xz(kernel: Kernel) -> None:
    assert kernel.crc64(b"123456789") == XZ_CHECK
    assert bitwise_crc64_xz(b"123456789") == XZ_CHECK
    assert oss2_crc(b"123456789") == XZ_CHECK


def test_oss2_crc_is_not_crcmod_jones() -> None:
    jones = crcmod.predefined.mkCrcFun("crc-64-jones")
    assert jones(b"123456789") != XZ_CHECK


def test_empty_input_keeps_the_crc(kernel: Kernel) -> None:
    assert kernel.crc64(b"") == 0
    assert kernel.crc64(b"", 0x0123456789ABCDEF) == 0x0123456789ABCDEF
    assert kernel.crc64(bytearray(), MASK64) == MASK64


def test_one_mebibyte_vector_from_oss2(kernel: Kernel) -> None:
    data = golden_megabyte()
    assert oss2_crc(data) == ONE_MIB_CRC
    assert kernel.crc64(data) == ONE_MIB_CRC
    assert kernel.crc64(bytes(1 << 20)) == ONE_MIB_ZEROS_CRC


@given(data=st.binary(max_size=64))
@settings(max_examples=50)
def test_bitwise_definition_agrees(data: bytes) -> None:
    assert _reference.crc64(data) == bitwise_crc64_xz(data) == oss2_crc(data)


# -- parity with oss2 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KERNEL_NAMES)
@given(seed=st.integers(0, 2**32), size=sizes, crc=crcs)
@settings(max_examples=60, deadline=None)
def test_equals_oss2_on_random_bytes(name: str, seed: int, size: int, crc: int) -> None:
    kernel = _make_kernel(name)
    data = random_bytes(seed, size)
    expected = oss2_crc(data, crc)
    assert crcmod_as_oss2(data, crc) == expected
    assert kernel.crc64(data, crc) == expected


@pytest.mark.parametrize("name", KERNEL_NAMES)
@given(data=st.binary(max_size=2048), crc=crcs)
@settings(max_examples=100, deadline=None)
def test_equals_oss2_on_shrinkable_bytes(name: str, data: bytes, crc: int) -> None:
    assert _make_kernel(name).crc64(data, crc) == oss2_crc(data, crc)


@pytest.mark.parametrize("name", KERNEL_NAMES)
@given(seed=st.integers(0, 2**32), size=st.integers(0, 3000), offset=st.integers(0, 31))
@settings(max_examples=60, deadline=None)
def test_any_alignment(name: str, seed: int, size: int, offset: int) -> None:
    data = random_bytes(seed, size + offset)
    assert _make_kernel(name).crc64(memoryview(data)[offset:]) == oss2_crc(data[offset:])


# -- chaining and combine -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", KERNEL_NAMES)
@given(seed=st.integers(0, 2**32), size=sizes, cuts=st.lists(st.floats(0, 1), max_size=6))
@settings(max_examples=60, deadline=None)
def test_chaining_equals_one_pass(name: str, seed: int, size: int, cuts: list[float]) -> None:
    kernel = _make_kernel(name)
    data = random_bytes(seed, size)
    bounds = [0, *sorted(int(c * size) for c in cuts), size]
    crc = 0
    for start, end in itertools.pairwise(bounds):
        crc = kernel.crc64(memoryview(data)[start:end], crc)
    assert crc == oss2_crc(data)


@pytest.mark.parametrize("name", KERNEL_NAMES)
@given(a=st.binary(max_size=3000), b=st.binary(max_size=3000))
@settings(max_examples=100, deadline=None)
def test_combine_equals_hash_of_concatenation(name: str, a: bytes, b: bytes) -> None:
    kernel = _make_kernel(name)
    combined = kernel.crc64_combine(kernel.crc64(a), kernel.crc64(b), len(b))
    assert combined == kernel.crc64(a + b) == oss2_crc(a + b)


@pytest.mark.parametrize("name", KERNEL_NAMES)
@given(crc_a=crcs, crc_b=crcs, len_b=st.integers(1, MASK64))
@settings(max_examples=40, deadline=None)
def test_combine_equals_oss2_combine(name: str, crc_a: int, crc_b: int, len_b: int) -> None:
    # len_b == 0 is left out: oss2 then returns crc_a whatever crc_b is, while crc64 of b"" is 0 anyway.
    expected = oss2.utils.Crc64().combine(crc_a, crc_b, len_b)
    assert _make_kernel(name).crc64_combine(crc_a, crc_b, len_b) == expected


def test_combine_with_empty_parts(kernel: Kernel) -> None:
    crc_a = kernel.crc64(b"payload")
    assert kernel.crc64_combine(crc_a, 0, 0) == crc_a
    assert kernel.crc64_combine(0, crc_a, 7) == crc_a
    assert kernel.crc64_combine(0, 0, 0) == 0


@pytest.fixture(scope="module")
def long_zero_run_vectors() -> tuple[bytes, int, int, int]:
    """``a``, ``len(zeros)``, crc of the zeros and crc of ``a + zeros``, all computed by crcmod (oss2)."""
    a = random_bytes(7, 1000)
    length = (1 << 28) + 12345
    zeros = bytes(length)
    crc_zeros = crcmod_as_oss2(zeros)
    crc_ab = crcmod_as_oss2(zeros, crcmod_as_oss2(a))
    return a, length, crc_zeros, crc_ab


def test_combine_with_long_second_part(
    kernel: Kernel, long_zero_run_vectors: tuple[bytes, int, int, int]
) -> None:
    a, length, crc_zeros, crc_ab = long_zero_run_vectors
    assert kernel.crc64_combine(kernel.crc64(a), crc_zeros, length) == crc_ab


# -- buffer kinds -------------------------------------------------------------------------------------


def _buffers(data: bytes, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    with path.open("rb") as f:
        read_only_map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    anonymous_map = mmap.mmap(-1, len(data))
    anonymous_map[:] = data
    padded = b"xyz" + data + b"tail"
    return {
        "bytes": data,
        "bytearray": bytearray(data),
        "memoryview slice with offset": memoryview(padded)[3 : 3 + len(data)],
        "read-only memoryview": memoryview(bytearray(data)).toreadonly(),
        "numpy uint8": np.frombuffer(data, dtype=np.uint8).copy(),
        "read-only numpy uint8": np.frombuffer(data, dtype=np.uint8),
        "numpy float32 (any item type)": np.frombuffer(data, dtype=np.float32),
        "numpy 2-D C order": np.frombuffer(data, dtype=np.uint8).reshape(64, -1),
        "array.array of doubles": array.array("d", data),
        "memoryview cast to 'Q' with shape": memoryview(data).cast("Q", (8, len(data) // 64)),
        "mmap read-only": read_only_map,
        "mmap anonymous": anonymous_map,
    }


def test_every_buffer_kind(kernel: Kernel, tmp_path: Path) -> None:
    data = random_bytes(11, 64 * 1024 + 64)  # above the GIL-release threshold, a multiple of 64
    expected = oss2_crc(data)
    buffers = _buffers(data, tmp_path)
    for kind, buffer in buffers.items():
        assert kernel.crc64(buffer) == expected, kind
    for kind in ("mmap read-only", "mmap anonymous"):
        buffers[kind].close()  # would raise BufferError if the kernel had kept the buffer exported


def _bad_data() -> dict[str, tuple[object, type[Exception], str]]:
    data = np.arange(4096, dtype=np.uint8)
    return {
        "strided memoryview": (memoryview(bytes(range(256)))[::2], ValueError, "C-contiguous"),
        "strided numpy": (data[::3], ValueError, "C-contiguous"),
        "Fortran-ordered 2-D": (np.asfortranarray(data.reshape(64, 64)), ValueError, "C-contiguous"),
        "str": ("text is not bytes", TypeError, "bytes-like"),
        "int": (1234, TypeError, "bytes-like"),
        "None": (None, TypeError, "bytes-like"),
        "list": ([1, 2, 3], TypeError, "bytes-like"),
    }


@pytest.mark.parametrize("case", sorted(_bad_data()))
def test_bad_data_is_a_clear_error(kernel: Kernel, case: str) -> None:
    value, error, phrase = _bad_data()[case]
    with pytest.raises(error, match=phrase):
        kernel.crc64(value)


BAD_ARGUMENTS: list[tuple[str, tuple[object, ...], type[Exception]]] = [
    ("crc64", (b"x", -1), ValueError),
    ("crc64", (b"x", 1 << 64), ValueError),
    ("crc64", (b"x", 1.0), TypeError),
    ("crc64", (b"x", "0"), TypeError),
    ("crc64", (memoryview(b"abcd")[::2], 0), ValueError),
    ("crc64", ("abcd", 0), TypeError),
    ("crc64_combine", (-1, 0, 1), ValueError),
    ("crc64_combine", (0, 1 << 64, 1), ValueError),
    ("crc64_combine", (0, 0, -1), ValueError),
    ("crc64_combine", (0, 0, 1 << 64), ValueError),
    ("crc64_combine", (0, 0, 1.5), TypeError),
    ("crc64_combine", (None, 0, 1), TypeError),
]


@pytest.mark.parametrize(("function", "args", "error"), BAD_ARGUMENTS)
def test_both_backends_raise_the_same_error(
    function: str, args: tuple[object, ...], error: type[Exception]
) -> None:
    messages = []
    for module in (cython_module(), _reference):
        with pytest.raises(error) as caught:
            getattr(module, function)(*args)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert "must" in messages[0] or "needs" in messages[0]  # says what is expected, not only what failed


def test_integer_like_arguments_are_accepted(kernel: Kernel) -> None:
    crc = kernel.crc64(b"abc")
    assert kernel.crc64(b"def", np.uint64(crc)) == kernel.crc64(b"abcdef")
    assert kernel.crc64_combine(np.uint64(crc), kernel.crc64(b"def"), np.int32(3)) == kernel.crc64(b"abcdef")


# -- the GIL is released ------------------------------------------------------------------------------


def test_two_threads_hash_256_mib_each() -> None:
    module = cython_module()
    size = 256 << 20
    inputs = [random_bytes(seed, 1 << 20) * 256 for seed in (1, 2)]
    assert len(inputs[0]) == size
    expected = [crcmod_as_oss2(data) for data in inputs]
    results: list[int | None] = [None, None]
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        barrier.wait()
        results[i] = module.crc64(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected


# -- backend selection --------------------------------------------------------------------------------


def _backend_in_subprocess(env_value: str | None) -> str:
    env = dict(os.environ)
    env.pop("OSSMC_PUREPYTHON", None)
    if env_value is not None:
        env["OSSMC_PUREPYTHON"] = env_value
    code = (
        "import ossmodelconnector._fast as f; "
        "print(f.BACKEND, f.crc64.__module__, f.crc64_combine.__module__, f.crc64(b'123456789'))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_purepython_environment_variable_selects_the_twin() -> None:
    reference = "ossmodelconnector._fast._reference"
    assert _backend_in_subprocess("1") == f"python {reference} {reference} {XZ_CHECK}"


@pytest.mark.parametrize("env_value", [None, "", "0"])
def test_cython_backend_is_the_default(env_value: str | None) -> None:
    native = "ossmodelconnector._fast.crc64"
    assert _backend_in_subprocess(env_value) == f"cython {native} {native} {XZ_CHECK}"


def test_kernel_names_its_loop() -> None:
    assert cython_module().KERNEL in {"pclmulqdq", "slicing-by-16"}
