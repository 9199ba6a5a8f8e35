"""The chunk buffer on its own: released chunks give their pages back, sparse mappings larger than memory,
and a release never touches a neighbour's bytes or a pinned chunk.

The scheduler that drives a buffer in normal use is tested in ``test_prefetch.py``.
"""

from __future__ import annotations

import ctypes
import os

import pytest
from fetch_harness import payload

from ossmodelconnector._fast import crc64
from ossmodelconnector.cache.chunk_state import ChunkState
from ossmodelconnector.fetch.chunk_buffer import ChunkBuffer
from ossmodelconnector.objects import ObjectInfo


def _resident_bytes(buffer: ChunkBuffer) -> int:
    """Rss of the buffer's mapping, from /proc/self/smaps."""
    assert buffer._mapping is not None
    anchor = ctypes.c_char.from_buffer(buffer._mapping)
    address = ctypes.addressof(anchor)
    del anchor
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(part, 16) for part in head.split("-"))
                inside = low <= address < high
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError("mapping not found in /proc/self/smaps")


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux only")
def test_release_returns_the_pages_to_the_system() -> None:
    size = 16 << 20
    info = ObjectInfo("bucket", "big.bin", size, '"e"', 0.0)
    buffer = ChunkBuffer(info, 4 << 20)
    try:
        for index in range(buffer.count):
            buffer.begin_fetch(index)
            buffer.chunk_view(index)[:] = b"\xab" * len(buffer.chunk(index))
            buffer.complete(index, 0)
        filled = _resident_bytes(buffer)
        assert filled >= size
        for index in range(buffer.count):
            buffer.release(index)
        assert buffer.held_bytes == 0
        # The kernel may merge our mapping with a neighbouring anonymous one into a single smaps entry,
        # so compare what the release freed rather than what is left.
        assert filled - _resident_bytes(buffer) > size - size // 16
    finally:
        buffer.close()


def _strict_overcommit() -> bool:
    try:
        with open("/proc/sys/vm/overcommit_memory") as setting:
            return setting.read().strip() == "2"
    except OSError:
        return True


@pytest.mark.skipif(_strict_overcommit(), reason="needs Linux heuristic overcommit")
def test_an_object_larger_than_memory_can_be_buffered_within_a_budget() -> None:
    info = ObjectInfo("bucket", "huge.bin", 256 << 30, '"e"', 0.0)
    buffer = ChunkBuffer(info, 8 << 20)
    try:
        last = buffer.count - 1
        buffer.begin_fetch(last)
        buffer.chunk_view(last)[:] = b"\x01" * len(buffer.chunk(last))
        buffer.complete(last, 0)
        assert buffer.tobytes(info.size - 2, info.size) == b"\x01\x01"
        buffer.release(last)
    finally:
        buffer.close()


def test_release_of_an_unaligned_chunk_keeps_its_neighbours_bytes() -> None:
    data = payload(3 * 5000)
    info = ObjectInfo("bucket", "k", len(data), '"e"', 0.0)
    buffer = ChunkBuffer(info, 5000)
    for index in range(3):
        buffer.begin_fetch(index)
        chunk = buffer.chunk(index)
        buffer.chunk_view(index)[:] = data[chunk.start : chunk.end]
        buffer.complete(index, crc64(data[chunk.start : chunk.end]))
    buffer.release(1)
    assert buffer.tobytes(0, 5000) == data[:5000] and buffer.tobytes(10000, 15000) == data[10000:]
    buffer.pin(0)
    with pytest.raises(RuntimeError, match="pinned"):
        buffer.release(0)
    buffer.close()
    buffer.close()
    assert buffer.states() == [ChunkState.EMPTY] * 3
