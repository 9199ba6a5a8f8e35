"""A prepared directory seen from another process: the state table attached, waits on its futex.

::

    AttachedCache.from_manifest(model_dir/.ossmodelconnector/manifest.json)   (or .attach(table name))
        .file(i) -> AttachedFile: wait(start, end) / wait_all() on the shared chunk states
        .data(i) -> read-only view of file i's data segment

A wait reads the generation, looks at the state bytes it needs, and futex-waits on the generation when
they are not READY yet (``docs/cache-layout.md``, section 3); every ``ownerCheckSeconds`` it also checks
that the owner still lives, so a dead owner is an :class:`OwnerDiedError`, not a hang (a closed one is a
:class:`ClosedError` at once: its close wakes every waiter), and a stopped one (SIGSTOP, a debugger) is
named in a WARNING and in the timeout's message. When the table is mapped
writable, a wait on chunks not yet in flight also posts them to the table's demand ring, so the owner
fetches them next (what a wait in the owner's own process does through the scheduler). The reader hooks
of other processes (vLLM tensor-parallel workers) wait through :class:`AttachedFile` (``cache/attaching.py``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

from ossmodelconnector import errors
from ossmodelconnector.cache.chunk_state import ChunkState
from ossmodelconnector.cache.manifest import read_manifest
from ossmodelconnector.cache.segments import STATE_DIR, Segment, attach_segment, process_alive, process_state
from ossmodelconnector.cache.state_table import FileStatus, StateTable, TableStatus
from ossmodelconnector.config import DEFAULT_OWNER_CHECK_S, DEFAULT_WAIT_TIMEOUT_S
from ossmodelconnector.errors import (
    ClosedError,
    ConnectorError,
    IntegrityError,
    OwnerDiedError,
    RequestTimeoutError,
)

__all__ = ["AttachedCache", "AttachedFile"]

log = logging.getLogger(__name__)

_READY = bytes([ChunkState.READY])
_FAILED = bytes([ChunkState.FAILED])
_EMPTY = ChunkState.EMPTY
_MAX_DEMAND_RUNS = 4  # runs of EMPTY chunks posted per wait: the ring holds 16, shared by every reader


class AttachedCache:
    """The state table of a prepared directory, mapped in a reader's process.

    Args:
        table_name: the state table's segment name (``ossmc-s-...``, in ``/dev/shm``).
        writable: map it writable, which lets waits post demand requests to the owner (read-only by
            default: enough to wait).
        data_paths: each file's data file, from the manifest; default ``/dev/shm/<segment name>``.

    Raises:
        FileNotFoundError: no such table (the directory is not prepared, or its owner closed it).
        CacheError: the file is not ours, or not a table of this layout version.
    """

    def __init__(
        self, table_name: str, *, writable: bool = False, data_paths: Sequence[str] | None = None
    ) -> None:
        self._segment = attach_segment(STATE_DIR, table_name, writable=writable)
        self._data: dict[int, Segment] = {}
        try:
            if self._segment.mapping is None:
                raise errors.CacheError(f"{self._segment.path} is empty: not a state table")
            self.table = StateTable(self._segment.mapping, self._segment.path)
        except BaseException:
            self._segment.close()
            raise
        names = [entry.segment_name for entry in self.table.files()]
        self._data_paths = (
            list(data_paths) if data_paths is not None else [os.path.join(STATE_DIR, n) for n in names]
        )

    @classmethod
    def from_manifest(cls, manifest_path: str | os.PathLike[str], *, writable: bool = False) -> AttachedCache:
        """Attach the directory whose manifest is at ``manifest_path`` (see ``manifest.find_manifest``).

        Raises:
            FileNotFoundError: no manifest, or no state table any more.
            CacheError: an invalid manifest or table.
        """
        manifest = read_manifest(manifest_path)
        paths = [""] * len(manifest.files)
        for entry in manifest.files.values():
            if 0 <= entry.index < len(paths):
                paths[entry.index] = entry.data_path
        return cls(manifest.state_table, writable=writable, data_paths=paths)

    def file(
        self,
        index: int,
        *,
        owner_check_s: float = DEFAULT_OWNER_CHECK_S,
        wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
    ) -> AttachedFile:
        """File ``index`` as a :class:`AttachedFile` (``wait``/``wait_all``).

        Args:
            index: the file's index in the table.
            owner_check_s: a waiting reader notices a dead owner within this many seconds.
            wait_timeout_s: the default of ``timeout_s`` for its waits.
        """
        return AttachedFile(self.table, index, owner_check_s=owner_check_s, wait_timeout_s=wait_timeout_s)

    def data(self, index: int) -> memoryview:
        """A read-only view of file ``index``'s data segment; read a range only after ``wait`` for it.

        Raises:
            CacheError: the data file is not ours.
            FileNotFoundError: it was removed (the owner closed the directory).
        """
        segment = self._data.get(index)
        if segment is None:
            path = self._data_paths[index]
            segment = attach_segment(os.path.dirname(path), os.path.basename(path))
            self._data[index] = segment
        if segment.mapping is None:
            return memoryview(b"")
        return memoryview(segment.mapping).toreadonly()

    def close(self) -> None:
        """Unmap the table and the data segments (views still held keep theirs). Idempotent."""
        self.table.release()
        self._segment.close()
        for segment in self._data.values():
            segment.close()
        self._data.clear()

    def __enter__(self) -> AttachedCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AttachedFile:
    """One file of an attached cache, waitable from a process that is not the owner.

    Args:
        table: the attached state table.
        index: the file's index in it.
        owner_check_s: check the owner's liveness at least this often while waiting.
        wait_timeout_s: seconds a wait gives up after when its caller gives no timeout.
    """

    def __init__(
        self,
        table: StateTable,
        index: int,
        *,
        owner_check_s: float = DEFAULT_OWNER_CHECK_S,
        wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
    ) -> None:
        if owner_check_s <= 0:
            raise ValueError(f"owner_check_s={owner_check_s} must be > 0 seconds")
        entry = table.file(index)
        self.table = table
        self.index = index
        self.size = entry.size
        self.name = f"{table.directory}: file {index} ({entry.segment_name})"
        self._owner_check_s = owner_check_s
        self._wait_timeout_s = wait_timeout_s

    def wait(self, start: int, end: int, timeout_s: float | None = None) -> None:
        """Wait until the bytes ``[start, end)`` (clamped to the file) are READY in the data segment.

        Args:
            start: first byte.
            end: one past the last byte.
            timeout_s: seconds in all (default 600).

        Raises:
            RequestTimeoutError: not READY within ``timeout_s``.
            ClosedError: the owner closed the directory.
            OwnerDiedError: the owner died before the bytes arrived.
            ConnectorError: fetching them failed (the owner's error class and message).
        """
        end = min(end, self.size)
        if start >= end:
            self._check_open((start, end))
            return
        chunk_size = self.table.chunk_size
        first, last = start // chunk_size, (end - 1) // chunk_size + 1
        self._wait_until(
            timeout_s,
            (start, end),
            lambda retry: self._chunks_ready(first, last, retry=retry),
            lambda: self._demand(first, last),
        )

    def wait_all(self, timeout_s: float | None = None) -> None:
        """Wait until the whole file is READY and its CRC-64 was checked.

        Raises:
            IntegrityError: the owner found the CRC-64 wrong.
            (and what :meth:`wait` raises)
        """
        count = self.table.file(self.index).chunk_count
        self._wait_until(timeout_s, (0, self.size), self._verified, lambda: self._demand(0, count))

    # --- internals -----------------------------------------------------------------------------------

    def _demand(self, first: int, last: int) -> None:
        """Post the runs of EMPTY chunks in ``[first, last)`` to the owner (a hint; needs writable access),
        and of FAILED ones when they failed for lack of room (the owner fetches those again)."""
        if not self.table.writable:
            return
        states = self.table.states(self.index)[first:last]
        wanted = (_EMPTY, ChunkState.FAILED) if self._failed_for_room() else (_EMPTY,)
        runs: list[tuple[int, int]] = []
        for offset, state in enumerate(states):
            if state not in wanted:
                continue
            if runs and runs[-1][0] + runs[-1][1] == first + offset:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            elif len(runs) == _MAX_DEMAND_RUNS:
                break
            else:
                runs.append((first + offset, 1))
        for run_first, run_count in runs:
            self.table.post_demand(self.index, run_first, run_count)

    def _chunks_ready(self, first: int, last: int, *, retry: bool = False) -> bool:
        """Whether the chunks are READY; raises for a FAILED one, unless ``retry`` (a read's first look)
        and it failed for lack of room: then the demand asks the owner to fetch it again."""
        states = bytes(self.table.states(self.index)[first:last])
        if states.count(_READY) == len(states):
            return True
        if _FAILED in states and not (retry and self.table.writable and self._failed_for_room()):
            self._raise_error()
        return False

    def _failed_for_room(self) -> bool:
        stored = self.table.read_error(self.index)
        return stored is not None and stored[0] == errors.OutOfMemoryError.__name__

    def _verified(self, retry: bool = False) -> bool:
        status = self.table.file_status(self.index)
        if status == FileStatus.VERIFIED:
            return True
        if status == FileStatus.FAILED:
            self._raise_error(IntegrityError)
        # raises for a FAILED chunk
        self._chunks_ready(0, self.table.file(self.index).chunk_count, retry=retry)
        return False

    def _check_open(self, span: tuple[int, int] | None = None) -> None:
        if self.table.released:
            raise ClosedError(
                f"{self.name}: this process stopped reading the prepared directory (its attached directory "
                "or connector was closed); prepare the directory again to read it"
            )
        if self.table.status() == TableStatus.CLOSED:
            wanted = f" before bytes [{span[0]}, {span[1]}) arrived" if span is not None else ""
            raise ClosedError(
                f"{self.name}: its owner, process {self.table.owner_pid}, closed the prepared directory"
                f"{wanted} (its connector or directory was closed, or it exited); prepare the directory "
                "again (this process then owns the download), or keep the owner open while others read"
            )

    def _wait_until(
        self,
        timeout_s: float | None,
        span: tuple[int, int],
        done: Callable[[bool], bool],
        demand: Callable[[], None],
    ) -> None:
        limit = self._wait_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        next_owner_check = 0.0
        first_look = True
        stopped = ""
        while True:
            generation = self.table.generation()  # before looking: a change after this wakes the wait
            self._check_open(span)
            if done(first_look):  # only the first look retries a chunk that found no room
                return
            first_look = False
            now = time.monotonic()
            if now >= next_owner_check:
                demand()  # at the first look, then again now and then: a request is only a hint
                stopped = self._check_owner(span, stopped)
                next_owner_check = now + self._owner_check_s
            remaining = deadline - now
            if remaining <= 0:
                pid = self.table.owner_pid
                why = (
                    f"its owner, process {pid}, is {stopped}: resume it (kill -CONT {pid}), or end it and "
                    "prepare the directory again"
                    if stopped
                    else "the download is stalled or too slow; check the owner's log and the network"
                )
                raise RequestTimeoutError(
                    f"{self.name}: timed out after {limit:g} s waiting for bytes [{span[0]}, {span[1]}): "
                    + why,
                    range=span,
                )
            self.table.wait_for_change(generation, min(remaining, self._owner_check_s))

    def _check_owner(self, span: tuple[int, int], stopped: str) -> str:
        """Raise if the owner died; return how it is stopped ("" when it runs), warning once when it stops."""
        pid = self.table.owner_pid
        if not process_alive(pid, self.table.owner_start_time):
            raise OwnerDiedError(
                f"{self.name}: its owner, process {pid}, which was fetching bytes [{span[0]}, {span[1]}), "
                "died before they arrived (killed? the kernel log names the OOM killer's victims); prepare "
                "the directory again: this process then downloads them, and frees what the dead owner left",
                range=span,
            )
        state = process_state(pid)
        now_stopped = {"T": "stopped by a signal", "t": "stopped by a debugger"}.get(state, "")
        if now_stopped and not stopped:
            log.warning(
                "%s: its owner, process %d, is %s: readers wait for it until their timeout; resume it "
                "(kill -CONT %d), or end it and prepare the directory again",
                self.name,
                pid,
                now_stopped,
                pid,
            )
        return now_stopped

    def _raise_error(self, default: type[ConnectorError] = ConnectorError) -> None:
        stored = self.table.read_error(self.index)
        kind, message = stored if stored is not None else (default.__name__, "failed (no message recorded)")
        cls = getattr(errors, kind, None)
        if not (isinstance(cls, type) and issubclass(cls, ConnectorError)):
            cls = default
            message = f"{kind}: {message}"
        raise cls(f"{message} (reported by the owner, process {self.table.owner_pid})")
