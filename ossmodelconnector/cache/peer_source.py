"""An object version another live process is already fetching for its own directory: wait, do not fetch.

Two processes that prepare the same objects into two *different* directories share each object's data
segment (its name depends only on the object version, ``segments.data_segment_name``)::

    process A: prepare_directory(uri, /a)    creates ossmc-d-<uid>-<h> (O_EXCL), fetches into it
    process B: prepare_directory(uri, /b)    finds ossmc-d-<uid>-<h> listed by A's live table,
                                             maps the same segment, and its workers' fetch_into is
                                             PeerSource.fetch_into: wait for A's chunk states, then
                                             only compute the CRC-64 of bytes that are already there

B keeps a table, a manifest and a scheduler of its own, so its readers (and its children) never depend
on A: if A closes or dies before every chunk arrived, B's workers fetch what is missing themselves, into
the same segment (``A`` no longer writes it; a byte written twice is the same byte of the same pinned
version). Segment holds (``segment_hold.py``) keep the file until the last of them closes. B does not post
its read-ahead to A's demand ring: A's order (the framework's reading order) is also B's.

Lazy directories never share: their owner punches evicted files out of the segment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ossmodelconnector._fast import crc64
from ossmodelconnector.cache.attached import AttachedCache
from ossmodelconnector.cache.chunk_state import ChunkState
from ossmodelconnector.cache.manifest import manifest_path, read_manifest
from ossmodelconnector.cache.segments import (
    STATE_DIR,
    STATE_TABLE_PREFIX,
    attach_segment,
    data_segment_name,
    own_prefix,
    process_alive,
    same_file,
    segment_path,
)
from ossmodelconnector.cache.state_table import FLAG_LAZY, StateTable
from ossmodelconnector.errors import CacheError, ClosedError, ConnectorError, OwnerDiedError
from ossmodelconnector.objects import FetchInto, ObjectInfo

__all__ = ["Lister", "PeerSource", "find_lister", "find_listers"]

log = logging.getLogger(__name__)

_READY = ChunkState.READY


@dataclass(frozen=True)
class Lister:
    """A live process's state table that lists a data segment.

    Args:
        pid: the process that owns the table.
        directory: the directory it prepares.
        table_name: the table's segment name.
        index: the segment's file index in that table.
        lazy: the table is a lazy directory's (its segments are evicted: never shared).
        data_path: the data file its manifest names for that index ("" while it has no manifest yet).
    """

    pid: int
    directory: str
    table_name: str
    index: int
    lazy: bool
    data_path: str


def find_lister(segment_name: str, *, exclude: str = "", data_path: str | None = None) -> Lister | None:
    """A live state table (other than ``exclude``) that lists ``segment_name``, or None.

    Tables of dead owners, unreadable tables and tables that are not ours are skipped, and with
    ``data_path``, tables whose manifest keeps that segment elsewhere (another ``cacheDir``, the disk
    fallback); a table without a manifest yet (``Lister.data_path == ""``) is not skipped. Paths are
    compared as files (device and inode), so ``/run/shm/x`` and ``/dev/shm/x`` are one segment.
    """
    return find_listers({segment_name: data_path}, exclude=exclude).get(segment_name)


def find_listers(wanted: Mapping[str, str | None], *, exclude: str = "") -> dict[str, Lister]:
    """:func:`find_lister` for several segments (name -> ``data_path``) in one scan of this user's tables."""
    prefix = own_prefix(STATE_TABLE_PREFIX)
    try:
        names = sorted(name for name in os.listdir(STATE_DIR) if name.startswith(prefix))
    except OSError:
        return {}
    found: dict[str, Lister] = {}
    for name in names:
        if len(found) == len(wanted):
            break
        if name == exclude:
            continue
        try:
            segment = attach_segment(STATE_DIR, name)
        except (OSError, CacheError):
            continue
        try:
            if segment.mapping is None:
                continue
            table = StateTable(segment.mapping, name)
            try:
                listed = {
                    entry.segment_name: index
                    for index, entry in enumerate(table.files())
                    if entry.segment_name in wanted and entry.segment_name not in found
                }
                if not listed or not process_alive(table.owner_pid, table.owner_start_time):
                    continue
                directory = table.directory
                lazy = bool(table.flags() & FLAG_LAZY)
                pid = table.owner_pid
            finally:
                table.release()
        except CacheError:
            continue
        finally:
            segment.close()
        data_paths = _manifest_data_paths(directory, name)
        for segment_name, index in listed.items():
            lister = Lister(pid, directory, name, index, lazy, data_paths.get(index, ""))
            path = wanted[segment_name]
            if path is None or not lister.data_path or same_file(lister.data_path, path):
                found[segment_name] = lister
    return found


