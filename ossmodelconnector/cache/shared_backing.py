"""One file's share of a shared cache, as a ``ChunkBuffer`` uses it: its data mapping and its chunk states.

A ``ChunkBuffer`` made with a ``SharedBacking`` keeps its bytes in the data segment's mapping and its
chunk states in the state table, and calls :meth:`SharedBacking.publish` after every state change, so that
readers in other processes (waiting on the table's generation futex) see it at once.

Given the data file's path, a fetch does not write through the mapping: it lands in a buffer of the
fetching thread, reused for every chunk, and goes to the file with ``pwrite``
(:meth:`SharedBacking.file_fetcher`). A first write through a ``MAP_SHARED`` mapping takes one page
fault per 4 KiB page (write faults are not batched by fault-around, and /dev/shm has no huge pages here);
on this kind of machine that made filling 1 GiB cost 0.80 CPU-seconds against 0.45 with ``pwrite``
(benchmarks/prepare_transfer.py shows the effect on the whole transfer). Readers that map the file see the
same page-cache pages, so nothing else changes for them.

One chunk store is one call of the ``store_chunk`` kernel (``_fast/store.pyx``), which gives the GIL
back once for all of it: open the file, check it is still the cache's (device, inode), take the file's
write lock, ``pwrite`` the chunk, set the times, close. Made from Python, those six calls each gave the GIL
back and waited to take it again (up to the 5 ms switch interval behind a thread that computes: a
framework materializing tensors); the kernel reports which step failed and its errno, and the errors
below are raised from that here.

File times: every write of ours moves the data file's modification time (``pwrite``, and a punched-out
chunk's ``MADV_REMOVE``), and caches keyed on it (the Stable Diffusion web UI's sha256 cache) would then
hash the file again. Given ``mtime_ns`` (the object's ``Last-Modified``), the backing sets it back on the
same descriptor right after each chunk is stored, under the write lock
(:meth:`SharedBacking.fetch_through_file`), and after each chunk is released
(:meth:`SharedBacking.restore_times`, the same kernel with no bytes): a microsecond-scale ``futimens``
per chunk.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading

from ossmodelconnector._fast import (
    STORE_DONE,
    STORE_IDENTITY,
    STORE_OPEN,
    STORE_TIMES,
    store_chunk,
)
from ossmodelconnector.atomic_files import warn_times_refused
from ossmodelconnector.cache.state_table import FileStatus, StateTable, TableStatus
from ossmodelconnector.errors import CacheError, ClosedError
from ossmodelconnector.objects import FetchInto

__all__ = ["SharedBacking"]

log = logging.getLogger(__name__)

_THREAD = threading.local()  # .bounce: this thread's reused landing buffer for fetch_through_file


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
        path: the data segment's file, to store fetched chunks with ``pwrite`` instead of through the
            mapping (:meth:`file_fetcher`); None to write through the mapping.
        mtime_ns: the modification time the data file keeps (the object's ``Last-Modified``, in
            nanoseconds), set back after every write and release; None to leave the times alone.
    """

    def __init__(
        self,
        table: StateTable,
        index: int,
        mapping: mmap.mmap | None,
        *,
        punch_holes: bool = False,
        path: str | None = None,
        mtime_ns: int | None = None,
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
        self.path: str | None = None
        """The data file written by :meth:`fetch_through_file`; None when chunks go through the mapping."""
        self.mtime_ns = mtime_ns
        """The data file's modification time, kept through every write and release (None: not kept)."""
        self._identity: tuple[int, int] | None = None
        self._encoded_path = b""
        self._times_lock = threading.Lock()
        if path is not None and mapping is not None:
            try:
                info = os.stat(path, follow_symlinks=False)
            except OSError as exc:
                log.debug("%s: writing through the mapping, cannot stat %s: %s", self, path, exc)
            else:
                self.path = path
                self._identity = (info.st_dev, info.st_ino)
                self._encoded_path = os.fsencode(path)

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

    def file_fetcher(self, fetch_into: FetchInto) -> FetchInto:
        """The ``fetch_into`` to register this file's object with: one that stores through the file.

        The returned callable ignores the ``dest`` it is given (the mapping's view of the same bytes,
        which a shared buffer always passes: it never delivers into a reader's buffer) and writes the
        range to the data file instead (:meth:`fetch_through_file`). Without a file (:attr:`path` None)
        it is ``fetch_into`` itself.

        Args:
            fetch_into: fetches a byte range of the object into a buffer and returns its CRC-64.
        """
        if self.path is None:
            return fetch_into

        def fetch_to_file(start: int, end: int, dest: memoryview) -> int:
            return self.fetch_through_file(fetch_into, start, end)

        return fetch_to_file

    def fetch_through_file(self, fetch_into: FetchInto, start: int, end: int) -> int:
        """Fetch ``[start, end)`` into this thread's reused buffer, then ``pwrite`` it into the data file.

        The file is opened for each chunk (a few microseconds against milliseconds of transfer), so no
        descriptor outlives the cache: once the cache is closed and its file unlinked, this fails
        instead of writing into memory nobody frees. The file must still be the one the cache made (same
        device and inode), so a later cache that reused the name is never written. Writers of one file
        take turns (a lock on the file, waited for without the GIL), and the file's times are set back
        to :attr:`mtime_ns` before the next writer's turn.

        Args:
            fetch_into: fetches a byte range into a buffer and returns its CRC-64.
            start: the range's first byte.
            end: one past its last byte.

        Returns:
            The CRC-64 of the bytes, from ``fetch_into``.

        Raises:
            ClosedError: the cache was closed (its file is gone or replaced).
            CacheError: the write failed (for example /dev/shm is full).
            ValueError: this backing has no file (:attr:`path` is None).
        """
        if self.path is None:
            raise ValueError(f"{self}: no data file to write; fetch into the mapping instead")
        length = end - start
        bounce: bytearray | None = getattr(_THREAD, "bounce", None)
        if bounce is None or len(bounce) < length:
            bounce = _THREAD.bounce = bytearray(length)
        with memoryview(bounce)[:length] as view:
            crc = fetch_into(start, end, view)
            self._write(start, view)
        return crc

    def _write(self, offset: int, data: memoryview) -> None:
        assert self.path is not None and self._identity is not None
        step, number = store_chunk(self._encoded_path, data, offset, *self._identity, self.mtime_ns)
        if step == STORE_DONE:
            return
        if step == STORE_TIMES:  # the bytes are stored
            self._times_refused(number)
            return
        if step == STORE_OPEN and number == errno.ENOENT:
            raise ClosedError(f"{self}: its shared cache was closed (file gone); prepare the directory again")
        if step == STORE_OPEN:
            refused = _os_error(number, self.path)
            raise CacheError(
                f"{self}: cannot open {self.path} to store a chunk: {refused}; check that the cache "
                "directory is still there and writable, or prepare the directory again"
            ) from refused
        if step == STORE_IDENTITY:
            raise ClosedError(
                f"{self}: {self.path} is no longer this cache's file (the cache was closed and the name "
                "reused); prepare the directory again"
            )
        # STORE_STAT, STORE_WRITE (errno 0: pwrite wrote nothing), STORE_CLOSE
        cause = _os_error(number) if number else OSError("pwrite wrote nothing")
        raise CacheError(
            f"{self}: writing {len(data)} bytes at offset {offset} of {self.path} failed: {cause}; free "
            "memory or space there (df), lower memoryLimitMB, or set cacheDir elsewhere"
        ) from cause

    def restore_times(self) -> None:
        """Set the data file's access and modification times back to :attr:`mtime_ns` (after a release
        punched pages out of it, which moves them). Nothing without a time or a file, or once the file
        is gone or no longer this cache's; a failure is logged, never raised (the release stands).

        The same kernel as a store, with no bytes: one GIL release; the file is opened write-only, as
        for the stores (a read-only descriptor of ours would count as a reader's:
        directory/lazy/residency.in_use_by_readers), and without the write lock (a store running
        meanwhile sets the same time again once its write is done)."""
        mtime_ns = self.mtime_ns
        if mtime_ns is None or self._identity is None:
            return
        step, number = store_chunk(self._encoded_path, b"", 0, *self._identity, mtime_ns)
        if step == STORE_TIMES:
            self._times_refused(number)
        elif step not in (STORE_DONE, STORE_IDENTITY):
            log.debug("%s: times not restored on %s: %s", self, self.path, _os_error(number, self.path))

    def _times_refused(self, number: int) -> None:
        # Said once (a WARNING), and not tried again for this file; stores that ran at once may all see it.
        with self._times_lock:
            first, self.mtime_ns = self.mtime_ns is not None, None
        if first:
            warn_times_refused(f"{self}'s {self.path}", _os_error(number))


def _os_error(number: int, path: str | None = None) -> OSError:
    """The ``OSError`` Python would have raised for ``errno`` ``number`` (``FileNotFoundError``...)."""
    if path is None:
        return OSError(number, os.strerror(number))
    return OSError(number, os.strerror(number), path)
