"""Reading one registered object: wait for exactly the chunks a read covers, pin them, copy out.

::

    ObjectHandle.readinto / read_bytes / read_until / view / wait / wait_all
        │ boost(span)            the scheduler moves the span to the front of its queue
        │ acquire(chunk)         wait until READY (demanding it if EMPTY), pinned against eviction
        │ copy out of the ChunkBuffer (one copy; view(): none)
        └ unpin(chunk, consumed) a chunk the reader moved past may be released for read-ahead

A read that lies inside one READY chunk takes a shortcut: it copies while holding the scheduler's lock,
which is as safe as a pin (nothing can release the chunk meanwhile) and costs one lock round trip.

``wait``/``wait_all`` only wait (no copy, nothing stays pinned): the reader hooks call them before
letting a framework read a file of a prepared directory straight from its mapping. That is safe for
objects registered ``evictable=False``, whose READY chunks are never released.

The handle depends on the scheduler only through the small :class:`ChunkScheduler` protocol.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Protocol

from ossmodelconnector.cache.shared_backing import SharedBacking
from ossmodelconnector.config import DEFAULT_WAIT_TIMEOUT_S
from ossmodelconnector.errors import RequestTimeoutError
from ossmodelconnector.fetch.chunk_buffer import ChunkBuffer
from ossmodelconnector.fetch.delivery import Delivery
from ossmodelconnector.objects import FetchInto, ObjectInfo
from ossmodelconnector.ranges import chunk_span

__all__ = ["ChunkScheduler", "ObjectHandle"]
"""Seconds a reader waits for one chunk before ``RequestTimeoutError`` (``Config.wait_timeout_s``)."""

# Reads up to this size from one READY chunk are copied under the scheduler lock, skipping the pin
# protocol (a line costs ~1 us instead of ~10); larger copies pin instead, not to hold the lock long.
_LOCKED_COPY_MAX = 256 * 1024


class ChunkScheduler(Protocol):
    """What an :class:`ObjectHandle` needs from the scheduler that fetches its chunks."""

    @property
    def lock(self) -> threading.RLock:
        """The lock guarding every buffer's state and the scheduler's bookkeeping."""
        ...

    def boost(self, handle: ObjectHandle, span: Iterable[int]) -> None:
        """Move the EMPTY chunks of ``span`` to the front of the queue (within the budget)."""
        ...

    def acquire(self, handle: ObjectHandle, index: int, timeout_s: float) -> None:
        """Wait until chunk ``index`` is READY, fetching it first if needed, and pin it."""
        ...

    def unpin(self, handle: ObjectHandle, index: int, *, consumed: bool) -> None:
        """Undo :meth:`acquire`; ``consumed``: the reader moved past the chunk's end."""
        ...

    def touch(self, handle: ObjectHandle, index: int, *, consumed: bool) -> None:
        """Record a read of a READY chunk made while holding :attr:`lock`."""
        ...

    def demand(self, handle: ObjectHandle, index: int) -> None:
        """Queue EMPTY chunk ``index`` ahead of everything (caller holds :attr:`lock`)."""
        ...

    def fits_at_once(self, length: int) -> bool:
        """Whether ``length`` bytes may be held at once for one read."""
        ...

    def unregister(self, handle: ObjectHandle) -> None:
        """Cancel the object's queued chunks and free its memory."""
        ...


