"""The prefetch scheduler: worker threads fetching chunks in reader-driven order within a memory budget.

::

    register(info, fetch_into) -> ObjectHandle: a ChunkBuffer + every chunk queued for read-ahead
        │
        v
    priority queue ── DEMAND  (a reader is blocked on this chunk: may exceed the budget, evicting)
        │             BOOST   (a reader asked for a span: front of the queue, within the budget)
        │             HEADER  (chunk 0 of objects registered first_chunk_first, in registration order)
        │             AHEAD   (read-ahead: objects in registration order, chunks in file order or
        │                      in the order given to read_ahead_in_order)
        v
    workers (N threads, lazily per PID) ── fetch_into(start, end, chunk view) -> CRC ── ChunkBuffer
                                                                                          │ notify
    ObjectHandle (object_handle.py): reads wait per chunk, pin, copy <────────────────────┘

Budget: the bytes of FETCHING and READY chunks across all objects stay within ``budget_bytes`` for
read-ahead; when it is full, read-ahead pauses until a reader moves past chunks (those become reclaimable
and are released for the next read-ahead) or a stream is closed. A chunk a reader is blocked on is
always fetched, after releasing the least recently used READY chunks (reclaimable ones first) that no
reader holds, so a reader makes progress even with a budget of one chunk.

Objects registered ``evictable=False`` (a prepared directory's files, which readers map directly, their
memory already set aside by the shared cache) are outside the budget: their chunks are neither counted
in it nor ever released, and their read-ahead never pauses. ``first_chunk_first=True`` queues an
object's chunk 0 ahead of the other chunks of every object, because transformers opens every shard
(reading its header) before it reads any tensor.

A worker's error is stored in the chunk (FAILED) and re-raised, with the original as ``__cause__``, to
each reader of those bytes; other chunks keep going. Every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import threading
import time
import traceback
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from ossmodelconnector.cache.shared_backing import SharedBacking
from ossmodelconnector.config import DEFAULT_PREFETCH_VCPUS, DEFAULT_PREFETCH_WORKERS
from ossmodelconnector.errors import ClosedError
from ossmodelconnector.fetch.chunk_buffer import ChunkState
from ossmodelconnector.fetch.object_handle import ObjectHandle
from ossmodelconnector.objects import FetchInto, ObjectInfo
from ossmodelconnector.ranges import DEFAULT_CHUNK_SIZE

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT_S",
    "DEFAULT_CONNECTIONS",
    "DEFAULT_READ_AHEAD_DELAY_S",
    "FetchInto",
    "ObjectHandle",
    "PrefetchScheduler",
]

log = logging.getLogger(__name__)

DEFAULT_CONNECTIONS = DEFAULT_PREFETCH_VCPUS * DEFAULT_PREFETCH_WORKERS
"""Worker threads, hence concurrent ranged GETs, per scheduler (``prefetch.vcpus`` x ``prefetch.workers``)."""

DEFAULT_CLOSE_TIMEOUT_S = 2.0
"""Seconds ``close()`` waits, in total, for the workers to exit."""

DEFAULT_READ_AHEAD_DELAY_S = 0.005
"""Seconds after ``register`` before a private object's read-ahead starts. A read that follows at once
(``open(uri).readinto(buffer)`` of the whole object) then has its chunks delivered into the reader's
buffer, instead of the first ones being fetched into fresh memory of ours and copied (about 20% of the
throughput). Objects in a shared cache start at once: their bytes must land in the cache anyway."""

_IDLE_WAIT_S = 1.0  # workers re-check their exit conditions at least this often

# Queue tiers, best first.
_DEMAND = 0
_BOOST = 1
_HEADER = 2
_AHEAD = 3

_ChunkKey = tuple[int, int]  # (handle id, chunk index)
# (tier, order, position, handle id, chunk index): position is the chunk index, or its place in a
# read_ahead_in_order() sequence.
_JobKey = tuple[int, int, int, int, int]


class PrefetchScheduler:
    """Fetch the chunks of registered objects with a pool of worker threads, within a memory budget.

    Args:
        connections: worker threads, hence concurrent ``fetch_into`` calls, ``>= 1``.
        budget_bytes: the most bytes held in FETCHING and READY chunks for read-ahead, across all
            objects; ``None`` for no limit. A chunk a reader waits for is fetched even when the budget is
            full (after evicting what can be evicted), so a budget below one chunk disables read-ahead.
        close_timeout_s: seconds :meth:`close` waits in total for the workers to exit.
        read_ahead_delay_s: seconds before a private object's read-ahead starts
            (:data:`DEFAULT_READ_AHEAD_DELAY_S`); 0 starts it at once.

    Raises:
        ValueError: ``connections < 1`` or a negative budget.

    Example:
        >>> with PrefetchScheduler(connections=8, budget_bytes=256 << 20) as scheduler:
        ...     handle = scheduler.register(info, client.make_fetch_into(info), chunk_size=8 << 20)
        ...     data = handle.read_bytes(0, 1024)
    """

    def __init__(
        self,
        connections: int = DEFAULT_CONNECTIONS,
        budget_bytes: int | None = None,
        *,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
        read_ahead_delay_s: float = DEFAULT_READ_AHEAD_DELAY_S,
    ) -> None:
        if connections < 1:
            raise ValueError(f"connections={connections} must be at least 1 (default {DEFAULT_CONNECTIONS})")
        if budget_bytes is not None and budget_bytes < 0:
            raise ValueError(f"budget_bytes={budget_bytes} must be >= 0 bytes, or None for no limit")
        self.connections = connections
        self.budget_bytes = budget_bytes
        self.close_timeout_s = close_timeout_s
        self.read_ahead_delay_s = read_ahead_delay_s
        self._lock = threading.RLock()
        self._deferred: list[tuple[float, ObjectHandle]] = []  # (due, private object): read-ahead to queue
        self._work = threading.Condition(self._lock)
        self._closed = False
        self._pid = os.getpid()
        self._generation = 0  # bumped at fork: a worker of an older generation exits
        self._threads: list[threading.Thread] = []
        self._thread_numbers = 0
        self._starting = False  # a worker was started and has not yet started the next (_ensure_workers)
        self._handles: dict[int, ObjectHandle] = {}
        self._next_id = 0
        self._heap: list[_JobKey] = []
        self._queued: dict[_ChunkKey, _JobKey] = {}
        self._order = 0
        self._ready: OrderedDict[_ChunkKey, None] = OrderedDict()  # READY chunks, least recently used first
        self._reclaimable: set[_ChunkKey] = set()  # READY chunks every reader has moved past
        self._held = 0
        _SCHEDULERS.add(self)

    # --- public --------------------------------------------------------------------------------------

    @property
    def held_bytes(self) -> int:
        """Bytes in FETCHING and READY chunks of all evictable objects, the ones the budget bounds
        (including fetches of closed objects that have not returned yet, whose memory is still in use)."""
        with self._lock:
            return self._held

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def register(
        self,
        info: ObjectInfo,
        fetch_into: FetchInto,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        backing: SharedBacking | None = None,
        evictable: bool = True,
        first_chunk_first: bool = False,
        read_ahead: bool = True,
    ) -> ObjectHandle:
        """Start fetching an object: every chunk is queued for read-ahead after those registered before.

        To queue the headers of several objects before any worker starts on a body, register them all
        while holding :attr:`lock` (workers need it to take a job).

        Args:
            info: the object version (its size, name and CRC-64).
            fetch_into: fetches a byte range of that version into a buffer and returns its CRC-64.
            chunk_size: bytes per chunk, ``>= 1``.
            backing: keep the bytes and chunk states in a shared cache (``SharedCache.backing(i)``),
                published to other processes; None for private memory.
            evictable: False to never release a READY chunk and keep the object out of the budget (for
                files that readers map directly).
            first_chunk_first: queue chunk 0 ahead of the other chunks of every object (headers first).
            read_ahead: False to queue no chunk but that first one: the caller queues them
                (:meth:`queue_read_ahead`), and reads and boosts fetch the others.

        Returns:
            The handle to read through; close it (or the stream that owns it) to free the memory.

        Raises:
            ClosedError: the scheduler (or the backing's cache) is closed.
            ValueError: a chunk size below 1, or a backing laid out for another size or chunk size.
        """
        with self._lock:
            self._check_open(info.uri)
            handle = ObjectHandle(
                self, self._next_id, info, fetch_into, chunk_size, backing=backing, evictable=evictable
            )
            self._next_id += 1
            self._handles[handle.id] = handle
            if read_ahead and backing is None and not first_chunk_first and self.read_ahead_delay_s > 0:
                self._deferred.append((time.monotonic() + self.read_ahead_delay_s, handle))
            else:
                for index in range(handle.buffer.count):
                    if first_chunk_first and index == 0:
                        self._queue(handle, index, _HEADER, start=False)
                    elif read_ahead:
                        self._queue(handle, index, _AHEAD, start=False)
            if handle.buffer.count:
                self._ensure_workers()
                self._work.notify_all()
            log.debug("registered %s: %d bytes in %d chunks", info.uri, info.size, handle.buffer.count)
            return handle

    def unregister(self, handle: ObjectHandle) -> None:
        """Cancel an object's queued chunks and free its memory; its readers get ``ClosedError``. Idempotent.

        Args:
            handle: what :meth:`register` returned.
        """
        with self._lock:
            self._unregister_locked(handle, _closed_reason(handle))

    def close(self) -> None:
        """Stop the workers and free every object's memory; waiting readers get ``ClosedError``. Idempotent.

        Waits at most ``close_timeout_s`` for the workers; one stuck inside ``fetch_into`` exits as soon
        as that call returns (it is a daemon thread and touches nothing after the close).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for handle in list(self._handles.values()):
                self._unregister_locked(
                    handle, "the prefetch scheduler was closed while reading; read it with a new connector"
                )
            self._heap.clear()
            self._queued.clear()
            self._work.notify_all()
            threads, self._threads = self._threads, []
        deadline = time.monotonic() + self.close_timeout_s
        current = threading.current_thread()
        for thread in threads:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in threads if thread.is_alive() and thread is not current]
        if stuck:
            log.warning(
                "prefetch scheduler closed with %d worker(s) still inside fetch_into (%s); they exit when "
                "their request returns or times out",
                len(stuck),
                ", ".join(stuck),
            )

    def __enter__(self) -> PrefetchScheduler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the ChunkScheduler protocol, used by ObjectHandle ------------------------------------------

    @property
    def lock(self) -> threading.RLock:
        """The one lock over this scheduler's bookkeeping and every registered buffer."""
        return self._lock

    def boost(self, handle: ObjectHandle, span: Iterable[int]) -> None:
        """Queue the EMPTY chunks of ``span`` ahead of read-ahead (still within the budget), and those that
        failed for lack of room (fetched again).

        Args:
            handle: the object.
            span: chunk indexes a read is about to wait for, in file order.
        """
        with self._lock:
            if self._closed or handle.closed:
                return
            order = self._next_order()
            for index in span:
                state = handle.buffer.state(index)
                # A chunk that found no room to be stored is asked for again: retried (chunk_errors.py).
                if state == ChunkState.EMPTY or (
                    state == ChunkState.FAILED and handle.buffer.retry_if_out_of_room(index)
                ):
                    self._queue(handle, index, _BOOST, order)

    def cancel_queued(self, handle: ObjectHandle) -> None:
        """Drop the object's chunks that wait in the queue (read-ahead or boosted; a later read demands
        them again). Chunks already FETCHING finish.

        Args:
            handle: the object.
        """
        with self._lock:
            for index in range(handle.buffer.count):
                # Its heap entry stays behind, stale: _next_job skips entries no longer in _queued.
                self._queued.pop((handle.id, index), None)
            # And a private object's read-ahead not yet queued (read_ahead_delay_s): it would come back.
            self._deferred = [(due, other) for due, other in self._deferred if other is not handle]

    def acquire(self, handle: ObjectHandle, index: int, timeout_s: float) -> None:
        """Wait until chunk ``index`` is READY, demanding it if EMPTY, and pin it; :meth:`unpin` it after.

        Args:
            handle: the object.
            index: the chunk.
            timeout_s: seconds to wait.

        Raises:
            RequestTimeoutError: not READY within ``timeout_s``.
            ClosedError: the object or the scheduler was closed.
            IntegrityError: the object's CRC-64 does not match.
            ConnectorError: the chunk's fetch failed (the stored error's type, with it as the cause).
        """
        with self._lock:
            self._check_open(handle.info.uri)
            # Pinned while still waiting, so that once READY no other demand can evict it before we copy.
            handle.buffer.pin(index)
        try:
            handle.buffer.wait_ready(index, timeout_s, on_empty=lambda i: self.demand(handle, i))
        except BaseException:
            handle.buffer.unpin(index)
            raise
        with self._lock:
            self.touch(handle, index, consumed=False)

    def unpin(self, handle: ObjectHandle, index: int, *, consumed: bool) -> None:
        """Undo :meth:`acquire`.

        Args:
            handle: the object.
            index: the chunk.
            consumed: the reader moved past the chunk's end, so it may be released for read-ahead.
        """
        with self._lock:
            handle.buffer.unpin(index)
            if consumed:
                self.touch(handle, index, consumed=True)

    def touch(self, handle: ObjectHandle, index: int, *, consumed: bool) -> None:
        """Record a read of a READY chunk (caller holds :attr:`lock`): most recently used now.

        Args:
            handle: the object.
            index: the chunk.
            consumed: the reader moved past the chunk's end, so it may be released for read-ahead.
        """
        key = (handle.id, index)
        if key not in self._ready:
            return
        self._ready.move_to_end(key)
        if not consumed:
            self._reclaimable.discard(key)
        elif not handle.buffer.pinned(index):
            self._reclaimable.add(key)
            if self._heap and self.budget_bytes is not None:
                self._work.notify()  # read-ahead may be paused for exactly this room

    def read_ahead_in_order(self, chunks: Sequence[tuple[ObjectHandle, int]]) -> None:
        """Queue the read-ahead of registered objects in this order instead of file order.

        For the order a framework will read them in (``read_order.chunk_order``). Chunks already in
        flight, READY, or queued ahead of read-ahead (headers, boosts, demands) keep their place; the
        sequence as a whole keeps the place of its first-registered object among other objects.

        Args:
            chunks: ``(handle, chunk index)`` pairs, best first.
        """
        with self._lock:
            if not chunks:
                return
            group = min(handle.id for handle, _ in chunks)
            ordered = {handle.id for handle, _ in chunks}
            undeferred = {h.id for _, h in self._deferred if h.id in ordered}
            self._deferred = [(due, h) for due, h in self._deferred if h.id not in ordered]
            for position, (handle, index) in enumerate(chunks):
                chunk_key = (handle.id, index)
                current = self._queued.get(chunk_key)
                deferred = current is None and handle.id in undeferred
                if deferred and not handle.buffer.never_fetched(index):
                    continue
                if not deferred and (current is None or current[0] < _AHEAD):
                    continue
                job = (_AHEAD, group, position, handle.id, index)
                heapq.heappush(self._heap, job)
                self._queued[chunk_key] = job
            self._work.notify_all()

    def queue_read_ahead(self, chunks: Sequence[tuple[ObjectHandle, int]]) -> None:
        """Queue EMPTY chunks for read-ahead, in this order, after the read-ahead queued before them (for
        objects registered with ``read_ahead=False``). Chunks queued already keep their place.

        Args:
            chunks: ``(handle, chunk index)`` pairs.
        """
        with self._lock:
            if self._closed:
                return
            for handle, index in chunks:
                if not handle.closed and handle.buffer.state(index) == ChunkState.EMPTY:
                    self._queue(handle, index, _AHEAD, self._next_order(), start=False)
            self._ensure_workers()
            self._work.notify_all()

    def fits_at_once(self, length: int) -> bool:
        """Whether one read may hold ``length`` bytes at once within the budget."""
        return self.budget_bytes is None or length <= self.budget_bytes

    # --- queue and budget (lock held) ----------------------------------------------------------------

    def _check_open(self, name: str) -> None:
        if self._closed:
            raise ClosedError(f"{name}: the prefetch scheduler is closed; use a new connector to read it")

    def _next_order(self) -> int:
        self._order += 1
        return self._order

    def _queue(
        self, handle: ObjectHandle, index: int, tier: int, order: int | None = None, *, start: bool = True
    ) -> None:
        chunk_key = (handle.id, index)
        current = self._queued.get(chunk_key)
        if current is not None and current[0] <= tier:
            return
        if order is None:
            order = handle.id if tier in (_AHEAD, _HEADER) else self._next_order()
        job = (tier, order, index, handle.id, index)
        heapq.heappush(self._heap, job)
        self._queued[chunk_key] = job
        if start:
            self._ensure_workers()
            self._work.notify()

    def demand(self, handle: ObjectHandle, index: int) -> None:
        """Queue EMPTY chunk ``index`` ahead of everything, outside the budget (caller holds :attr:`lock`).

        Raises:
            ClosedError: the scheduler is closed.
        """
        self._check_open(handle.info.uri)
        if not handle.closed:
            self._queue(handle, index, _DEMAND)

    def _release_deferred(self) -> float | None:
        """Queue the read-ahead of deferred objects now due; returns seconds until the next is due."""
        now = time.monotonic()
        waiting = []
        for due, handle in self._deferred:
            if handle.closed:
                continue
            if due > now:
                waiting.append((due, handle))
                continue
            for index in range(handle.buffer.count):
                # Not what a read already took: chunks delivered to a reader, in flight, or READY.
                if handle.buffer.state(index) == ChunkState.EMPTY and handle.buffer.never_fetched(index):
                    self._queue(handle, index, _AHEAD, start=False)
        self._deferred = waiting
        return min(due for due, _ in waiting) - now if waiting else None

    def _next_job(self) -> tuple[ObjectHandle, int] | None:
        if self._deferred:
            self._release_deferred()
        while self._heap:
            job = self._heap[0]
            tier, _, _, handle_id, index = job
            handle = self._handles.get(handle_id)
            chunk_key = (handle_id, index)
            if (
                handle is None
                or self._queued.get(chunk_key) != job
                or handle.buffer.state(index) != ChunkState.EMPTY
            ):
                heapq.heappop(self._heap)
                if self._queued.get(chunk_key) == job:
                    del self._queued[chunk_key]
                continue
            if (
                handle.evictable
                and not handle.buffer.is_delivery(index)
                and not self._make_room(len(handle.buffer.chunk(index)), exempt=tier == _DEMAND)
            ):
                return None  # read-ahead paused until a reader frees room or demands a chunk
            heapq.heappop(self._heap)
            del self._queued[chunk_key]
            return handle, index
        return None

    def _make_room(self, length: int, *, exempt: bool) -> bool:
        budget = self.budget_bytes
        if budget is None or self._held + length <= budget:
            return True
        self._evict(self._held + length - budget, reclaimable_only=True)
        if self._held + length <= budget:
            return True
        if exempt:
            self._evict(self._held + length - budget, reclaimable_only=False)
        return exempt

    def _evict(self, need: int, *, reclaimable_only: bool) -> None:
        victims = []
        freed = 0
        for chunk_key in self._ready:
            if freed >= need:
                break
            if reclaimable_only and chunk_key not in self._reclaimable:
                continue
            handle_id, index = chunk_key
            handle = self._handles[handle_id]
            if handle.buffer.pinned(index):
                continue
            victims.append((handle, index))
            freed += len(handle.buffer.chunk(index))
        for handle, index in victims:
            self._release_ready(handle, index)
        if victims:
            log.debug("evicted %d chunk(s), %d bytes, to stay within the budget", len(victims), freed)

    def _release_ready(self, handle: ObjectHandle, index: int) -> None:
        chunk_key = (handle.id, index)
        handle.buffer.release(index)
        self._held -= len(handle.buffer.chunk(index))
        del self._ready[chunk_key]
        self._reclaimable.discard(chunk_key)

    def _unregister_locked(self, handle: ObjectHandle, reason: str) -> None:
        if handle.closed:
            return
        handle.closed = True
        self._handles.pop(handle.id, None)
        buffer = handle.buffer
        for index in range(buffer.count):
            chunk_key = (handle.id, index)
            self._queued.pop(chunk_key, None)
            self._reclaimable.discard(chunk_key)
            if chunk_key in self._ready:
                del self._ready[chunk_key]
                self._held -= len(buffer.chunk(index))
        if len(self._heap) > 2 * len(self._queued) + 64:
            # Most entries are stale now; rebuilding keeps the queue proportional to the live work.
            self._heap = list(self._queued.values())
            heapq.heapify(self._heap)
        # FETCHING chunks stay counted until their worker returns: it is still writing into the memory.
        buffer.close(reason)
        self._work.notify_all()
        log.debug("unregistered %s (%s)", handle.info.uri, reason)

    # --- workers -------------------------------------------------------------------------------------

    def _ensure_workers(self) -> None:
        # One worker at a time, each started by the one before it (in _worker): Thread.start() waits for
        # the new thread to run, one GIL hand-off each way, and behind a thread that computes each costs
        # up to the switch interval (5 ms). Starting all of them here put ``connections`` of those
        # round trips before the first request; a chain puts one, and the rest overlap the transfer.
        if self._closed or self._starting:
            return
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        if len(self._threads) >= self.connections:
            return
        self._thread_numbers += 1
        thread = threading.Thread(
            target=self._worker,
            args=(self._generation,),
            name=f"ossmodelconnector-prefetch-{self._thread_numbers}",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)
        self._starting = True

    def _worker(self, generation: int) -> None:
        with self._lock:
            if self._generation == generation:
                self._starting = False
                self._ensure_workers()  # the next one in the chain
        while True:
            with self._lock:
                job = None
                while job is None:
                    if self._closed or self._generation != generation:
                        return
                    job = self._next_job()
                    if job is None:
                        due = self._release_deferred() if self._deferred else None
                        self._work.wait(_IDLE_WAIT_S if due is None else min(_IDLE_WAIT_S, due))
                handle, index = job
                length = handle.buffer.begin_fetch(index)
                if not handle.evictable:
                    length = 0  # outside the budget: never counted in _held
                self._held += length
                chunk = handle.buffer.chunk(index)
                dest = handle.buffer.fetch_view(index)
            try:
                crc = handle.fetch_into(chunk.start, chunk.end, dest)
            except BaseException as exc:
                # The traceback's frames hold ``dest``; clearing them lets the mapping be unmapped.
                traceback.clear_frames(exc.__traceback__)
                _release_view(dest)
                log.debug("fetching %s [%d, %d) failed: %r", handle.info.uri, chunk.start, chunk.end, exc)
                with self._lock:
                    if self._generation == generation:
                        handle.buffer.fail(index, exc)
                        self._held -= length
                        self._work.notify_all()
                if not isinstance(exc, Exception):
                    raise
                continue
            _release_view(dest)
            with self._lock:
                if self._generation != generation:
                    return
                if handle.buffer.complete(index, crc):
                    if handle.evictable:
                        self._ready[(handle.id, index)] = None
                else:
                    self._held -= length
                    self._work.notify_all()

    def _reset_after_fork(self) -> None:
        # Only the forking thread exists in the child: the workers are gone, their chunks never finish.
        self._lock = threading.RLock()
        self._work = threading.Condition(self._lock)
        self._pid = os.getpid()
        self._generation += 1
        self._threads = []
        self._starting = False
        for handle in self._handles.values():
            handle.buffer.rebind_lock(self._lock)
            handle.buffer.detach_after_fork()  # the shared state table is the parent's to change
            for index in range(handle.buffer.count):
                if handle.buffer.state(index) == ChunkState.FETCHING:
                    if handle.evictable:
                        self._held -= len(handle.buffer.chunk(index))
                    handle.buffer.cancel(index)
                    # Queued without starting threads: the child starts its own on its first read.
                    self._queue(handle, index, _AHEAD, start=False)


def _closed_reason(handle: ObjectHandle) -> str:
    """What its readers are told: a stream's object, or a prepared directory's file (in a shared cache)."""
    if handle.buffer.shared:
        return "its prepared directory was closed (by this process); prepare the directory again to read it"
    return "the stream was closed; open the object again to read it"


def _release_view(view: memoryview) -> None:
    # fetch_into may have kept an export of it; then it goes when that does.
    with contextlib.suppress(BufferError):
        view.release()


# Every live scheduler, so that fork can leave each one consistent: the locks are held across fork(),
# and the child gets fresh locks and no workers.
_SCHEDULERS: weakref.WeakSet[PrefetchScheduler] = weakref.WeakSet()
_FORKING: list[PrefetchScheduler] = []


def _before_fork() -> None:
    _FORKING[:] = list(_SCHEDULERS)
    for scheduler in _FORKING:
        scheduler._lock.acquire()


def _after_fork_in_parent() -> None:
    for scheduler in reversed(_FORKING):
        scheduler._lock.release()
    _FORKING.clear()


def _after_fork_in_child() -> None:
    for scheduler in _FORKING:
        scheduler._reset_after_fork()  # closed ones too: the child must not inherit a held lock
    _FORKING.clear()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
