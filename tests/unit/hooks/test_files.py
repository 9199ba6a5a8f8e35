"""The ``open`` hook and the audit safety net, against a real waitable written chunk by chunk."""

from __future__ import annotations

import builtins
import ctypes
import hashlib
import io
import mmap
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hooks_harness import registered_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ossmodelconnector import hooks
from ossmodelconnector.errors import IntegrityError

CHUNK = 64 * 1024
MIB = 1024 * 1024


@pytest.fixture
def hooked() -> Iterator[None]:
    original = builtins.open
    hooks.install()
    try:
        yield
    finally:
        hooks.uninstall()
        assert builtins.open is original and io.open is original


def _payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def test_sha256_in_1mib_blocks_streams_and_matches(tmp_path: Path, hooked: None) -> None:
    data = _payload(5 * MIB + 12345)
    with registered_files(tmp_path / "model", {"w.safetensors": data}, CHUNK, delay_s=0.0005) as slow:
        digest = hashlib.sha256()
        with open(tmp_path / "model" / "w.safetensors", "rb") as f:
            assert isinstance(f, io.BufferedReader)
            while block := f.read(MIB):
                digest.update(block)
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
        waits = slow["w.safetensors"].waits
        # One wait per 1 MiB block, each exactly the block it covers (no whole-file wait).
        assert waits == [(i * MIB, min((i + 1) * MIB, len(data))) for i in range(6)]
        assert slow["w.safetensors"].wait_alls == 0


def test_reads_wait_for_exactly_what_they_cover(tmp_path: Path, hooked: None) -> None:
    data = _payload(20 * CHUNK)
    with registered_files(tmp_path / "m", {"a.bin": data}, CHUNK, demand_only=True) as slow:
        with open(tmp_path / "m" / "a.bin", "rb") as f:
            f.seek(7 * CHUNK + 100)
            assert f.read(CHUNK) == data[7 * CHUNK + 100 : 8 * CHUNK + 100]
        # Only the chunks that read touched were ever written: nothing else was asked for.
        assert slow["a.bin"].written_chunks() == {7, 8}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    operations=st.lists(
        st.one_of(
            st.tuples(st.just("read"), st.integers(-1, 3 * CHUNK)),
            st.tuples(st.just("seek"), st.integers(0, 6 * CHUNK)),
            st.tuples(st.just("readline"), st.just(0)),
            st.tuples(st.just("readinto"), st.integers(0, 2 * CHUNK)),
            st.tuples(st.just("peek"), st.integers(0, 100)),
        ),
        max_size=12,
    ),
    buffering=st.sampled_from([-1, 0, 4096, 3 * CHUNK]),
)
def test_any_read_sequence_matches_bytesio(
    tmp_path_factory: pytest.TempPathFactory, hooked: None, operations: list[tuple[str, int]], buffering: int
) -> None:
    data = _payload(5 * CHUNK + 77, seed=len(operations))
    model = tmp_path_factory.mktemp("model") / "m"
    with registered_files(model, {"x.bin": data}, CHUNK, demand_only=True):
        expected = io.BytesIO(data)
        with open(model / "x.bin", "rb", buffering=buffering) as f:
            for name, argument in operations:
                if name == "read":
                    assert f.read(argument) == expected.read(argument)
                elif name == "seek":
                    assert f.seek(argument) == expected.seek(argument)
                elif name == "readline":
                    assert f.readline() == expected.readline()
                elif name == "readinto":
                    mine, theirs = bytearray(argument), bytearray(argument)
                    assert f.readinto(mine) == expected.readinto(theirs)
                    assert mine == theirs
                elif name == "peek" and hasattr(f, "peek"):
                    peeked = f.peek(argument)
                    assert data.startswith(peeked, expected.tell()) or peeked == b""
                assert f.tell() == expected.tell()


def test_text_mode_and_path_helpers(tmp_path: Path, hooked: None) -> None:
    lines = [f"line {i} {'x' * (i % 50)}\n" for i in range(20000)]
    text = "".join(lines)
    data = _payload(3 * CHUNK + 5)
    files = {"notes.txt": text.encode(), "blob.bin": data}
    with registered_files(tmp_path / "m", files, CHUNK, order=[]):
        with open(tmp_path / "m" / "notes.txt", encoding="utf-8") as f:
            assert isinstance(f, io.TextIOWrapper)
            assert f.mode == "r"
            assert f.readline() == lines[0]
            assert list(f) == lines[1:]
        assert (tmp_path / "m" / "notes.txt").read_text(encoding="utf-8") == text
        assert (tmp_path / "m" / "blob.bin").read_bytes() == data
        with (tmp_path / "m" / "blob.bin").open("rb") as f:
            assert f.read() == data


def test_read_all_waits_for_the_rest(tmp_path: Path, hooked: None) -> None:
    data = _payload(9 * CHUNK + 1)
    with registered_files(tmp_path / "m", {"a.bin": data}, CHUNK, demand_only=True) as slow:
        with open(tmp_path / "m" / "a.bin", "rb", buffering=0) as f:
            f.seek(CHUNK)
            assert f.read() == data[CHUNK:]
        assert slow["a.bin"].written_chunks() == set(range(1, 10))


