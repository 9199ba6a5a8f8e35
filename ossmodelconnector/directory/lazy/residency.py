"""Lazy files of prepared directories: fetched when first opened, kept within ``memoryLimitMB`` by evicting
whole files (least recently used first), released after ``gc.idleSeconds`` without a reader.

::

    prepare_directory(lazy=True): one LazyFile per large file, in the registry (path -> LazyFile)
    hooks: open / safe_open / load_file / torch.load, per file:
        add_reader() ... remove_reader()   while a file object / safe_open handle is open, a load runs
        wait(range)      (safe_open, load_file, torch.load, any other open): a model load: start() the
                         whole file: make room (evict idle files, LRU), every chunk queued in file order
        wait_read(range, sequential)  (open() streams): the whole file once the stream has read
                         DEFAULT_SEQUENTIAL_BYTES in order (hashing, a load); before that only the
                         chunks read are fetched (the web UI's listing peeks at every checkpoint)
    evict(file): cancel its queued chunks, release its READY chunks (MADV_REMOVE: the tmpfs pages go back
                 to the system, the shared states go back to EMPTY and are published); entry and size stay
    collect(idle_s): evict every file not in use and not read for idle_s (the IdleCollector thread of
                 idle_gc.py, and connector.gc())

A file is *in use*, and never evicted, while its reader count is above zero (open streams, live
``safe_open`` handles, a ``load_file``/``torch.load`` in progress) or while this process holds a mapping
of its data segment other than the cache's own: ``safe_open``/``load_file`` hand out tensors that map the
file with no copy and outlive the handle that made them; punching the pages out would turn those
tensors into zeros. The cache's own mapping is the only writable shared one (the hooks refuse to open a
cache file for writing), so any other mapping of the segment in ``/proc/self/maps`` is a reader's.

When every other file is in use, opening one more exceeds the budget (a WARNING says so) rather than
failing the load or evicting bytes under a reader.

Why a plain ``open()`` does not start the whole file at once: the web UI opens every checkpoint when it
lists them (the legacy short hash reads 64 KiB at offset 1 MiB; the safetensors metadata is read from
the header), and fetching every file whole for that would churn the budget. A load (``safe_open``,
``load_file``, ``torch.load``) or a sequential read (the sha256 in 1 MiB blocks) starts it whole.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ossmodelconnector.cache.chunk_state import ChunkState
from ossmodelconnector.directory.progress import (
    STATE_CACHED,
    STATE_EVICTED,
    STATE_FAILED,
    STATE_FETCHING,
    STATE_NOT_FETCHED,
)
from ossmodelconnector.errors import ClosedError, IntegrityError

if TYPE_CHECKING:
    from ossmodelconnector.fetch.object_handle import ObjectHandle
    from ossmodelconnector.fetch.prefetch import PrefetchScheduler
    from ossmodelconnector.objects import ObjectInfo

__all__ = [
    "DEFAULT_SEQUENTIAL_BYTES",
    "LazyFile",
    "Release",
    "Residency",
    "in_use_by_readers",
]

log = logging.getLogger(__name__)

_MAPS = "/proc/self/maps"
_FDS = "/proc/self/fd"
_FDINFO = "/proc/self/fdinfo"

DEFAULT_SEQUENTIAL_BYTES = 4 << 20
"""An ``open()`` stream that has read this many bytes in order (or half the file, if less) is reading
the file through: its whole prefetch starts. Smaller peeks fetch only the chunks they read."""


@dataclass(frozen=True)
class Release:
    """One file released by an eviction or a garbage collection.

    Args:
        path: the entry in the prepared directory.
        nbytes: bytes of memory given back.
        reason: why (``"least recently used, to make room for ..."``, ``"idle for 12 s ..."``).
    """

    path: str
    nbytes: int
    reason: str


class LazyFile:
    """One large file of a lazily prepared directory; the registry's waitable for its entry.

    Made by ``prepare_directory(lazy=True)``; every method is thread-safe.

    Args:
        residency: the budget it is kept within.
        path: its entry in the prepared directory.
        data_path: its data segment (what ``/proc/self/maps`` names for a mapping of it).
        info: the object version.
        start: registers the object with the prefetch scheduler (every chunk queued) and returns its
            handle; called once, at the first open or wait.
    """

    def __init__(
        self,
        residency: Residency,
        path: str,
        data_path: str,
        info: ObjectInfo,
        start: Callable[[], ObjectHandle],
    ) -> None:
        self.path = path
        self.data_path = data_path
        self.info = info
        self._residency = residency
        self._start = start
        self.handle: ObjectHandle | None = None
        self.resident = False
        """Started and not evicted since: its chunks are fetched or on their way."""
        self.readers = 0
        self.evictions = 0
        self.last_used = time.monotonic()
        self.last_used_at: float | None = None
        """``time.time()`` of the last open, read or close (None before the first)."""
        self.closed = False

    @property
    def size(self) -> int:
        """The object's size in bytes."""
        return self.info.size

    @property
    def held_bytes(self) -> int:
        """Bytes of its FETCHING and READY chunks: the memory it holds now."""
        handle = self.handle
        return 0 if handle is None else handle.buffer.held_bytes

    def wait(self, start: int, end: int, timeout_s: float | None = None) -> None:
        """Fetch the file if it is not (or no longer) resident, then wait until ``[start, end)`` is READY.

        Raises:
            RequestTimeoutError: not READY within ``timeout_s``.
            IntegrityError: the object's CRC-64 does not match (also after a fetch following an eviction).
            ConnectorError: fetching failed (the worker's error is the cause).
            ClosedError: the directory was closed.
        """
        handle = self._residency.use(self, whole=True, need=self.size)
        handle.wait(start, end, timeout_s)

    def wait_read(self, start: int, end: int, timeout_s: float | None = None, *, sequential: int) -> None:
        """Wait for ``[start, end)`` for an ``open()`` stream that has read ``sequential`` bytes in order.

        A stream reading the file through (``sequential`` reaches :data:`DEFAULT_SEQUENTIAL_BYTES`, or half
        the file) starts the whole file's prefetch; a peek fetches only the chunks it reads.

        Raises:
            Same as :meth:`wait`.
        """
        whole = sequential >= min(DEFAULT_SEQUENTIAL_BYTES, self.size // 2)
        handle = self._residency.use(self, whole=whole, need=self.size if whole else end - start)
        handle.wait(start, end, timeout_s)

    def wait_all(self, timeout_s: float | None = None) -> None:
        """Fetch the file if needed and wait until all of it is READY and verified.

        Raises:
            Same as :meth:`wait`.
        """
        self.wait(0, self.size, timeout_s)

    def add_reader(self) -> None:
        """A reader opened the file: it is in use (never evicted) until :meth:`remove_reader`.

        Raises:
            ClosedError: the directory was closed.
        """
        self._residency.add_reader(self)

    def remove_reader(self) -> None:
        """Undo one :meth:`add_reader` (the file object or handle closed, or the load returned)."""
        self._residency.remove_reader(self)

    def status(self) -> dict[str, Any]:
        """``{"size", "state", "percent", "readers", "evictions", "last_used_at"}``; ``state`` one of
        ``"not fetched"``, ``"fetching"``, ``"cached"``, ``"evicted"``, ``"failed"``."""
        return self._residency.status(self)

    def close(self) -> None:
        """Unregister from the scheduler and the budget (the directory is closing). Idempotent."""
        self._residency.remove(self)

    def __repr__(self) -> str:
        return (
            f"<LazyFile {self.path} ({self.size} bytes, {'resident' if self.resident else 'not resident'})>"
        )


class Residency:
    """The memory budget of lazy files: which are resident, who reads them, which to evict.

    One per connector (``memoryLimitMB`` is a connector setting), shared by its lazy directories.

    Args:
        scheduler: the prefetch scheduler the files are fetched by.
        limit_bytes: the most bytes the lazy files may hold at once; None for no limit (then only the
            garbage collection releases them).
    """

    def __init__(self, scheduler: PrefetchScheduler, limit_bytes: int | None) -> None:
        if limit_bytes is not None and limit_bytes < 0:
            raise ValueError(f"limit_bytes={limit_bytes} must be >= 0, or None for no limit")
        self.scheduler = scheduler
        self.limit_bytes = limit_bytes
        self._lock = threading.RLock()
        self._files: dict[str, LazyFile] = {}

    # --- membership ---------------------------------------------------------------------------------

    def add(self, file: LazyFile) -> None:
        """Put a file under this budget (nothing is fetched)."""
        with self._lock:
            self._files[file.path] = file

    def remove(self, file: LazyFile) -> None:
        """Take a file out (its directory closes): its handle is closed, its memory freed. Idempotent."""
        with self._lock:
            file.closed = True
            if self._files.get(file.path) is file:
                del self._files[file.path]
            handle, file.handle, file.resident = file.handle, None, False
        if handle is not None:
            handle.close()

    def files(self) -> list[LazyFile]:
        """The files under this budget."""
        with self._lock:
            return list(self._files.values())

    def find(self, path: str) -> LazyFile | None:
        """The file whose entry is ``path`` (absolute), or None."""
        with self._lock:
            return self._files.get(path)

    @property
    def held_bytes(self) -> int:
        """Bytes the lazy files hold now (FETCHING and READY chunks)."""
        with self._lock:
            return sum(file.held_bytes for file in self._files.values())

    # --- readers ------------------------------------------------------------------------------------

    def use(self, file: LazyFile, *, whole: bool, need: int) -> ObjectHandle:
        """Record a read of ``file``; returns its handle, registered with the scheduler.

        Args:
            file: the file.
            whole: fetch all of it (a load): every chunk queued, ahead of older read-ahead. False: only
                what the read waits for is fetched (the wait demands it).
            need: bytes about to be held, to make room for within the budget.

        Raises:
            ClosedError: the directory was closed.
        """
        with self._lock:
            _check_open(file)
            self._touch(file)
            if whole and not file.resident:
                self._start(file)
            elif not file.resident:
                self._make_room(file, need)
                if file.handle is None:
                    with self.scheduler.lock:  # no worker takes a chunk before the queue is emptied
                        file.handle = file._start()
                        self.scheduler.cancel_queued(file.handle)
            assert file.handle is not None
            return file.handle

    def add_reader(self, file: LazyFile) -> None:
        """See :meth:`LazyFile.add_reader`."""
        with self._lock:
            _check_open(file)
            self._touch(file)
            file.readers += 1

    def remove_reader(self, file: LazyFile) -> None:
        """See :meth:`LazyFile.remove_reader`."""
        with self._lock:
            if file.readers > 0:
                file.readers -= 1
            self._touch(file)

    # --- eviction -----------------------------------------------------------------------------------

    def collect(self, idle_s: float, *, why: str, files: Iterable[LazyFile] | None = None) -> list[Release]:
        """Evict every file (of ``files``, default all) not in use and not read for ``idle_s`` seconds.

        Args:
            idle_s: seconds since the last read, ``>= 0`` (0: every file not in use).
            why: what asked (``"gc.idleSeconds=600"``, ``"connector.gc()"``), for the log.
            files: limit the collection to these (a directory's own files).

        Returns:
            What was released.
        """
        now = time.monotonic()
        with self._lock:
            candidates = [
                file
                for file in (self._files.values() if files is None else files)
                if not file.closed
                and file.held_bytes
                and file.readers == 0
                and now - file.last_used >= idle_s
            ]
            in_use = in_use_by_readers(file.data_path for file in candidates)
            released = []
            for file in sorted(candidates, key=lambda file: file.last_used):
                if file.data_path in in_use:
                    log.debug("%s: not released: a reader still maps it or holds it open", file.path)
                    continue
                idle = now - file.last_used
                released.append(self._evict(file, f"not read for {idle:.1f} s ({why})"))
            return released

    def status(self, file: LazyFile) -> dict[str, Any]:
        """See :meth:`LazyFile.status`."""
        with self._lock:
            handle = file.handle
            ready = 0
            state = STATE_NOT_FETCHED
            if handle is not None:
                buffer = handle.buffer
                states = buffer.states()
                ready = sum(
                    len(buffer.chunk(i)) for i, value in enumerate(states) if value == ChunkState.READY
                )
                if _failed(handle, states):
                    state = STATE_FAILED
                elif ready == file.size:
                    state = STATE_CACHED
                elif file.resident:
                    state = STATE_FETCHING
                elif file.evictions:
                    state = STATE_EVICTED
                # else only peeked at (chunks read, the whole file never asked for): still not fetched
            elif file.evictions:
                state = STATE_EVICTED
            return {
                "size": file.size,
                "state": state,
                "percent": round(100.0 * ready / file.size, 2) if file.size else 100.0,
                "held_bytes": file.held_bytes,
                "readers": file.readers,
                "evictions": file.evictions,
                "last_used_at": file.last_used_at,
            }

    # --- internals (lock held) ----------------------------------------------------------------------

    def _touch(self, file: LazyFile) -> None:
        file.last_used = time.monotonic()
        file.last_used_at = time.time()

    def _start(self, file: LazyFile) -> None:
        self._make_room(file, file.size - file.held_bytes)
        if file.handle is None:
            file.handle = file._start()
        handle = file.handle
        # Every chunk not yet there, in file order, ahead of the read-ahead of files opened earlier:
        # the model being switched to comes first.
        self.scheduler.boost(handle, range(handle.buffer.count))
        file.resident = True
        log.debug("%s: fetching (%d bytes, %d held by lazy files)", file.path, file.size, self.held_bytes)

    def _make_room(self, wanted: LazyFile, need: int) -> None:
        limit = self.limit_bytes
        if limit is None:
            return
        held = sum(file.held_bytes for file in self._files.values())
        if held + need <= limit:
            return
        candidates = [
            file
            for file in self._files.values()
            if file is not wanted and file.held_bytes and file.readers == 0 and not file.closed
        ]
        in_use = in_use_by_readers(file.data_path for file in candidates)
        for file in sorted(candidates, key=lambda file: file.last_used):
            if held + need <= limit:
                return
            if file.data_path in in_use:
                continue
            released = self._evict(
                file,
                f"least recently used, to make room for {wanted.path} within memoryLimitMB ({limit} bytes)",
            )
            held -= released.nbytes
        if held + need > limit:
            log.warning(
                "%s: fetching its %d bytes exceeds memoryLimitMB (%d bytes; %d held by files in use or "
                "still mapped by readers): close the files or models no longer needed, or raise "
                "memoryLimitMB",
                wanted.path,
                need,
                limit,
                held,
            )

    def _evict(self, file: LazyFile, reason: str) -> Release:
        handle = file.handle
        freed = 0
        if handle is not None:
            buffer = handle.buffer
            with self.scheduler.lock:
                before = buffer.held_bytes
                self.scheduler.cancel_queued(handle)
                for index, value in enumerate(buffer.states()):
                    if value == ChunkState.READY and not buffer.pinned(index):
                        buffer.release(index)
                freed = before - buffer.held_bytes
        if file.resident:  # a file only peeked at was never fetched: it stays "not fetched"
            file.evictions += 1
        file.resident = False
        log.info("released %s (%d bytes): %s", file.path, freed, reason)
        return Release(file.path, freed, reason)


def _check_open(file: LazyFile) -> None:
    if file.closed:
        raise ClosedError(f"{file.path}: its prepared directory is closed; prepare it again to read it")


def _failed(handle: ObjectHandle, states: Sequence[ChunkState]) -> bool:
    if ChunkState.FAILED in states:
        return True
    try:
        handle.buffer.check_usable()
    except IntegrityError:
        return True
    except ClosedError:
        return False
    return False


def in_use_by_readers(paths: Iterable[str]) -> set[str]:
    """Those of ``paths`` (data segments) that a reader in this process maps or holds open.

    Files are compared by what they are (device and inode), never by how their path is spelled: a
    ``cacheDir`` or ``model_dir`` reached through a symlink names the segment differently from what the
    kernel lists. The cache maps each data segment once, writable and shared (``rw-s``), holds it open
    with a ``flock`` (``segment_hold.py``) and writes chunks through write-only descriptors; any other
    mapping (``safe_open``'s, an ``mmap``, tensors made from them) or read-only descriptor without a lock
    (``os.open`` + ``os.pread``) is a reader's.

    Args:
        paths: data segment paths (any spelling).

    Returns:
        The subset of ``paths`` a reader uses.
    """
    wanted: dict[tuple[int, int], str] = {}
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            continue  # gone: nothing of it can be in use
        wanted[(info.st_dev, info.st_ino)] = path
    if not wanted:
        return set()
    try:
        return _mapped(wanted) | _open(wanted)
    except OSError:
        # No /proc: nothing tells whether a reader uses the file, so treat every one as in use.
        return set(wanted.values())


def _mapped(wanted: dict[tuple[int, int], str]) -> set[str]:
    found: set[str] = set()
    with open(_MAPS, encoding="utf-8", errors="replace") as maps:
        for line in maps:
            # address perms offset dev(major:minor, hex) inode [path]
            fields = line.split(maxsplit=5)
            if len(fields) < 5 or fields[4] == "0":
                continue
            major, _, minor = fields[3].partition(":")
            identity = (os.makedev(int(major, 16), int(minor, 16)), int(fields[4]))
            if identity in wanted and not (fields[1][1] == "w" and fields[1][3] == "s"):
                found.add(wanted[identity])
    return found


def _open(wanted: dict[tuple[int, int], str]) -> set[str]:
    found: set[str] = set()
    for name in os.listdir(_FDS):
        try:
            info = os.stat(f"{_FDS}/{name}")
        except OSError:
            continue  # closed meanwhile, or the listing's own descriptor
        path = wanted.get((info.st_dev, info.st_ino))
        if path is None or path in found:
            continue
        try:
            with open(f"{_FDINFO}/{name}", encoding="ascii", errors="replace") as fdinfo:
                text = fdinfo.read()
        except OSError:
            continue
        flags = next((line.split()[1] for line in text.splitlines() if line.startswith("flags:")), "0")
        if int(flags, 8) & os.O_ACCMODE == os.O_RDONLY and "FLOCK" not in text:
            found.add(path)
    return found
