"""The buffer one object's bytes land in, with one state per chunk.

::

    worker: begin_fetch(i) -> fetch_into(chunk_view(i)) -> complete(i, crc) | fail(i, exc)
                                                              │ notify
    reader: wait_ready(i) <───────────────────────────────────┘ -> copy out of ``view`` -> release(i)

Chunk states go EMPTY -> FETCHING -> READY -> (release) EMPTY, or FETCHING -> FAILED (sticky: the
stored exception is re-raised to every reader of those bytes), except when the chunk failed for lack of
room to store it (``ENOSPC``...: ``chunk_errors.py``): then the next read puts it back to EMPTY and
fetches it again (:meth:`ChunkBuffer.retry_if_out_of_room`). The bytes are ONE contiguous private
anonymous mapping of the object's size, so a finished object is a single read-only ``memoryview`` with
no copy, and releasing a chunk returns its pages to the system (``MADV_DONTNEED`` frees the pages of a
private anonymous mapping; a later read of them would see zeros, which is why only EMPTY is possible
afterwards).

Integrity without a second pass: each chunk's CRC-64 arrives with its bytes; once every chunk has been
fetched they are combined with ``crc64_combine`` and compared with the server's CRC. A chunk fetched again
after a release must give the same CRC as the first time.

All state is guarded by one lock that the owner may share between buffers (the prefetch scheduler does,
so that its budget and every buffer change under one lock); each buffer has its own condition on it.

With a :class:`~ossmodelconnector.cache.shared_backing.SharedBacking` the bytes are a data segment's
``MAP_SHARED`` mapping (owned by the shared cache, not by the buffer) and the states are the file's bytes
in the shared state table; every change also bumps the table's generation and futex-wakes, so readers in
other processes see it. A lazy directory's released pages are then punched out (``MADV_REMOVE``, which
frees tmpfs pages; ``SharedBacking.punch_holes``); an eager directory's never are, because another
directory may share the segment. Closing leaves the bytes in place: a reader that mapped the file keeps
reading what arrived.
"""

from __future__ import annotations

import logging
import mmap
import platform
import sys
import threading
import time
from collections.abc import Callable

from ossmodelconnector._fast import crc64_combine
from ossmodelconnector.cache.chunk_state import ChunkState
from ossmodelconnector.cache.shared_backing import SharedBacking
from ossmodelconnector.errors import ClosedError, IntegrityError
from ossmodelconnector.fetch.chunk_errors import (
    as_retryable,
    object_mismatch,
    out_of_room,
    raise_stored,
    refetch_mismatch,
    timeout_error,
)
from ossmodelconnector.fetch.delivery import Deliveries, Delivery
from ossmodelconnector.objects import ObjectInfo
from ossmodelconnector.ranges import ByteRange, chunk_count, chunk_range

__all__ = ["ChunkBuffer", "ChunkState"]

log = logging.getLogger(__name__)

_PAGE = mmap.PAGESIZE
_MADV_DONTNEED: int | None = getattr(mmap, "MADV_DONTNEED", None)
# On a shared mapping MADV_DONTNEED only drops this process's page tables; MADV_REMOVE frees the file's
# pages (tmpfs) or punches a hole (disk), which is what releasing a chunk means there.
_MADV_REMOVE: int | None = getattr(mmap, "MADV_REMOVE", None)
# Reserve no swap for the whole object up front: with Linux's default heuristic overcommit a private
# writable mapping larger than RAM + swap is refused, yet only the chunks within the budget are ever
# touched. Python exposes the flag only from 3.13; its value is 0x4000 on these architectures.
_MAP_NORESERVE: int = getattr(
    mmap,
    "MAP_NORESERVE",
    0x4000
    if sys.platform == "linux"
    and platform.machine() in ("x86_64", "i386", "i686", "aarch64", "riscv64", "s390x")
    else 0,
)


