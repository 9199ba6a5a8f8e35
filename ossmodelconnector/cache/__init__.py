"""Where fetched bytes live: one contiguous buffer per object with a state per chunk.

``chunk_buffer.ChunkBuffer`` is the in-process form (an anonymous mapping); the shared-memory cache maps
the same layout over a POSIX shared segment so that every process on the node reads one copy.
"""

from __future__ import annotations

from ossmodelconnector.cache.chunk_buffer import ChunkBuffer, ChunkState

__all__ = ["ChunkBuffer", "ChunkState"]
