"""Where fetched bytes live: one contiguous buffer per object with a state per chunk.

``chunk_buffer.ChunkBuffer`` is the in-process form (an anonymous mapping). For a prepared directory the
same buffer is backed by the shared-memory cache (``shared_cache.SharedCache``: one data segment per
file, one state table per directory, a manifest; layout in ``docs/cache-layout.md``) so that every
process on the node reads one copy; ``attached`` is the side of a reader in another process and
``registry`` the table the reader hooks consult.
"""

from __future__ import annotations

from ossmodelconnector.cache.chunk_buffer import ChunkBuffer
from ossmodelconnector.cache.chunk_state import ChunkState

__all__ = ["ChunkBuffer", "ChunkState"]