def test_fileno_holders_wait_for_the_whole_file(tmp_path: Path, hooked: None) -> None:
    data = _payload(6 * CHUNK + 3)
    with registered_files(
        tmp_path / "m", {"a.bin": data, "b.bin": data, "c.bin": data}, CHUNK, demand_only=True
    ):
        # numpy.fromfile opens through builtins.open, then reads the descriptor natively.
        assert np.fromfile(tmp_path / "m" / "a.bin", dtype=np.uint8).tobytes() == data
        with (
            open(tmp_path / "m" / "b.bin", "rb") as f,
            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
        ):
            assert mapped[:] == data
        shutil.copyfile(tmp_path / "m" / "c.bin", tmp_path / "copy.bin")
        assert (tmp_path / "copy.bin").read_bytes() == data


def test_audit_hook_catches_other_openers(tmp_path: Path, hooked: None) -> None:
    data = _payload(4 * CHUNK + 9)
    names = {"os_open.bin": data, "mmap.bin": data, "fd_open.bin": data}
    with registered_files(tmp_path / "m", names, CHUNK, demand_only=True) as slow:
        fd = os.open(tmp_path / "m" / "os_open.bin", os.O_RDONLY)
        try:
            assert os.pread(fd, len(data), 0) == data
        finally:
            os.close(fd)
        assert slow["os_open.bin"].wait_alls == 1

        # A descriptor opened by native code (libc through ctypes: no audit event), then mapped.
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.open(os.fsencode(tmp_path / "m" / "mmap.bin"), os.O_RDONLY)
        assert fd >= 0, os.strerror(ctypes.get_errno())
        try:
            assert slow["mmap.bin"].wait_alls == 0 and slow["mmap.bin"].written_chunks() == set()
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
                assert mapped[:] == data
        finally:
            os.close(fd)
        assert slow["mmap.bin"].wait_alls == 1

        # A plain descriptor handed to open(): audit sees the fd, resolves it, waits.
        raw_fd = os.open(tmp_path / "m" / "fd_open.bin", os.O_RDONLY)
        with open(raw_fd, "rb") as f:
            assert f.read() == data


def test_write_modes_are_refused(tmp_path: Path, hooked: None) -> None:
    data = _payload(CHUNK)
    with registered_files(tmp_path / "m", {"a.bin": data}, CHUNK) as slow:
        slow["a.bin"].finish()
        for mode in ("wb", "ab", "r+b", "w", "xb", "a+"):
            with pytest.raises(PermissionError, match="belongs to the ossmodelconnector cache"):
                open(tmp_path / "m" / "a.bin", mode)  # noqa: SIM115 - it must not open
        assert (tmp_path / "m" / "a.bin").read_bytes() == data  # untouched
        with pytest.raises(ValueError, match="invalid mode"):
            open(tmp_path / "m" / "a.bin", "rr")  # noqa: SIM115
        with pytest.raises(ValueError, match="binary mode doesn't take an encoding"):
            open(tmp_path / "m" / "a.bin", "rb", encoding="utf-8")  # noqa: SIM115


def test_errors_from_the_waitable_propagate_unchanged(tmp_path: Path, hooked: None) -> None:
    data = _payload(4 * CHUNK)
    failure = IntegrityError("a.bin: CRC-64 mismatch in chunk 2; prepare the directory again", key="a.bin")
    with registered_files(tmp_path / "m", {"a.bin": data}, CHUNK, failures={2: failure}):
        with open(tmp_path / "m" / "a.bin", "rb") as f:
            assert f.read(2 * CHUNK) == data[: 2 * CHUNK]
            with pytest.raises(IntegrityError) as caught:
                f.read(CHUNK)
        assert caught.value is failure
        with pytest.raises(IntegrityError):
            os.open(tmp_path / "m" / "a.bin", os.O_RDONLY)


def test_unrelated_paths_get_the_builtin_objects(tmp_path: Path, hooked: None) -> None:
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"abc")
    with registered_files(tmp_path / "m", {"a.bin": b"x" * 10}, CHUNK):
        with open(plain, "rb") as f:
            assert type(f) is io.BufferedReader
            assert type(f.raw) is io.FileIO
            assert f.read() == b"abc"
        with open(plain, encoding="ascii") as f:
            assert type(f) is io.TextIOWrapper
            assert type(f.buffer.raw) is io.FileIO
        with open(plain, "ab") as f:
            f.write(b"d")
        assert plain.read_bytes() == b"abcd"


def test_no_hooks_after_uninstall(tmp_path: Path) -> None:
    data = _payload(3 * CHUNK)
    hooks.install()
    hooks.uninstall()
    with registered_files(tmp_path / "m", {"a.bin": data}, CHUNK, demand_only=True) as slow:
        with open(tmp_path / "m" / "a.bin", "rb") as f:
            assert type(f.raw) is io.FileIO
            assert f.read() == bytes(len(data))  # nothing waited, nothing written: zeros
        fd = os.open(tmp_path / "m" / "a.bin", os.O_RDONLY)
        os.close(fd)
        assert slow["a.bin"].waits == [] and slow["a.bin"].wait_alls == 0
