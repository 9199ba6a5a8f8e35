"""The shared state table's layout: planning, round trips through raw bytes, errors, demand ring.

The table is a view over any buffer, so these tests lay it out in a ``bytearray`` and read it back from a
copy of the bytes, as another process would from the shared mapping. Offsets are checked against the
numbers written in ``docs/cache-layout.md``.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ossmodelconnector.cache.chunk_state import ChunkState
from ossmodelconnector.cache.state_table import (
    DEMAND_CAPACITY,
    ERROR_SLOT_SIZE,
    FILE_ENTRY_SIZE,
    GENERATION_OFFSET,
    HEADER_SIZE,
    DemandRequest,
    FileSpec,
    FileStatus,
    StateTable,
    TableStatus,
    plan_layout,
)
from ossmodelconnector.errors import CacheError

DIRECTORY = "/tmp/model-ü"


def make_table(
    specs: list[FileSpec], chunk_size: int = 1000, directory: str = DIRECTORY, placement: str = "shm"
) -> tuple[bytearray, StateTable]:
    layout = plan_layout([spec.size for spec in specs], chunk_size, directory)
    buffer = bytearray(layout.table_size)
    table = StateTable.initialize(
        buffer,
        specs,
        chunk_size=chunk_size,
        owner_pid=4242,
        owner_start_time=987654321,
        owner_uid=1000,
        placement=placement,
        directory=directory,
        name="test table",
    )
    return buffer, table


files_strategy = st.lists(
    st.builds(
        FileSpec,
        size=st.integers(0, 3_000_000),
        crc64=st.none() | st.integers(0, 2**64 - 1),
        segment_name=st.text("0123456789abcdef", min_size=1, max_size=40).map(lambda h: "ossmc-d-" + h),
    ),
    max_size=24,
)


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(0, 10**9), max_size=40), chunk_size=st.integers(1, 1 << 24))
def test_planned_sections_are_aligned_disjoint_and_cover_every_chunk(
    sizes: list[int], chunk_size: int
) -> None:
    layout = plan_layout(sizes, chunk_size, DIRECTORY)
    assert layout.state_offset % 64 == 0 and layout.error_offset % 64 == 0
    assert layout.state_offset >= HEADER_SIZE + FILE_ENTRY_SIZE * len(sizes)
    assert layout.error_offset >= layout.state_offset + layout.total_chunks
    assert layout.directory_offset == layout.error_offset + ERROR_SLOT_SIZE * len(sizes)
    assert layout.table_size % 4096 == 0
    assert layout.table_size >= layout.directory_offset + layout.directory_length
    # Each file's state bytes follow the previous file's, one per chunk.
    position = 0
    for size, first, count in zip(sizes, layout.first_states, layout.chunk_counts, strict=True):
        assert first == position and count == -(-size // chunk_size)
        position += count
    assert position == layout.total_chunks


@settings(max_examples=100, deadline=None)
@given(specs=files_strategy, chunk_size=st.integers(1, 1 << 20), placement=st.sampled_from(["shm", "disk"]))
def test_a_table_reads_back_from_its_raw_bytes(
    specs: list[FileSpec], chunk_size: int, placement: str
) -> None:
    buffer, owner = make_table(specs, chunk_size, placement=placement)
    reader = StateTable(bytes(buffer), "copy")  # another process's view: read-only bytes
    assert not reader.writable and owner.writable
    assert (reader.owner_pid, reader.owner_start_time, reader.owner_uid) == (4242, 987654321, 1000)
    assert (reader.chunk_size, reader.file_count, reader.placement) == (chunk_size, len(specs), placement)
    assert reader.directory == DIRECTORY
    assert reader.status() == TableStatus.INITIALIZING and reader.generation() == 0
    for index, spec in enumerate(specs):
        entry = reader.file(index)
        assert (entry.size, entry.crc64, entry.segment_name) == (spec.size, spec.crc64, spec.segment_name)
        assert entry.status == FileStatus.FILLING
        assert entry.chunk_count == -(-spec.size // chunk_size)
        assert bytes(reader.states(index)) == bytes(entry.chunk_count)
        assert reader.read_error(index) is None


@settings(max_examples=60, deadline=None)
@given(specs=files_strategy.filter(lambda s: len(s) > 0), data=st.data())
def test_state_bytes_of_each_file_land_where_the_layout_says(
    specs: list[FileSpec], data: st.DataObject
) -> None:
    buffer, owner = make_table(specs, chunk_size=4096)
    expected = []
    for index in range(len(specs)):
        states = owner.states(index)
        values = data.draw(
            st.lists(st.sampled_from(list(ChunkState)), min_size=len(states), max_size=len(states))
        )
        for chunk, value in enumerate(values):
            states[chunk] = value
        expected.append(bytes(values))
    reader = StateTable(bytes(buffer))
    assert [bytes(reader.states(i)) for i in range(len(specs))] == expected
    assert bytes(reader.all_states()) == b"".join(expected)
    # In the raw bytes: state offset + first state index + chunk, as docs/cache-layout.md says.
    state_offset = struct.unpack_from("<Q", buffer, 72)[0]
    for index, values in enumerate(expected):
        first = struct.unpack_from("<Q", buffer, HEADER_SIZE + FILE_ENTRY_SIZE * index + 8)[0]
        assert bytes(buffer[state_offset + first : state_offset + first + len(values)]) == values


def test_header_fields_sit_at_the_documented_offsets() -> None:
    buffer, table = make_table([FileSpec(2500, 7, "ossmc-d-ab"), FileSpec(0, None, "ossmc-d-cd")], 1000)
    table.set_status(TableStatus.FILLING)
    table.publish()
    table.set_file_status(1, FileStatus.VERIFIED)
    assert buffer[0:8] == b"OSSMC-ST"
    assert struct.unpack_from("<III", buffer, 8) == (1, 512, TableStatus.FILLING)
    assert struct.unpack_from("<I", buffer, GENERATION_OFFSET) == (1,)
    assert struct.unpack_from("<IIQQII", buffer, 24) == (4242, 1000, 987654321, 1000, 2, 0)
    assert struct.unpack_from("<Q", buffer, 56) == (3,)
    assert struct.unpack_from("<IIII", buffer, 128) == (0, 0, DEMAND_CAPACITY, 16)
    entry = HEADER_SIZE + FILE_ENTRY_SIZE
    assert struct.unpack_from("<QQQQII", buffer, entry) == (0, 3, 0, 0, 0, FileStatus.VERIFIED)
    assert buffer[entry + 48 : entry + 58] == b"ossmc-d-cd" and buffer[entry + 58] == 0
    first = struct.unpack_from("<QQQQII", buffer, HEADER_SIZE)
    assert first == (2500, 0, 3, 7, 1, FileStatus.FILLING)


def test_publish_bumps_the_generation_and_waiters_see_it() -> None:
    _, table = make_table([FileSpec(10, None, "ossmc-d-x")])
    seen = table.generation()
    assert table.wait_for_change(seen, 0.0) is False
    assert table.publish() == seen + 1
    assert table.wait_for_change(seen, 0.0) is True


@pytest.mark.parametrize(
    ("message", "stored"),
    [
        ("plain", "plain"),
        ("ünïcödé ✓", "ünïcödé ✓"),
        ("x" * 5000, "x" * (ERROR_SLOT_SIZE - 4 - len("RequestError\n"))),
        ("é" * 600, "é" * ((ERROR_SLOT_SIZE - 4 - len("RequestError\n")) // 2)),  # never half a character
    ],
)
def test_error_text_round_trips_and_is_cut_on_a_character_boundary(message: str, stored: str) -> None:
    buffer, table = make_table([FileSpec(10, None, "ossmc-d-x"), FileSpec(10, None, "ossmc-d-y")])
    table.write_error(1, "RequestError", message)
    assert StateTable(bytes(buffer)).read_error(1) == ("RequestError", stored)
    assert StateTable(bytes(buffer)).read_error(0) is None


def test_statuses_round_trip() -> None:
    buffer, table = make_table([FileSpec(10, None, "ossmc-d-x")])
    for status in TableStatus:
        table.set_status(status)
        assert StateTable(bytes(buffer)).status() == status
    for file_status in FileStatus:
        table.set_file_status(0, file_status)
        assert StateTable(bytes(buffer)).file(0).status == file_status


def corrupt(buffer: bytearray, offset: int, fmt: str, value: object) -> bytes:
    damaged = bytearray(buffer)
    struct.pack_into(fmt, damaged, offset, value)
    return bytes(damaged)


def test_damaged_or_foreign_tables_are_refused_with_a_clear_error() -> None:
    buffer, _ = make_table([FileSpec(2500, None, "ossmc-d-x")])
    with pytest.raises(CacheError, match="magic"):
        StateTable(corrupt(buffer, 0, "<8s", b"NOTATABL"))
    with pytest.raises(CacheError, match="layout version 9"):
        StateTable(corrupt(buffer, 8, "<I", 9))
    with pytest.raises(CacheError, match="less than"):
        StateTable(bytes(buffer[:100]))
    with pytest.raises(CacheError, match="offsets"):
        StateTable(bytes(buffer[: 4096 // 2]))  # cut short of its table size
    with pytest.raises(CacheError, match="offsets"):
        StateTable(corrupt(buffer, 72, "<Q", 10))  # state bytes inside the header
    with pytest.raises(CacheError, match="file 0"):
        StateTable(corrupt(buffer, HEADER_SIZE + 16, "<Q", 99))  # chunk count disagrees with size


def test_initialize_refuses_what_would_not_fit() -> None:
    with pytest.raises(ValueError, match="writable bytes"):
        StateTable.initialize(
            bytearray(100), [], chunk_size=1, owner_pid=1, owner_start_time=1, owner_uid=0,
            placement="shm", directory="/x",
        )  # fmt: skip
    with pytest.raises(ValueError, match="longer than"):
        make_table([FileSpec(1, None, "ossmc-d-" + "a" * 60)])
    with pytest.raises(ValueError, match="placement"):
        make_table([], placement="tape")


# --- demand ring ---------------------------------------------------------------------------------------


def test_demands_come_out_in_order_once() -> None:
    buffer, owner = make_table([FileSpec(10_000, None, "ossmc-d-x"), FileSpec(5_000, None, "ossmc-d-y")])
    reader = StateTable(memoryview(buffer))  # writable: may post
    head = owner.demand_head()
    reader.post_demand(1, 2, 3)
    reader.post_demand(0, 0, 1)
    assert owner.wait_for_demand(head, 0.0) is True
    assert owner.take_demands() == [DemandRequest(1, 2, 3), DemandRequest(0, 0, 1)]
    assert owner.take_demands() == []


def test_an_overflowing_ring_keeps_the_latest_requests() -> None:
    _, table = make_table([FileSpec(100_000, None, "ossmc-d-x")])
    for first in range(DEMAND_CAPACITY + 5):
        table.post_demand(0, first, 1)
    taken = table.take_demands()
    assert [request.first_chunk for request in taken] == list(range(5, DEMAND_CAPACITY + 5))


def test_a_torn_or_unfinished_entry_is_skipped() -> None:
    buffer, table = make_table([FileSpec(100_000, None, "ossmc-d-x")])
    table.post_demand(0, 1, 1)
    table.post_demand(0, 2, 1)
    struct.pack_into("<I", buffer, 144 + 16, 0)  # the second poster has not finished writing
    assert table.take_demands() == [DemandRequest(0, 1, 1)]


def test_demands_need_a_writable_table_and_chunks_that_exist() -> None:
    buffer, table = make_table([FileSpec(10_000, None, "ossmc-d-x")])
    with pytest.raises(CacheError, match="read-only"):
        StateTable(bytes(buffer)).post_demand(0, 0, 1)
    with pytest.raises(ValueError, match="not in file 0"):
        table.post_demand(0, 9, 2)
