"""Range planning: chunks tile an object exactly and a span covers exactly the bytes asked."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ossmodelconnector.ranges import (
    DEFAULT_CHUNK_SIZE,
    ByteRange,
    chunk_count,
    chunk_range,
    chunk_span,
    clamp_read,
    plan_chunks,
)

chunk_sizes = st.one_of(st.integers(1, 9), st.sampled_from([4096, DEFAULT_CHUNK_SIZE]))


@st.composite
def sizes_and_chunk_sizes(draw: st.DrawFn) -> tuple[int, int]:
    """Sizes at the boundaries (0, 1, multiples of the chunk size +-1) and anywhere."""
    chunk_size = draw(chunk_sizes)
    multiple = draw(st.integers(0, 5))
    size = draw(
        st.one_of(
            st.sampled_from([0, 1]),
            st.integers(-1, 1).map(lambda delta: max(0, multiple * chunk_size + delta)),
            st.integers(0, 6 * chunk_size),
        )
    )
    return size, chunk_size


@given(sizes_and_chunk_sizes())
def test_chunks_tile_the_object_exactly(case: tuple[int, int]) -> None:
    size, chunk_size = case
    chunks = plan_chunks(size, chunk_size)
    assert len(chunks) == chunk_count(size, chunk_size)
    position = 0
    for index, chunk in enumerate(chunks):
        assert chunk.start == position, "no gap and no overlap"
        assert 0 < len(chunk) <= chunk_size
        assert len(chunk) == chunk_size or index == len(chunks) - 1, "only the last chunk is short"
        assert chunk_range(index, size, chunk_size) == chunk
        position = chunk.end
    assert position == size


@given(sizes_and_chunk_sizes(), st.data())
def test_span_covers_exactly_the_bytes_asked(case: tuple[int, int], data: st.DataObject) -> None:
    size, chunk_size = case
    start = data.draw(st.integers(0, size))
    end = data.draw(st.integers(start, size))
    span = chunk_span(start, end, chunk_size)
    chunks = plan_chunks(size, chunk_size)
    if start == end:
        assert len(span) == 0
        return
    covered = [chunks[index] for index in span]
    assert covered[0].start <= start < covered[0].end
    assert covered[-1].start < end <= covered[-1].end
    # Every chunk in the span holds some wanted byte, and every wanted byte is in a chunk of the span.
    assert all(chunk.intersection(ByteRange(start, end)) for chunk in covered)
    assert [chunk for chunk in chunks if len(chunk.intersection(ByteRange(start, end)))] == covered


@pytest.mark.parametrize(
    ("size", "chunk_size", "expected"),
    [
        (0, 4, []),
        (1, 4, [(0, 1)]),
        (4, 4, [(0, 4)]),
        (5, 4, [(0, 4), (4, 5)]),
        (8, 4, [(0, 4), (4, 8)]),
        (3, 1, [(0, 1), (1, 2), (2, 3)]),
    ],
)
def test_plan_boundaries(size: int, chunk_size: int, expected: list[tuple[int, int]]) -> None:
    assert [chunk.as_tuple() for chunk in plan_chunks(size, chunk_size)] == expected


def test_span_boundaries() -> None:
    assert chunk_span(0, 0, 4) == range(0)
    assert chunk_span(4, 4, 4) == range(0)
    assert chunk_span(0, 4, 4) == range(0, 1)
    assert chunk_span(3, 5, 4) == range(0, 2)
    assert chunk_span(4, 8, 4) == range(1, 2)
    assert chunk_span(7, 9, 4) == range(1, 3)


def test_byte_range_validates_and_measures() -> None:
    assert len(ByteRange(3, 10)) == 7
    assert len(ByteRange(5, 5)) == 0
    assert 3 in ByteRange(3, 4) and 4 not in ByteRange(3, 4)
    assert ByteRange(0, 4).intersection(ByteRange(6, 9)) == ByteRange(6, 6)
    with pytest.raises(ValueError, match="half-open"):
        ByteRange(5, 4)
    with pytest.raises(ValueError, match="half-open"):
        ByteRange(-1, 4)
    with pytest.raises(TypeError):
        ByteRange(0, 1.5)  # type: ignore[arg-type]


def test_invalid_plans_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="at least 1 byte"):
        plan_chunks(10, 0)
    with pytest.raises(ValueError, match="negative"):
        plan_chunks(-1, 4)
    with pytest.raises(IndexError, match="has 3 chunks"):
        chunk_range(3, 9, 3)
    with pytest.raises(ValueError):
        chunk_span(5, 4, 4)


@given(st.integers(0, 50), st.integers(-3, 60), st.integers(0, 50))
def test_clamp_read_matches_bytes_slicing(position: int, count: int, size: int) -> None:
    data = bytes(range(size))
    wanted = clamp_read(position, count, size)
    stop = None if count < 0 else position + count
    assert data[wanted.start : wanted.end] == data[position:stop]
