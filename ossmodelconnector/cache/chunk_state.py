"""The state of one chunk: the values of the in-process buffers and of the shared state table's bytes."""

from __future__ import annotations

import enum

__all__ = ["ChunkState"]


class ChunkState(enum.IntEnum):
    """State of one chunk; the values are the state bytes of the shared-memory state table."""

    EMPTY = 0
    FETCHING = 1
    READY = 2
    FAILED = 3
