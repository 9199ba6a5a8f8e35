"""Pure byte-range planning: which chunks an object splits into and which chunks a read touches.

Every range is half-open, ``[start, end)``; HTTP's inclusive ``Range`` header is produced in ``client.py``
only. Chunk ``i`` of an object covers ``[i * chunk_size, min((i + 1) * chunk_size, size))``, so every chunk
but the last has exactly ``chunk_size`` bytes and a zero-byte object has no chunk at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from ossmodelconnector.config import DEFAULT_CHUNK_SIZE_MB, MIB

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ByteRange",
    "chunk_count",
    "chunk_range",
    "chunk_span",
    "clamp_read",
    "plan_chunks",
]

DEFAULT_CHUNK_SIZE = DEFAULT_CHUNK_SIZE_MB * MIB
"""Bytes per chunk (one ranged GET, one unit of caching and eviction) unless configured otherwise."""


@dataclass(frozen=True)
class ByteRange:
    """The half-open byte range ``[start, end)``.

    Args:
        start: first byte offset, ``>= 0``.
        end: one past the last byte, ``>= start`` (``start == end`` is the empty range).

    Raises:
        ValueError: ``start < 0`` or ``end < start``.
        TypeError: an offset is not an int.
    """

    start: int
    end: int

    def __post_init__(self) -> None:
        if not isinstance(self.start, int) or not isinstance(self.end, int):
            raise TypeError(f"ByteRange offsets must be ints, got start={self.start!r}, end={self.end!r}")
        if self.start < 0 or self.end < self.start:
            raise ValueError(
                f"invalid byte range [{self.start}, {self.end}): need 0 <= start <= end (half-open)"
            )

    def __len__(self) -> int:
        return self.end - self.start

    def __contains__(self, offset: object) -> bool:
        return isinstance(offset, int) and self.start <= offset < self.end

    def intersection(self, other: ByteRange) -> ByteRange:
        """The bytes both ranges hold; empty (at the later start) when they are disjoint.

        Args:
            other: another range.

        Returns:
            ``[max(starts), max(max(starts), min(ends)))``.
        """
        start = max(self.start, other.start)
        return ByteRange(start, max(start, min(self.end, other.end)))

    def as_tuple(self) -> tuple[int, int]:
        """``(start, end)``, the form error attributes carry."""
        return (self.start, self.end)


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(
            f"chunk_size={chunk_size} must be at least 1 byte (the default is {DEFAULT_CHUNK_SIZE})"
        )


def _check_size(size: int) -> None:
    if size < 0:
        raise ValueError(f"object size {size} is negative; a size is a byte count >= 0")


def chunk_count(size: int, chunk_size: int) -> int:
    """Number of chunks an object of ``size`` bytes splits into.

    Args:
        size: object size in bytes, ``>= 0``.
        chunk_size: bytes per chunk, ``>= 1``.

    Returns:
        ``ceil(size / chunk_size)``; 0 for an empty object.

    Raises:
        ValueError: a negative size or a chunk size below 1.
    """
    _check_size(size)
    _check_chunk_size(chunk_size)
    return -(-size // chunk_size)


def chunk_range(index: int, size: int, chunk_size: int) -> ByteRange:
    """The bytes of chunk ``index`` of an object of ``size`` bytes.

    Args:
        index: chunk index in ``[0, chunk_count(size, chunk_size))``.
        size: object size in bytes.
        chunk_size: bytes per chunk.

    Returns:
        ``[index * chunk_size, min((index + 1) * chunk_size, size))``.

    Raises:
        IndexError: ``index`` is not a chunk of this object.
        ValueError: a negative size or a chunk size below 1.
    """
    count = chunk_count(size, chunk_size)
    if not 0 <= index < count:
        raise IndexError(f"chunk {index} out of range: an object of {size} bytes has {count} chunks")
    start = index * chunk_size
    return ByteRange(start, min(start + chunk_size, size))


def plan_chunks(size: int, chunk_size: int) -> list[ByteRange]:
    """Split an object into consecutive chunks that tile it exactly.

    Args:
        size: object size in bytes, ``>= 0``.
        chunk_size: bytes per chunk, ``>= 1``.

    Returns:
        The chunks in file order; every one has ``chunk_size`` bytes except a shorter last one. Empty for
        a zero-byte object.

    Raises:
        ValueError: a negative size or a chunk size below 1.

    Example:
        >>> plan_chunks(10, 4)
        [ByteRange(start=0, end=4), ByteRange(start=4, end=8), ByteRange(start=8, end=10)]
    """
    _check_size(size)
    _check_chunk_size(chunk_size)
    return [ByteRange(start, min(start + chunk_size, size)) for start in range(0, size, chunk_size)]


def chunk_span(start: int, end: int, chunk_size: int) -> range:
    """Indexes of the chunks that hold the bytes ``[start, end)``.

    Args:
        start: first byte wanted, ``>= 0``.
        end: one past the last byte wanted, ``>= start``.
        chunk_size: bytes per chunk, ``>= 1``.

    Returns:
        A ``range`` of chunk indexes in file order; empty when ``start == end``.

    Raises:
        ValueError: an invalid range or a chunk size below 1.
    """
    ByteRange(start, end)
    _check_chunk_size(chunk_size)
    if start == end:
        return range(0)
    return range(start // chunk_size, (end - 1) // chunk_size + 1)


def clamp_read(position: int, count: int, size: int) -> ByteRange:
    """The bytes a read of ``count`` bytes at ``position`` returns from an object of ``size`` bytes.

    Args:
        position: the stream position, ``>= 0`` (it may lie past the end).
        count: bytes asked for; a negative count means "to the end".
        size: object size in bytes.

    Returns:
        The range actually read; empty at or past the end of the object.

    Raises:
        ValueError: a negative position or size.
    """
    _check_size(size)
    if position < 0:
        raise ValueError(f"position {position} is negative")
    start = min(position, size)
    end = size if count < 0 else min(size, start + count)
    return ByteRange(start, end)
