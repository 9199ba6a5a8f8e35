"""The owner side of one prepared directory: data segments, one state table, the manifest.

::

    SharedCache.create(model_dir, files)
        sweep: remove what dead owners of this user left in /dev/shm and cacheDir (sweep.py)
        placement: "shm" (fits in cacheDir's free space and memoryLimitMB) or "disk" (files under
                   model_dir/.ossmodelconnector/data/, a WARNING says why)
        state table  /dev/shm/ossmc-s-<uid>-<hash of realpath(model_dir)>   (stale one recovered, live
                     one refused), held (flock) while this cache is open
        data segment per file  ossmc-d-<uid>-<hash of endpoint, bucket, key, etag, size>, full size,
                     sparse, held (segment_hold.py)
        manifest     model_dir/.ossmodelconnector/manifest.json
    backing(i) -> SharedBacking: give it to PrefetchScheduler.register(..., backing=, evictable=False)
    close()    -> status CLOSED (readers woken), unmap, unlink everything (also at GC and at exit)

``cacheDir`` is resolved once (``/run/shm`` is ``/dev/shm``), and a segment found under a data name is
judged by its file (device and inode), never by how its path is spelled: shared when a live table
of this user lists that very file, otherwise removed only when no live process holds it. A name that
another user's file (or a file of the wrong mode, or a symlink) holds is left alone and the next
candidate name is used (``segments.candidate_names``), with one WARNING naming that file's owner.

The layout is in ``docs/cache-layout.md``. Nothing is left behind by a normal exit or an exit by an
exception (a ``weakref.finalize``); after SIGKILL the next ``create`` (of any directory) removes the stale
files, and so does ``ossmodelconnector gc``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from ossmodelconnector.cache.manifest import OWN_DIR_NAME, Manifest, ManifestEntry, write_manifest
from ossmodelconnector.cache.peer_source import Lister, find_lister
from ossmodelconnector.cache.placement import choose_placement, relative_paths_of
from ossmodelconnector.cache.segment_hold import SegmentHold, unlink_unheld
from ossmodelconnector.cache.segments import (
    STATE_DIR,
    ProcessIdentity,
    Segment,
    attach_segment,
    candidate_names,
    check_ownership,
    create_segment,
    data_segment_name,
    describe_process,
    free_space,
    lstat_or_none,
    real_directory,
    required_margin,
    segment_path,
    squatted,
    state_table_name,
    warn_squatted,
)
from ossmodelconnector.cache.shared_backing import SharedBacking
from ossmodelconnector.cache.state_table import FLAG_LAZY, FileSpec, StateTable, TableStatus, plan_layout
from ossmodelconnector.cache.sweep import recover_table, sweep
from ossmodelconnector.config import DEFAULT_CACHE_DIR
from ossmodelconnector.errors import CacheError, ClosedError, OutOfMemoryError
from ossmodelconnector.objects import ObjectInfo

__all__ = ["DATA_DIR_NAME", "SharedCache"]

log = logging.getLogger(__name__)

DATA_DIR_NAME = "data"
"""The disk fallback keeps the data files in ``model_dir/.ossmodelconnector/data/``."""

_SHARE_ATTEMPTS = 3  # create, or share with a live owner, or remove a stale file and create: one each
_MANIFEST_WAIT_S = 2.0


class _Resources:
    """Everything a cache created, so that a finalizer (which must not hold the cache) can remove it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.table: StateTable | None = None
        self.table_segment: Segment | None = None
        self.data: list[Segment] = []
        self.holds: list[SegmentHold] = []
        self.table_hold: SegmentHold | None = None
        self.manifest: Path | None = None
        self.data_dir: Path | None = None
        self._lock = threading.Lock()
        self._done = False

    def cleanup(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        if os.getpid() != self.pid:
            return  # a forked child: the files are its parent's
        table = self.table
        if table is not None:
            with contextlib.suppress(Exception):
                table.set_status(TableStatus.CLOSED)
                table.publish()  # readers elsewhere wake up and see CLOSED instead of waiting on
        for segment in self.data:
            segment.close()
        for hold in self.holds:
            # Another live process may serve its own directory from the same segment: it removes it last.
            with contextlib.suppress(OSError):
                hold.release(unlink_if_last=True)
        if self.manifest is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.manifest)
        if self.data_dir is not None:
            with contextlib.suppress(OSError):
                self.data_dir.rmdir()  # only if empty: never anything that is not ours
        if table is not None:
            table.release()
        if self.table_hold is not None:
            with contextlib.suppress(OSError):
                self.table_hold.release(unlink_if_last=False)
        if self.table_segment is not None:
            self.table_segment.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.table_segment.path)
        log.debug("removed cache files of %s", self.table_segment.path if self.table_segment else "?")