class PeerSource:
    """Waits on another live directory's chunk states for one object version (``find_lister``'s answer).

    Args:
        lister: the table to wait on.
        owner_check_s: notice the other process's death within this many seconds.
        wait_timeout_s: wait this long for one chunk before fetching it here.

    Raises:
        FileNotFoundError: the table is gone (its owner closed it): fetch the object yourself.
        CacheError: the table is not ours or not readable.
    """

    def __init__(self, lister: Lister, *, owner_check_s: float, wait_timeout_s: float) -> None:
        self.lister = lister
        # Read-only: no demand posted. This process's read-ahead would only reorder the other's fetch.
        paths = [""] * (lister.index + 1)
        paths[lister.index] = lister.data_path
        self._attached = AttachedCache(lister.table_name, data_paths=paths)
        self._remote = self._attached.file(lister.index, owner_check_s=owner_check_s)
        self._wait_timeout_s = wait_timeout_s
        self._lock = threading.Lock()
        self._gone: BaseException | None = None
        self._closed = False

    @classmethod
    def for_objects(
        cls,
        namespace: str,
        infos: Sequence[ObjectInfo],
        cache_dir: str,
        *,
        owner_check_s: float,
        wait_timeout_s: float,
    ) -> list[PeerSource | None]:
        """Per object, a source if another live eager directory fetches it into ``cache_dir``, else None.

        Close every source returned.
        """
        paths = [segment_path(cache_dir, data_segment_name(namespace, info)) for info in infos]
        listers = find_listers({os.path.basename(path): path for path in paths})
        sources: list[PeerSource | None] = []
        for path in paths:
            lister = listers.get(os.path.basename(path))
            source = None
            if (
                lister is not None
                and not lister.lazy
                and lister.data_path
                and same_file(lister.data_path, path)
            ):
                with contextlib.suppress(OSError, CacheError):  # closed meanwhile: fetch it here
                    source = cls(lister, owner_check_s=owner_check_s, wait_timeout_s=wait_timeout_s)
            sources.append(source)
        return sources

    def fetch_into(self, fallback: FetchInto, own_data: memoryview | None = None) -> FetchInto:
        """A ``fetch_into`` that waits for the other process's bytes, and uses ``fallback`` once it cannot.

        Args:
            fallback: the real fetch (a ranged GET) for bytes the other process will not bring.
            own_data: this process's mapping of the shared segment; a ``dest`` inside it already holds
                the bytes once they are READY (nothing copied). Other destinations get a copy.
        """
        own_address = address(own_data) if own_data is not None else None

        def fetch_into(start: int, end: int, dest: memoryview) -> int:
            if self._gone is None:
                try:
                    self._remote.wait(start, end, self._wait_timeout_s)
                    return self._hand_over(start, end, dest, own_address)
                except Exception as exc:
                    self._failed(exc, start, end)
            elif self._ready_there(start, end):  # stored there before the other process stopped
                return self._hand_over(start, end, dest, own_address)
            return fallback(start, end, dest)

        return fetch_into

    def _hand_over(self, start: int, end: int, dest: memoryview, own_address: int | None) -> int:
        """The CRC-64 of READY bytes ``[start, end)``, copied into ``dest`` unless it is the segment."""
        if own_address is None or address(dest) != own_address + start:
            dest[: end - start] = self._attached.data(self.lister.index)[start:end]
        return int(crc64(dest))

    def _failed(self, exc: Exception, start: int, end: int) -> None:
        """A wait or a copy failed: stop waiting for good, or for this range only; raise when closed."""
        if self._closed:
            raise ClosedError(f"{self._remote.name}: closed while waiting for it") from exc
        if isinstance(exc, (ClosedError, OwnerDiedError, FileNotFoundError)):
            self._stop_waiting(exc)
        elif isinstance(exc, ConnectorError):  # a chunk that failed there, or a timeout
            log.warning(
                "%s: bytes [%d, %d) did not arrive from %s (%s); fetching them here",
                self._remote.name,
                start,
                end,
                self.lister.directory,
                exc,
            )
        else:
            raise exc

    def _ready_there(self, start: int, end: int) -> bool:
        # The other table's states stay true after it stopped: a READY chunk's bytes are in the segment,
        # which this process still holds and which eager directories never punch out.
        table = self._remote.table
        if self._closed or table.released:
            return False
        chunk_size = table.chunk_size
        first, last = start // chunk_size, (end - 1) // chunk_size + 1
        try:
            states = bytes(table.states(self.lister.index)[first:last])
        except ValueError:  # released by close() meanwhile
            return False
        return states.count(_READY) == len(states)

    def close(self) -> None:
        """Stop waiting (a wait in progress ends within ``owner_check_s``) and unmap. Idempotent."""
        self._closed = True
        self._attached.close()

    def _stop_waiting(self, exc: BaseException) -> None:
        with self._lock:
            if self._gone is not None:
                return
            self._gone = exc
        log.warning(
            "%s stopped fetching %s (%s); this process fetches the rest itself",
            self.lister.directory,
            self._remote.name,
            exc,
        )


def address(view: memoryview) -> int:
    """Where ``view``'s first byte is in this process (0 when empty): a hand-over compares its
    destination with the segment's own mapping, so bytes stored there already are not copied onto
    themselves."""
    if len(view) == 0:
        return 0
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)


def _manifest_data_paths(directory: str, table_name: str) -> dict[int, str]:
    """File index -> data path, from the manifest of ``directory`` if it belongs to ``table_name``."""
    with contextlib.suppress(OSError, CacheError, ValueError):
        manifest = read_manifest(manifest_path(directory))
        if manifest.state_table == table_name:
            return {entry.index: entry.data_path for entry in manifest.files.values()}
    return {}