class ObjectHandle:
    """One registered object: its chunk buffer and the reads that wait for its chunks.

    Made by :meth:`PrefetchScheduler.register`; the stream reads through it, and for a prepared
    directory it is the registry's waitable file (``size``, ``wait``, ``wait_all``). Not thread-safe for
    :meth:`view` called concurrently with :meth:`close`; the reads are.
    """

    def __init__(
        self,
        scheduler: ChunkScheduler,
        handle_id: int,
        info: ObjectInfo,
        fetch_into: FetchInto,
        chunk_size: int,
        *,
        backing: SharedBacking | None = None,
        evictable: bool = True,
    ) -> None:
        self.id = handle_id
        self.info = info
        self.fetch_into = fetch_into
        self.chunk_size = chunk_size
        self.evictable = evictable
        """False: the scheduler never releases a READY chunk (readers map the bytes directly)."""
        self.buffer = ChunkBuffer(info, chunk_size, lock=scheduler.lock, backing=backing)
        self._scheduler = scheduler
        self._view_pinned = False
        self.closed = False

    @property
    def size(self) -> int:
        """The object's size in bytes."""
        return self.info.size

    def readinto(self, start: int, dest: memoryview, timeout_s: float = DEFAULT_WAIT_TIMEOUT_S) -> int:
        """Copy bytes from offset ``start`` into ``dest`` (one copy), waiting only for the chunks needed.

        Args:
            start: first byte, ``>= 0`` (at or past the end, nothing is read).
            dest: a writable one-dimensional byte view; up to ``len(dest)`` bytes are written.
            timeout_s: seconds to wait for each chunk.

        Returns:
            The number of bytes copied: ``min(len(dest), size - start)``, or 0 past the end.

        Raises:
            RequestTimeoutError: a chunk did not arrive within ``timeout_s``.
            ClosedError: the handle or the scheduler was closed.
            IntegrityError: the object's CRC-64 does not match.
            ConnectorError: fetching the bytes failed (the worker's error is the ``__cause__``).
        """
        end = min(self.info.size, start + len(dest))
        if end - start <= _LOCKED_COPY_MAX and self._copy_if_ready(start, end, dest):
            return end - start
        self.buffer.check_usable()
        if end <= start:
            return 0
        span = chunk_span(start, end, self.chunk_size)
        deliveries = self._deliver_whole_chunks(span, start, end, dest)
        try:
            self._scheduler.boost(self, span)
            for index in span:
                delivery = deliveries.get(index)
                if delivery is not None:
                    self.buffer.wait_delivered(
                        index, delivery, timeout_s, lambda i: self._scheduler.demand(self, i)
                    )
                    continue
                chunk = self.buffer.chunk(index)
                first, last = max(start, chunk.start), min(end, chunk.end)
                self._scheduler.acquire(self, index, timeout_s)
                try:
                    self.buffer.copy_into(first, dest[first - start : last - start])
                finally:
                    self._scheduler.unpin(self, index, consumed=last == chunk.end)
        finally:
            if deliveries:
                self.buffer.withdraw(deliveries)
        self.buffer.check_usable()
        return end - start

    def _deliver_whole_chunks(
        self, span: range, start: int, end: int, dest: memoryview
    ) -> dict[int, Delivery]:
        # Chunks the read covers whole and nobody has fetched yet go straight into the reader's buffer:
        # no page faults on fresh memory of ours, no second copy. The rest are copied out as usual.
        deliveries: dict[int, Delivery] = {}
        if len(span) < 2 or self.buffer.shared:
            return deliveries  # one chunk: the read-ahead usually has it in flight already
        with self._scheduler.lock:
            for index in span:
                chunk = self.buffer.chunk(index)
                if start <= chunk.start and chunk.end <= end:
                    delivery = self.buffer.deliver_to(index, dest[chunk.start - start : chunk.end - start])
                    if delivery is not None:
                        deliveries[index] = delivery
        return deliveries

    def read_bytes(self, start: int, end: int, timeout_s: float = DEFAULT_WAIT_TIMEOUT_S) -> bytes:
        """The bytes ``[start, end)`` (clamped to the object) as ``bytes``, copied once when they fit.

        Args:
            start: first byte.
            end: one past the last byte.
            timeout_s: seconds to wait for each chunk.

        Returns:
            The bytes; shorter than asked only at the end of the object.

        Raises:
            Same as :meth:`readinto`.
        """
        end = min(end, self.info.size)
        if end - start <= _LOCKED_COPY_MAX:
            data = self._slice_if_ready(start, end, None)
            if data is not None:
                return data
        self.buffer.check_usable()
        if end <= start:
            return b""
        span = chunk_span(start, end, self.chunk_size)
        if len(span) == 1 or self._scheduler.fits_at_once(end - start):
            # Every chunk of the span held at once, then one copy out of the contiguous mapping.
            self._pin_span(span, timeout_s)
            try:
                data = self.buffer.tobytes(start, end)
            finally:
                for index in span:
                    self._scheduler.unpin(self, index, consumed=self.buffer.chunk(index).end <= end)
        else:
            # More than the budget: one chunk held at a time, at the price of a second copy.
            staging = bytearray(end - start)
            self.readinto(start, memoryview(staging), timeout_s)
            data = bytes(staging)
        self.buffer.check_usable()
        return data

    def read_until(self, start: int, end: int, byte: int, timeout_s: float = DEFAULT_WAIT_TIMEOUT_S) -> bytes:
        """The bytes from ``start`` up to and including the first ``byte``, stopping at ``end``.

        Args:
            start: first byte.
            end: stop before this offset (clamped to the object) when ``byte`` does not occur.
            byte: the delimiter, e.g. ``0x0A`` for a line.
            timeout_s: seconds to wait for each chunk.

        Returns:
            The bytes read; empty at or past the end.

        Raises:
            Same as :meth:`readinto`.
        """
        end = min(end, self.info.size)
        line = self._slice_if_ready(start, end, byte)
        if line is not None:
            return line
        self.buffer.check_usable()
        pieces = []
        position = start
        for index in chunk_span(start, end, self.chunk_size) if start < end else ():
            chunk = self.buffer.chunk(index)
            last = min(end, chunk.end)
            self._scheduler.acquire(self, index, timeout_s)
            try:
                found = self.buffer.find_byte(byte, position, last)
                if found >= 0:
                    last = found + 1
                pieces.append(self.buffer.tobytes(position, last))
            finally:
                self._scheduler.unpin(self, index, consumed=last == chunk.end)
            position = last
            if found >= 0:
                break
        self.buffer.check_usable()
        return b"".join(pieces)

    def view(self, timeout_s: float = DEFAULT_WAIT_TIMEOUT_S) -> memoryview:
        """A read-only view of the whole object, after waiting for all of it and checking its CRC-64.

        The chunks stay pinned (never evicted, whatever the budget) until the handle is closed; the view
        stays valid after that for as long as its holder keeps it.

        Args:
            timeout_s: seconds to wait for each chunk.

        Returns:
            A read-only ``memoryview`` of ``size`` bytes, no copy.

        Raises:
            Same as :meth:`readinto`.
        """
        self.buffer.check_usable()
        if not self._view_pinned:
            self._pin_span(range(self.buffer.count), timeout_s)
            self._view_pinned = True
        self.buffer.check_usable()
        return self.buffer.readonly_view()

    def wait(self, start: int, end: int, timeout_s: float | None = None) -> None:
        """Wait until bytes ``[start, end)`` (clamped to the object) are READY; no copy, nothing pinned.

        The chunks not yet in flight move to the front of the queue. For an ``evictable`` object a chunk
        may be released again right after this returns; read through :meth:`readinto` there instead.

        Args:
            start: first byte.
            end: one past the last byte.
            timeout_s: seconds in all (``None``: ``DEFAULT_WAIT_TIMEOUT_S``).

        Raises:
            RequestTimeoutError: not READY within ``timeout_s``.
            ClosedError: the handle or the scheduler was closed.
            IntegrityError: the object's CRC-64 does not match.
            ConnectorError: fetching the bytes failed (the worker's error is the ``__cause__``).
        """
        end = min(end, self.info.size)
        self.buffer.check_usable()
        if start >= end:
            return
        limit = DEFAULT_WAIT_TIMEOUT_S if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        span = chunk_span(max(start, 0), end, self.chunk_size)
        self._scheduler.boost(self, span)
        for index in span:
            with self._scheduler.lock:
                if self.buffer.readable_now(index):
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimeoutError(
                    f"{self.info.uri}: timed out after {limit:g} s waiting for bytes [{start}, {end}): the "
                    "download is stalled or too slow; check the network and the server, or raise the timeout",
                    bucket=self.info.bucket,
                    key=self.info.key,
                    range=(start, end),
                )
            self._scheduler.acquire(self, index, remaining)
            self._scheduler.unpin(self, index, consumed=False)
        self.buffer.check_usable()

    def wait_all(self, timeout_s: float | None = None) -> None:
        """Wait until the whole object is READY and its CRC-64 checked (when the server sent one).

        Args:
            timeout_s: seconds in all (``None``: ``DEFAULT_WAIT_TIMEOUT_S``).

        Raises:
            Same as :meth:`wait`; ``IntegrityError`` when the CRC-64 does not match.
        """
        self.wait(0, self.info.size, timeout_s)

    def close(self) -> None:
        """Unregister: cancel the queued chunks and free the memory. Idempotent."""
        self._scheduler.unregister(self)

    def _slice_if_ready(self, start: int, end: int, delimiter: int | None) -> bytes | None:
        # The fast path: everything wanted lies in one READY chunk, copied while holding the lock (so
        # nothing can release it meanwhile). None: take the waiting path.
        if start >= end:
            return None
        index = start // self.chunk_size
        chunk_end = min((index + 1) * self.chunk_size, self.info.size)
        with self._scheduler.lock:
            if not self.buffer.readable_now(index):
                return None
            last = min(end, chunk_end)
            found = -1 if delimiter is None else self.buffer.find_byte(delimiter, start, last)
            if found >= 0:
                last = found + 1
            elif last < end:
                return None  # more than this chunk is wanted
            data = self.buffer.tobytes(start, last)
            self._scheduler.touch(self, index, consumed=last == chunk_end)
        return data

    def _copy_if_ready(self, start: int, end: int, dest: memoryview) -> bool:
        if start >= end:
            return False
        index = start // self.chunk_size
        chunk_end = min((index + 1) * self.chunk_size, self.info.size)
        if end > chunk_end:
            return False
        with self._scheduler.lock:
            if not self.buffer.readable_now(index):
                return False
            self.buffer.copy_into(start, dest[: end - start])
            self._scheduler.touch(self, index, consumed=end == chunk_end)
        return True

    def _pin_span(self, span: range, timeout_s: float) -> None:
        self._scheduler.boost(self, span)
        pinned: list[int] = []
        try:
            for index in span:
                self._scheduler.acquire(self, index, timeout_s)
                pinned.append(index)
        except BaseException:
            for index in pinned:
                self._scheduler.unpin(self, index, consumed=False)
            raise
