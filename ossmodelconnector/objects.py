"""The record of one OSS object version (what a listing or a HEAD returns, and what a download pins) and
the callable that fetches a range of one into a buffer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FetchInto", "ObjectInfo", "mtime_ns"]

FetchInto = Callable[[int, int, memoryview], int]
"""``fetch_into(start, end, dest) -> crc64``: write bytes ``[start, end)`` of one object version into
``dest`` (``len(dest) == end - start``) and return their CRC-64; raise a ``ConnectorError`` on failure.
The OSS client makes one per object (``OssClient.make_fetch_into``); the stream, the prefetch scheduler
and the prepared directory take one, and wrap it (progress, storing into a shared segment, a peer)."""

_MAX_CRC64 = (1 << 64) - 1


@dataclass(frozen=True)
class ObjectInfo:
    """One version of one object, as the server described it.

    Args:
        bucket: the bucket name.
        key: the object key, taken literally (any UTF-8, no percent-decoding).
        size: the object's length in bytes.
        etag: the server's ``ETag`` (quotes included, as sent); downloads pin it with ``If-Match``.
        last_modified: modification time, seconds since the epoch.
        crc64: the server's ``x-oss-hash-crc64ecma`` (CRC-64/XZ of the whole object), when it sent one.

    Raises:
        ValueError: a negative size or a CRC outside ``[0, 2**64)``.
    """

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: float
    crc64: int | None = None

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"{self.uri}: size={self.size} is negative; an object size is a byte count >= 0")
        if self.crc64 is not None and not 0 <= self.crc64 <= _MAX_CRC64:
            raise ValueError(
                f"{self.uri}: crc64={self.crc64} is not a CRC-64; pass int(x-oss-hash-crc64ecma) or None"
            )

    @property
    def uri(self) -> str:
        """The object's ``oss://bucket/key`` URI."""
        return f"oss://{self.bucket}/{self.key}"

    @property
    def mtime_ns(self) -> int | None:
        """``last_modified`` in nanoseconds, what every local copy of this version shows as its
        modification time (``st_mtime_ns``); None when the server sent no time (``last_modified`` 0)."""
        return mtime_ns(self.last_modified)


def mtime_ns(last_modified: float) -> int | None:
    """A modification time in seconds since the epoch as whole nanoseconds; None for 0 (unknown).

    Rounded to the millisecond (the finest an OSS time has: HTTP dates are whole seconds, listings
    ``...T12:00:00.000Z``), so that however the float was made, every process gives the same nanoseconds.
    """
    if last_modified <= 0:
        return None
    return round(last_modified * 1_000) * 1_000_000
