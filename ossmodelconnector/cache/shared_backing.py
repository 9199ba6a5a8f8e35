"""One file's share of a shared cache, as a ``ChunkBuffer`` uses it: its data mapping and its chunk states.

A ``ChunkBuffer`` made with a ``SharedBacking`` keeps its bytes in the data segment's mapping and its
chunk states in the state table, and calls :meth:`SharedBacking.publish` after every state change, so that
readers in other processes (waiting on the table's generation futex) see it at once.
"""

from __future__ import annotations

import mmap

from ossmodelconnector.cache.state_table import FileStatus, StateTable, TableStatus
from ossmodelconnector.errors import ClosedError

__all__ = ["SharedBacking"]


class SharedBacking:
    """The data mapping and the state bytes of file ``index`` of a shared cache.

    Made by :meth:`SharedCache.backing`; pass it to ``PrefetchScheduler.register(..., backing=...)``.

    Args:
        table: the cache's state table (writable).
        index: the file's index in it.
        mapping: the data segment's writable ``MAP_SHARED`` mapping (None for an empty object).
        punch_holes: releasing a chunk frees the file's pages (``MADV_REMOVE``). Only a lazy directory's
            files, which no other directory shares: in a shared segment the pages of a chunk that failed
            here may be the bytes another process is writing or reading.
    """

    def __init__(
        self, table: StateTable, index: int, mapping: mmap.mmap | None, *, punch_holes: bool = False
    ) -> None:
        entry = table.file(index)
        self.table = table
        self.index = index
        self.size = entry.size
        self.chunk_size = table.chunk_size
        self.chunk_count = entry.chunk_count
        self.mapping = mapping
        self.punch_holes = punch_holes
        self.states = table.states(index)
        """The file's state bytes in the table (one per chunk, the ``ChunkState`` values)."""

    def __repr__(self) -> str:
        return f"SharedBacking({self.table.name!r}, file {self.index}, {self.size} bytes)"

    def check_fits(self, name: str, size: int, chunk_size: int) -> None:
        """Refuse to back an object of another size or chunking than the table was laid out for.

        Raises:
            ValueError: naming the object and both layouts.
            ClosedError: the cache was closed (its mapping is gone).
        """
        if size != self.size or chunk_size != self.chunk_size:
            raise ValueError(
                f"{name}: {size} bytes in chunks of {chunk_size} cannot use file {self.index} of "
                f"{self.table.name}, laid out for {self.size} bytes in chunks of {self.chunk_size}; register "
                "the object with the chunk size and version the shared cache was created for"
            )
        if self.size and self.mapping is None:
            raise ClosedError(f"{name}: its shared cache was closed; prepare the directory again")

    def publish(self) -> None:
        """Tell every waiting process that something changed (bump the generation, futex-wake)."""
        if not self.table.released:  # after the cache's close nobody is left to tell
            self.table.publish()

    def record_error(self, error: BaseException) -> None:
        """Store ``error``'s class and message where readers in other processes find them."""
        if not self.table.released:
            self.table.write_error(self.index, type(error).__name__, str(error))

    def record_checked(self, error: BaseException | None) -> None:
        """Record the object-level check: VERIFIED, or FAILED with ``error``; then the overall status.

        The caller publishes afterwards (once, with the state change that completed the object).
        """
        if self.table.released:
            return
        if error is not None:
            self.record_error(error)
            self.table.set_file_status(self.index, FileStatus.FAILED)
            self.table.set_status(TableStatus.FAILED)
            return
        self.table.set_file_status(self.index, FileStatus.VERIFIED)
        statuses = [self.table.file_status(index) for index in range(self.table.file_count)]
        if all(status == FileStatus.VERIFIED for status in statuses):
            self.table.set_status(TableStatus.COMPLETE)