class SharedCache:
    """Owner side of one prepared directory: data segments + one state table + manifest.

    Make one with :meth:`create`. A context manager; :meth:`close` is idempotent, and a cache dropped
    without closing is closed when garbage-collected or at interpreter exit.

    Attributes:
        model_dir: the prepared directory (absolute).
        files: the large files, in table order.
        relative_paths: each file's path relative to ``model_dir`` (``/``-separated).
        chunk_size: bytes per chunk.
        placement: ``"shm"`` or ``"disk"``.
        table: the state table (writable).
        state_table_name: its segment name (in ``/dev/shm``).
        manifest_path: ``model_dir/.ossmodelconnector/manifest.json``.
    """

    placement: str
    model_dir: Path
    files: tuple[ObjectInfo, ...]
    relative_paths: tuple[str, ...]
    chunk_size: int
    namespace: str
    state_table_name: str
    manifest_path: Path
    _data_dir: str
    _resources: _Resources
    _backings: dict[int, SharedBacking]
    _peers: dict[int, Lister]
    _lazy: bool
    _finalizer: weakref.finalize[[], SharedCache]

    def __init__(self, *, _token: object = None) -> None:
        if _token is not _CREATE:
            raise TypeError("use SharedCache.create(model_dir, files, ...)")

    @classmethod
    def create(
        cls,
        model_dir: str | os.PathLike[str],
        files: Sequence[ObjectInfo],
        *,
        namespace: str,
        chunk_size: int,
        cache_dir: str = DEFAULT_CACHE_DIR,
        memory_limit_bytes: int | None = None,
        relative_paths: Sequence[str] | None = None,
        lazy: bool = False,
    ) -> SharedCache:
        """Create the segments, state table and manifest for ``files`` about to be fetched into ``model_dir``.

        Args:
            model_dir: the directory being prepared (its real path names the state table).
            files: the large files, in the order their state is laid out (alphabetical for prepare).
            namespace: the endpoint the objects come from (enters the data segment names).
            chunk_size: bytes per chunk, ``>= 1``.
            cache_dir: where data segments go when they fit (``cacheDir``; default ``/dev/shm``).
            memory_limit_bytes: if the files' total exceeds this, they go to disk (``memoryLimitMB``).
            relative_paths: each file's path in ``model_dir``; default: the key after the keys' common
                folder.
            lazy: the files are fetched when first opened and kept within ``memory_limit_bytes`` by
                evicting whole files: only that much must fit in ``cache_dir``, and the limit never sends
                them to disk. The table's header carries ``FLAG_LAZY`` (its chunks may go back to EMPTY).

        Returns:
            The cache, status FILLING, every chunk EMPTY.

        Raises:
            CacheError: the directory or an object is being prepared by a live process, or a name is
                taken by a file that is not ours (never used nor removed), or creating a file failed.
            OutOfMemoryError: not even the disk fallback has room.
            UnsafePathError: a relative path that is absolute or climbs out of ``model_dir``.
            ValueError: a chunk size below 1, a negative limit, or the same object twice.

        Example:
            >>> with SharedCache.create("/tmp/model", infos, namespace=endpoint, chunk_size=8 << 20) as cache:
            ...     handle = scheduler.register(infos[0], fetch, chunk_size=8 << 20,
            ...                                 backing=cache.backing(0), evictable=False)
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be at least 1 byte")
        if memory_limit_bytes is not None and memory_limit_bytes < 0:
            raise ValueError(f"memory_limit_bytes={memory_limit_bytes} must be >= 0, or None for no limit")
        self = cls(_token=_CREATE)
        self.model_dir = Path(os.path.abspath(model_dir))
        self.files = tuple(files)
        self.relative_paths = relative_paths_of(self.files, relative_paths)
        self.chunk_size = chunk_size
        self.namespace = namespace
        self.state_table_name = state_table_name(self.model_dir)
        self.manifest_path = self.model_dir / OWN_DIR_NAME / "manifest.json"
        bases = [data_segment_name(namespace, info) for info in self.files]
        if len(set(bases)) != len(bases):
            raise ValueError(f"{self.model_dir}: the same object version is listed twice; list each once")
        # Resolved once: a cacheDir spelled /run/shm is /dev/shm, and every path below uses one spelling.
        cache_dir = real_directory(cache_dir)
        with contextlib.suppress(OSError):  # cleaning up after the dead must never fail a prepare
            swept = sweep([cache_dir])
            if swept:
                log.info(
                    "removed %d file(s), %d bytes, that processes which died left in shared memory",
                    len(swept),
                    sum(item.nbytes for item in swept),
                )
        total = sum(info.size for info in self.files)
        if lazy:
            resident = total if memory_limit_bytes is None else min(total, memory_limit_bytes)
            self.placement, why = choose_placement(resident, cache_dir, None)
        else:
            # Segments another directory already holds in cache_dir take no more room (they are shared).
            new = sum(
                info.size
                for info, name in zip(self.files, bases, strict=True)
                if lstat_or_none(segment_path(cache_dir, name)) is None
                or squatted(segment_path(cache_dir, name)) is not None
            )
            self.placement, why = choose_placement(new, cache_dir, memory_limit_bytes, total=total)
        own_dir = self.model_dir / OWN_DIR_NAME
        if self.placement == "shm":
            self._data_dir = cache_dir
        else:
            self._data_dir = str(own_dir / DATA_DIR_NAME)
            log.warning(
                "%s: the %d bytes of large files go to files under %s instead of %s, because %s; first "
                "reads are slower. Make room in %s, raise memoryLimitMB, or set cacheDir",
                self.model_dir,
                total,
                self._data_dir,
                cache_dir,
                why,
                cache_dir,
            )
        self._resources = _Resources()
        self._backings = {}
        self._peers = {}
        self._lazy = lazy
        self._finalizer = weakref.finalize(self, self._resources.cleanup)
        try:
            own_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.placement == "disk":
                self._prepare_disk(total)
            # Names another user's file holds are skipped now: the table lists the names the data get.
            names = [self._data_name(info, base) for info, base in zip(self.files, bases, strict=True)]
            self._create_table(names)
            # The manifest before the data: another process preparing the same objects into another
            # directory, meeting one of these segments, reads it to confirm that the segment is this one.
            self._resources.manifest = write_manifest(self.model_dir, self._manifest(names))
            for index, (info, name) in enumerate(zip(self.files, names, strict=True)):
                self._resources.data.append(self._create_data(index, info, name))
            if lazy:
                self.table.set_flags(FLAG_LAZY)
            self.table.set_status(TableStatus.FILLING)
            self.table.publish()
        except BaseException:
            self._finalizer()
            raise
        log.debug(
            "%s: shared cache of %d files, %d bytes (%s), table %s",
            self.model_dir,
            len(self.files),
            total,
            self.placement,
            self.state_table_name,
        )
        return self

    # --- public --------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run (or the finalizer did)."""
        return not self._finalizer.alive

    def data_path(self, index: int) -> str:
        """The data file of file ``index``: what its entry in ``model_dir`` links to."""
        return segment_path(self._data_dir, self._resources.data[index].name)

    def entry_path(self, index: int) -> str:
        """The entry of file ``index`` in ``model_dir`` (the symlink's own path)."""
        return str(self.model_dir.joinpath(*self.relative_paths[index].split("/")))

    def peer(self, index: int) -> Lister | None:
        """The live directory whose owner fetches file ``index`` into the shared segment, if another does.

        Wait on it (``peer_source.PeerSource``) instead of fetching; None: this cache created the segment.
        """
        return self._peers.get(index)

    def data_view(self, index: int) -> memoryview:
        """A view of file ``index``'s data segment (release it: the mapping cannot close while viewed).

        Raises:
            ClosedError: the cache is closed.
        """
        mapping = self._resources.data[index].mapping if not self.closed else None
        if mapping is None:
            raise ClosedError(f"{self.model_dir}: its shared cache is closed; prepare the directory again")
        return memoryview(mapping)

    def backing(self, index: int) -> SharedBacking:
        """The shared backing of file ``index``, for ``PrefetchScheduler.register(..., backing=...)``.

        Raises:
            ClosedError: the cache is closed.
        """
        if self.closed:
            raise ClosedError(f"{self.model_dir}: its shared cache is closed; prepare the directory again")
        backing = self._backings.get(index)
        if backing is None:
            mapping = self._resources.data[index].mapping
            backing = SharedBacking(
                self.table,
                index,
                mapping,
                punch_holes=self._lazy,
                path=self.data_path(index),
                mtime_ns=self.files[index].mtime_ns,
            )
            self._backings[index] = backing
        return backing

    def close(self) -> None:
        """Mark the table CLOSED (waking readers), unmap, and unlink every file this cache made. Idempotent.

        Mappings still viewed (by a chunk buffer or a reader's view) stay valid until those views go;
        the files are unlinked at once.
        """
        for backing in self._backings.values():
            backing.mapping = None
        self._backings.clear()
        self._finalizer()

    def __enter__(self) -> SharedCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.placement
        return f"<SharedCache {self.model_dir} {len(self.files)} files ({state})>"

    # --- creation ------------------------------------------------------------------------------------

    @property
    def table(self) -> StateTable:
        """The state table (writable, owner side)."""
        table = self._resources.table
        if table is None:
            raise ClosedError(f"{self.model_dir}: its shared cache is closed; prepare the directory again")
        return table

    def _prepare_disk(self, total: int) -> None:
        data_dir = Path(self._data_dir)
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._resources.data_dir = data_dir
        available, size = free_space(str(data_dir))
        if total + required_margin(size) > available:
            raise OutOfMemoryError(
                f"{self.model_dir}: {total} bytes of large files fit neither in memory nor on its disk "
                f"({available} bytes free in {data_dir}, keeping {required_margin(size)} free): free space "
                "there, or prepare into a directory on a larger disk"
            )

    def _create_table(self, names: list[str]) -> None:
        specs = [FileSpec(info.size, info.crc64, name) for info, name in zip(self.files, names, strict=True)]
        layout = plan_layout([spec.size for spec in specs], self.chunk_size, os.path.realpath(self.model_dir))
        segment = None
        for name in candidate_names(self.state_table_name):
            path = segment_path(STATE_DIR, name)
            why = squatted(path)
            if why is None:
                try:
                    segment = create_segment(STATE_DIR, name, layout.table_size)
                except FileExistsError:
                    why = squatted(path)
                    if why is None:
                        recover_table(name, str(self.model_dir), self._data_dir, DATA_DIR_NAME)
                        try:
                            segment = create_segment(STATE_DIR, name, layout.table_size)
                        except FileExistsError:
                            raise CacheError(
                                f"{self.model_dir}: another process created its state table {path} at the "
                                "same moment: prepare a directory from one process at a time"
                            ) from None
            if segment is not None:
                break
            assert why is not None
            warn_squatted(path, why, f"the state table of {self.model_dir}")
        if segment is None:
            raise CacheError(
                f"{self.model_dir}: every name its state table may take in {STATE_DIR} is held by a file "
                "that is not ours (see the warnings above for their owners): remove them"
            )
        self.state_table_name = segment.name
        self._resources.table_segment = segment
        try:
            # Held while open: a sweep in another process (which cannot see this pid in another pid
            # namespace) never removes a table a live process holds.
            self._resources.table_hold = SegmentHold.take(segment.path)
        except FileNotFoundError:
            raise CacheError(
                f"{self.model_dir}: its new state table {segment.path} was removed at once by another "
                "process: prepare again, and find out what removes files in /dev/shm"
            ) from None
        owner = ProcessIdentity.current()
        assert segment.mapping is not None
        self._resources.table = StateTable.initialize(
            segment.mapping,
            specs,
            chunk_size=self.chunk_size,
            owner_pid=owner.pid,
            owner_start_time=owner.start_time,
            owner_uid=os.geteuid(),
            placement=self.placement,
            directory=os.path.realpath(self.model_dir),
            name=segment.path,
        )

    def _data_name(self, info: ObjectInfo, base: str) -> str:
        """The first name for ``info``'s data segment that no file of someone else holds."""
        for name in candidate_names(base):
            path = segment_path(self._data_dir, name)
            why = squatted(path)
            if why is None:
                return name
            warn_squatted(path, why, f"the data segment of {info.uri}")
        raise AssertionError("candidate_names ends with a random name")  # pragma: no cover

    def _create_data(self, index: int, info: ObjectInfo, name: str) -> Segment:
        path = segment_path(self._data_dir, name)
        for _ in range(_SHARE_ATTEMPTS):
            try:
                # Last-Modified before any entry links to it (and kept by the backing through every write).
                segment = create_segment(self._data_dir, name, info.size, mtime_ns=info.mtime_ns)
            except FileExistsError:
                pass
            else:
                held = self._held(segment, path)
                if held is not None:
                    return held
                continue  # removed by another process before this one held it: create it again
            existing = lstat_or_none(path)
            if existing is not None:
                check_ownership(path, existing)  # a squatter arrived since the name was chosen
            lister = _confirmed_lister(name, path, exclude=self.state_table_name)
            if lister is not None:
                shared = self._share(index, info, name, lister)
                if shared is not None:
                    return shared
                continue  # its owner removed it meanwhile: create it here
            if unlink_unheld(path) is not None:
                log.warning("%s: removed the stale data segment %s (no live process held it)", info.uri, path)
                continue
            if lstat_or_none(path) is None:
                continue  # removed by someone else meanwhile
            raise CacheError(
                f"{info.uri}: {path} is held by a live process, yet no live directory of this user lists "
                "that file: it is never removed nor shared. Close the process holding it (fuser "
                f"{path}), or set cacheDir elsewhere"
            )
        raise CacheError(
            f"{info.uri}: other processes keep creating and removing {path} at the same moment: prepare it "
            "from one process at a time"
        )

    def _held(self, segment: Segment, path: str) -> Segment | None:
        try:
            self._resources.holds.append(SegmentHold.take(path))
        except FileNotFoundError:
            segment.close()
            return None
        except BaseException:
            segment.close()
            raise
        return segment

    def _share(self, index: int, info: ObjectInfo, name: str, lister: Lister) -> Segment | None:
        if self._lazy or lister.lazy:
            raise CacheError(
                f"{info.uri}: {describe_process(lister.pid)} is preparing this object version for "
                f"{lister.directory} (data segment {lister.data_path}), and lazy directories do not share "
                "their segments (they evict them): prepare both eagerly, prepare that directory itself, or "
                "close that directory (or its connector) first"
            )
        path = segment_path(self._data_dir, name)
        try:
            hold = SegmentHold.take(path)
        except FileNotFoundError:
            return None
        try:
            segment = attach_segment(self._data_dir, name, writable=True)
        except BaseException:
            hold.release(unlink_if_last=False)
            raise
        self._resources.holds.append(hold)
        self._peers[index] = lister
        log.info(
            "%s: shares the data segment %s with %s (process %d), which fetches it",
            info.uri,
            path,
            lister.directory,
            lister.pid,
        )
        return segment

    def _manifest(self, names: list[str]) -> Manifest:
        entries = {
            relative: ManifestEntry(
                data_path=segment_path(self._data_dir, name),
                size=info.size,
                etag=info.etag,
                index=index,
                bucket=info.bucket,
                key=info.key,
                last_modified=info.last_modified,
            )
            for index, (relative, info, name) in enumerate(
                zip(self.relative_paths, self.files, names, strict=True)
            )
        }
        return Manifest(
            state_table=self.state_table_name,
            chunk_size=self.chunk_size,
            placement=self.placement,
            owner_pid=os.getpid(),
            files=entries,
        )


_CREATE = object()


def _confirmed_lister(segment_name: str, path: str, *, exclude: str) -> Lister | None:
    """The live table listing ``segment_name`` whose manifest names ``path`` as its data, if any.

    An owner writes its manifest just after its table, before its segments: a lister without one yet is
    asked again for a moment. Listers that keep the segment elsewhere (another ``cacheDir``) are not
    this file's.
    """
    deadline = time.monotonic() + _MANIFEST_WAIT_S
    while True:
        lister = find_lister(segment_name, exclude=exclude, data_path=path)
        if lister is None or lister.data_path:
            return lister
        if time.monotonic() >= deadline:
            raise CacheError(
                f"{path}: {describe_process(lister.pid)} lists this object version for {lister.directory} "
                f"but wrote no manifest within {_MANIFEST_WAIT_S:g} s: close that connector, or prepare "
                "again once it is ready"
            )
        time.sleep(0.01)