class ChunkBuffer:
    """One object's bytes in one contiguous mapping, split into chunks that each have a state.

    Args:
        info: the object version whose bytes this buffer holds (its size, name and expected CRC).
        chunk_size: bytes per chunk, ``>= 1``.
        lock: the lock guarding this buffer's state; pass one lock to several buffers to guard them
            together. A new ``RLock`` by default. It must be reentrant.
        backing: None for a private anonymous mapping; a shared cache's backing to keep the bytes in its
            data segment and the states in its state table, published to other processes.

    Raises:
        ValueError: a chunk size below 1, or a backing laid out for another size or chunk size.
        ClosedError: the backing's cache was closed.
    """

    def __init__(
        self,
        info: ObjectInfo,
        chunk_size: int,
        *,
        lock: threading.RLock | None = None,
        backing: SharedBacking | None = None,
    ) -> None:
        self.info = info
        self.chunk_size = chunk_size
        self.count = chunk_count(info.size, chunk_size)
        self._cond = threading.Condition(lock if lock is not None else threading.RLock())
        self._backing = backing
        self._states: bytearray | memoryview = bytearray(self.count)
        self._pins = [0] * self.count
        self._first_crcs: list[int | None] = [None] * self.count
        self._crcs_known = 0
        self._errors: dict[int, BaseException] = {}
        self._retryable: set[int] = set()  # FAILED chunks that found no room: the next read retries them
        self._deliveries = Deliveries()
        self._object_error: IntegrityError | None = None
        self._closed_reason: str | None = None
        self.held_bytes = 0
        """Bytes in FETCHING or READY chunks."""
        self.actual_crc64: int | None = None
        """CRC-64 of the whole object, known once every chunk has been fetched at least once."""
        # mmap refuses a length of 0, and an empty object needs no memory at all.
        self._mapping: mmap.mmap | None = None
        self._owns_mapping = backing is None
        self._punch_holes = backing is not None and backing.punch_holes  # releasing frees the file's pages
        self._view = memoryview(b"")
        if backing is not None:
            backing.check_fits(info.uri, info.size, chunk_size)
            self._states = backing.states
            self._mapping = backing.mapping
            if self._mapping is not None:
                self._view = memoryview(self._mapping)
        elif info.size:
            self._mapping = mmap.mmap(-1, info.size, flags=mmap.MAP_PRIVATE | _MAP_NORESERVE)
            self._view = memoryview(self._mapping)
        if self.count == 0:
            self._check_object()
            self._publish()

    # --- introspection -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The object's ``oss://bucket/key`` URI, for messages."""
        return self.info.uri

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed_reason is not None

    @property
    def shared(self) -> bool:
        """Whether the bytes and states live in a shared cache (published to other processes)."""
        return self._backing is not None

    @property
    def condition(self) -> threading.Condition:
        """The condition (over the shared lock) notified on every change of this buffer."""
        return self._cond

    def state(self, index: int) -> ChunkState:
        """The state of chunk ``index``."""
        return ChunkState(self._states[index])

    def states(self) -> list[ChunkState]:
        """The state of every chunk, in file order."""
        with self._cond:
            return [ChunkState(value) for value in self._states]

    def readable_now(self, index: int) -> bool:
        """Whether chunk ``index`` can be read right now: READY, the buffer open, the object not failed.

        Only meaningful while the caller holds the lock (otherwise the chunk may be released at once).
        """
        return (
            self._states[index] == ChunkState.READY
            and self._closed_reason is None
            and self._object_error is None
        )

    def chunk(self, index: int) -> ByteRange:
        """The bytes of chunk ``index``."""
        return chunk_range(index, self.info.size, self.chunk_size)

    def never_fetched(self, index: int) -> bool:
        """Whether chunk ``index`` has never been fetched (into this buffer or a reader's)."""
        return self._first_crcs[index] is None

    def pinned(self, index: int) -> bool:
        """Whether a reader holds chunk ``index`` (a pinned chunk is never released)."""
        return self._pins[index] > 0

    @property
    def complete_and_verified(self) -> bool:
        """Whether every chunk is READY and the object-level check passed (or had nothing to check)."""
        with self._cond:
            return (
                self._object_error is None
                and self._crcs_known == self.count
                and all(value == ChunkState.READY for value in self._states)
            )

    # --- memory --------------------------------------------------------------------------------------

    def chunk_view(self, index: int) -> memoryview:
        """A writable view of chunk ``index``'s bytes, for the fetch to land in."""
        chunk = self.chunk(index)
        return self._view[chunk.start : chunk.end]

    def fetch_view(self, index: int) -> memoryview:
        """Where the fetch of chunk ``index`` (just begun) lands: a reader's delivery, else the mapping."""
        with self._cond:
            dest = self._deliveries.destination(index)
            return dest if dest is not None else self.chunk_view(index)

    def deliver_to(self, index: int, dest: memoryview) -> Delivery | None:
        """Have chunk ``index`` fetched straight into ``dest`` (``len(dest)`` = the chunk's length).

        Only for a private buffer (a shared one must hold the bytes for other readers) and a chunk that is
        EMPTY with no other delivery pending. The caller must :meth:`withdraw` what it got, whatever
        happens, before it lets go of ``dest``.

        Returns:
            The delivery to wait for (:meth:`wait_delivered`), or None if the chunk must be read as usual.
        """
        with self._cond:
            if self._backing is not None or self._states[index] != ChunkState.EMPTY or self.closed:
                return None
            return self._deliveries.add(index, dest)

    def is_delivery(self, index: int) -> bool:
        """Whether chunk ``index`` goes to a reader's buffer (it holds no memory of ours)."""
        return index in self._deliveries

    def wait_delivered(
        self, index: int, delivery: Delivery, timeout_s: float, on_empty: Callable[[int], None]
    ) -> None:
        """Block until the worker has written chunk ``index`` into ``delivery.dest``.

        Raises:
            Same as :meth:`wait_ready`.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not delivery.done:
                self.check_usable()
                value = self._states[index]
                if value == ChunkState.EMPTY and not delivery.started:
                    on_empty(index)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise timeout_error(
                        self.info, self.chunk(index), index, ChunkState(self._states[index]).name, timeout_s
                    )
                self._cond.wait(remaining)
            if self._states[index] == ChunkState.FAILED:
                raise_stored(self._errors[index], self.info, self.chunk(index))

    def withdraw(self, deliveries: dict[int, Delivery]) -> None:
        """Cancel the deliveries no worker took, and wait until those taken have reported back.

        A worker writes into the reader's buffer until its request returns, so the reader must not let go
        of that buffer before (the request's own timeouts bound the wait).
        """
        with self._cond:
            self._deliveries.withdraw(deliveries, self._cond)

    def copy_into(self, start: int, dest: memoryview) -> None:
        """Copy ``len(dest)`` bytes from offset ``start`` into ``dest``; the caller pinned them READY.

        Raises:
            ClosedError: the buffer was closed.
        """
        # The slice is an export of the mapping, so a concurrent close() cannot unmap it mid-copy.
        source = self._view[start : start + len(dest)]
        if len(source) != len(dest):
            self.check_usable()
        dest[:] = source

    def tobytes(self, start: int, end: int) -> bytes:
        """A copy of the bytes ``[start, end)``; the caller pinned them READY.

        Raises:
            ClosedError: the buffer was closed.
        """
        source = self._view[start:end]
        if len(source) != end - start:
            self.check_usable()
        return source.tobytes()

    def find_byte(self, needle: int, start: int, end: int) -> int:
        """Offset of the first byte ``needle`` in ``[start, end)``, or -1; the caller pinned them READY.

        Raises:
            ClosedError: the buffer was closed.
        """
        mapping = self._mapping
        if mapping is None:
            self.check_usable()
            return -1
        try:
            return mapping.find(bytes((needle,)), start, end)
        except ValueError:  # unmapped by a concurrent close()
            self.check_usable()
            raise

    def readonly_view(self) -> memoryview:
        """A read-only view of the whole object (no copy); valid until every such view is dropped."""
        return self._view.toreadonly()

    # --- transitions (each takes the lock; the owner may already hold it) ----------------------------

    def pin(self, index: int) -> None:
        """Protect chunk ``index`` from :meth:`release` until :meth:`unpin`."""
        with self._cond:
            self._pins[index] += 1

    def unpin(self, index: int) -> None:
        """Undo one :meth:`pin` (a no-op once the buffer is closed: closing drops every pin)."""
        with self._cond:
            if self.closed:
                return
            if self._pins[index] <= 0:
                raise RuntimeError(f"{self.name}: chunk {index} unpinned more often than pinned")
            self._pins[index] -= 1

    def begin_fetch(self, index: int) -> int:
        """Mark chunk ``index`` FETCHING; returns its length (bytes now held)."""
        with self._cond:
            self._expect(index, ChunkState.EMPTY)
            self._states[index] = ChunkState.FETCHING
            if self._deliveries.start(index):
                self._publish()
                return 0
            length = len(self.chunk(index))
            self.held_bytes += length
            self._publish()
            return length

    def complete(self, index: int, crc: int) -> bool:
        """Mark a fetched chunk READY and record its CRC-64; check the object once all are known.

        Args:
            index: the chunk that was FETCHING.
            crc: CRC-64 of its bytes, as ``fetch_into`` returned it.

        Returns:
            True if the chunk is now READY; False if the buffer was closed meanwhile (the chunk is EMPTY
            and its bytes are no longer held) or its CRC differs from an earlier fetch (it is FAILED).
        """
        with self._cond:
            self._expect(index, ChunkState.FETCHING)
            if self._end_delivery(index):
                if self.closed or self._record_crc(index, crc):
                    self._to_empty(index)  # the bytes are the reader's, none of ours
                    self._publish()
                return False
            if self.closed:
                self._to_empty(index)
                self._publish()
                return False
            if not self._record_crc(index, crc):
                return False
            self._states[index] = ChunkState.READY
            self._cond.notify_all()
            self._publish()
            return True

    def _record_crc(self, index: int, crc: int) -> bool:
        """Keep a chunk's first CRC-64 (checking the object once all are known); False, and the chunk
        FAILED, when a later fetch of it differs."""
        first = self._first_crcs[index]
        if first is None:
            self._first_crcs[index] = crc
            self._crcs_known += 1
            if self._crcs_known == self.count:
                self._check_object()
            return True
        if first == crc:
            return True
        chunk = self.chunk(index)
        error = refetch_mismatch(self.info, chunk, first, crc)
        self._object_error = error
        self._fail_locked(index, error)
        if self._backing is not None:
            self._backing.record_checked(error)
        self._publish()
        return False

    def fail(self, index: int, error: BaseException) -> None:
        """Mark chunk ``index`` FAILED with ``error`` (re-raised to its readers); its pages are dropped.

        An error that says there was no room to store the chunk is kept as an ``OutOfMemoryError``, which
        the next read retries (:meth:`retry_if_out_of_room`); any other stays until the buffer closes.
        """
        with self._cond:
            self._expect(index, ChunkState.FETCHING)
            self._end_delivery(index)
            if self.closed:
                self._to_empty(index)
            else:
                if out_of_room(error):
                    error = as_retryable(error, self.info, self.chunk(index))
                    self._retryable.add(index)
                self._fail_locked(index, error)
            self._publish()

    def retry_if_out_of_room(self, index: int) -> bool:
        """Put chunk ``index`` back to EMPTY if it FAILED for lack of room; True if it did.

        The caller then demands it (a reader) or queues it (a demand from another process).
        """
        with self._cond:
            if self._states[index] != ChunkState.FAILED or index not in self._retryable or self.closed:
                return False
            self._retryable.discard(index)
            self._errors.pop(index, None)
            self._states[index] = ChunkState.EMPTY
            self._cond.notify_all()
            self._publish()
            return True

    def cancel(self, index: int) -> None:
        """Put a FETCHING chunk whose fetch will never report back (e.g. after ``fork``) back to EMPTY."""
        with self._cond:
            self._expect(index, ChunkState.FETCHING)
            self._end_delivery(index)
            self._to_empty(index)
            self._publish()

    def release(self, index: int) -> None:
        """Drop a READY, unpinned chunk's pages and mark it EMPTY, so the memory returns to the system.

        Raises:
            RuntimeError: the chunk is not READY or is pinned.
        """
        with self._cond:
            self._expect(index, ChunkState.READY)
            if self._pins[index]:
                raise RuntimeError(f"{self.name}: chunk {index} is pinned by a reader and cannot be released")
            self._to_empty(index)
            self._publish()

    def rebind_lock(self, lock: threading.RLock) -> None:
        """Guard this buffer with a new lock (in a child after ``fork``, where the old one may be held)."""
        self._cond = threading.Condition(lock)

    def detach_after_fork(self) -> None:
        """In a forked child: keep working on a private copy of the states, publishing nothing.

        The shared state table belongs to the parent, whose workers still write it; the child must not
        change it. The data mapping stays shared (a chunk the child fetches again holds the same bytes:
        the fetch is pinned to the same ETag).
        """
        if self._backing is not None:
            self._states = bytearray(self._states)
            self._backing = None
            self._punch_holes = False  # the parent's pages: never punched out from here

    def close(self, reason: str = "the stream was closed; open the object again to read it") -> None:
        """Drop every chunk and the mapping; waiters get :class:`ClosedError`. Idempotent.

        A chunk still FETCHING stays so until its worker reports back (then it becomes EMPTY), because
        the worker is still writing into the mapping. The mapping itself is unmapped as soon as nothing
        views it: views returned by :meth:`readonly_view` stay valid for as long as their holder keeps them.

        Args:
            reason: why, and the fix, for the message of the waiters' :class:`ClosedError`.
        """
        with self._cond:
            if self.closed:
                return
            self._closed_reason = reason
            for index, value in enumerate(self._states):
                if value in (ChunkState.READY, ChunkState.FAILED):
                    self._states[index] = ChunkState.EMPTY
                    if value == ChunkState.READY:
                        self.held_bytes -= len(self.chunk(index))
            self._errors.clear()
            self._retryable.clear()
            self._pins = [0] * self.count
            self._cond.notify_all()
            self._publish()
            # Dropped, not released: a reader may be slicing the old view right now; the slice it gets
            # keeps the mapping alive until its copy is done.
            mapping, self._mapping = self._mapping, None
            self._view = memoryview(b"")
        if mapping is not None and self._owns_mapping:
            try:
                mapping.close()
            except BufferError:
                # A worker is still writing into it or the user holds a view from mmap(); dropping our
                # reference lets the last of those unmap it.
                log.debug(
                    "%s: mapping still viewed at close; it is unmapped when the last view goes", self.name
                )

    # --- waiting -------------------------------------------------------------------------------------

    def wait_ready(self, index: int, timeout_s: float, on_empty: Callable[[int], None] | None = None) -> None:
        """Block until chunk ``index`` is READY.

        Args:
            index: the chunk wanted.
            timeout_s: give up after this many seconds without the chunk becoming READY.
            on_empty: called with ``index`` (under the lock) whenever the chunk is found EMPTY: the owner's
                hook to schedule its fetch.

        Raises:
            RequestTimeoutError: the chunk was not READY within ``timeout_s``.
            ClosedError: the buffer was closed before or while waiting.
            IntegrityError: the object's CRC-64 does not match.
            ConnectorError: the chunk's fetch failed: the stored error's type, with it as ``__cause__``.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            # A chunk that found no room is fetched again by the next read; one that fails while this
            # read waits is raised, so that a full cache directory is an error, not a fetch loop.
            if self.retry_if_out_of_room(index) and on_empty is not None:
                on_empty(index)
            while True:
                self.check_usable()
                value = self._states[index]
                if value == ChunkState.READY:
                    return
                if value == ChunkState.FAILED:
                    raise_stored(self._errors[index], self.info, self.chunk(index))
                if value == ChunkState.EMPTY and on_empty is not None:
                    on_empty(index)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise timeout_error(
                        self.info, self.chunk(index), index, ChunkState(self._states[index]).name, timeout_s
                    )
                self._cond.wait(remaining)

    def check_usable(self) -> None:
        """Raise if the buffer is closed or the object failed its integrity check.

        Raises:
            ClosedError: after :meth:`close`.
            IntegrityError: the object's CRC-64 does not match (a copy, with the original as cause).
        """
        with self._cond:
            if self._closed_reason is not None:
                raise ClosedError(
                    f"{self.name}: {self._closed_reason}",
                    bucket=self.info.bucket,
                    key=self.info.key,
                )
            if self._object_error is not None:
                raise_stored(self._object_error, self.info, ByteRange(0, self.info.size))

    # --- internals -----------------------------------------------------------------------------------

    def _expect(self, index: int, state: ChunkState) -> None:
        if self._states[index] != state:
            raise RuntimeError(
                f"{self.name}: chunk {index} is {ChunkState(self._states[index]).name}, expected {state.name}"
            )

    def _publish(self) -> None:
        if self._backing is not None:
            self._backing.publish()

    def _end_delivery(self, index: int) -> bool:
        if not self._deliveries.finish(index):
            return False
        # Nothing of ours was held: counted as held for a moment, so that _to_empty balances.
        self.held_bytes += len(self.chunk(index))
        return True

    def _to_empty(self, index: int) -> None:
        self._states[index] = ChunkState.EMPTY
        self.held_bytes -= len(self.chunk(index))
        self._drop_pages(self.chunk(index))
        self._cond.notify_all()

    def _fail_locked(self, index: int, error: BaseException) -> None:
        self._to_empty(index)
        if self._backing is not None:
            self._backing.record_error(error)  # before the state byte: a reader seeing FAILED finds the text
        self._states[index] = ChunkState.FAILED
        self._errors[index] = error

    def _drop_pages(self, chunk: ByteRange) -> None:
        advice = _MADV_REMOVE if self._punch_holes else _MADV_DONTNEED
        if self._mapping is None or advice is None:
            return
        # Only whole pages inside the chunk: an edge page shared with a neighbour may hold its bytes.
        start = -(-chunk.start // _PAGE) * _PAGE
        end = self.info.size if chunk.end == self.info.size else chunk.end // _PAGE * _PAGE
        if end > start:
            self._mapping.madvise(advice, start, end - start)
            if self._punch_holes and self._backing is not None:
                self._backing.restore_times()  # punching moved the file's mtime: Last-Modified again

    def _check_object(self) -> None:
        total = 0
        for index, crc in enumerate(self._first_crcs):
            assert crc is not None
            total = crc64_combine(total, crc, len(self.chunk(index)))
        self.actual_crc64 = total
        expected = self.info.crc64
        if expected is not None and expected != total:
            self._object_error = object_mismatch(self.info, total, expected)
            log.error("%s", self._object_error)
        if self._backing is not None:
            self._backing.record_checked(self._object_error)
