"""``prepare_directory``: mirror an OSS prefix into a local directory that frameworks read while it fills.

::

    parse oss://bucket/prefix/, check model_dir (dirsafety)             nothing touched yet
    fast_list(prefix) -> plan_entries: names checked, markers skipped   an empty prefix is an error
    HEAD every large file (a listing carries no CRC-64; the HEAD pins the version to verify)
    their .safetensors headers read on the pool (for the read order) while this thread goes on:
    clean model_dir (never through a symlink), write .ossmodelconnector/owner.json
    SharedCache.create(large files) (recovers what a dead previous owner left)
    model_dir/<name> -> symlink to its data segment (full size, sparse), for every large file
    hooks.install()
    scheduler.register(..., backing=segment, evictable=False, first_chunk_first=True), in name order,
        all under the scheduler's lock: every file's first chunk (its header) is fetched before bodies,
        then the bodies in the order frameworks read tensors (read_order.py; the headers waited for here)
    registry.register_file(entry, handle, Last-Modified)              the hooks can find it
    small files: a thread pool, download_to_file (temporary name, then rename), CRC-checked
    return (wait=True: once every large file is READY and verified)

On any error after model_dir was touched, everything set up so far is undone (files unregistered, hooks
uninstalled, segments unlinked, symlinks removed); the owner record stays, so a retry may clean it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ossmodelconnector import hooks
from ossmodelconnector.atomic_files import symlink_atomically
from ossmodelconnector.cache.demand import DemandServer
from ossmodelconnector.cache.peer_source import PeerSource
from ossmodelconnector.cache.registry import register_file, unregister_file
from ossmodelconnector.cache.shared_cache import SharedCache
from ossmodelconnector.directory.exported import export_directory, unexport_directory
from ossmodelconnector.directory.lazy.files import LazyFiles, lazy_idle_seconds
from ossmodelconnector.directory.lazy.residency import Residency
from ossmodelconnector.directory.live import live_directories, refuse_overlap, release, reserve
from ossmodelconnector.directory.progress import STATE_CACHED, STATE_FAILED, DirectoryProgress, FileProgress
from ossmodelconnector.directory.read_order import chunk_order, fetch_tensor_ranges
from ossmodelconnector.directory.safety import (
    check_model_dir,
    claim_model_dir,
    clean_model_dir,
    make_parents,
    normalize_model_dir,
    plan_entries,
    release_owner,
)
from ossmodelconnector.errors import (
    ClosedError,
    ConnectorError,
    IntegrityError,
    ObjectNotFoundError,
)
from ossmodelconnector.fleet.exchange import FleetExchange, import_group_early
from ossmodelconnector.fleet.plan import FleetPlan
from ossmodelconnector.fleet.rendezvous import FleetSettings, fleet_settings
from ossmodelconnector.objects import FetchInto, ObjectInfo
from ossmodelconnector.oss.listing import fast_list
from ossmodelconnector.oss.uri import parse_prefix_uri

if TYPE_CHECKING:
    from ossmodelconnector.config import Config
    from ossmodelconnector.fetch.object_handle import ObjectHandle
    from ossmodelconnector.fetch.prefetch import PrefetchScheduler
    from ossmodelconnector.oss.client import OssClient

__all__ = ["PreparedDirectory", "PreparedFile", "live_directories", "prepare_directory"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedFile:
    """One file of a prepared directory.

    Args:
        name: its ``/``-separated name inside the directory.
        path: its absolute path.
        info: the object it mirrors (for a large file, as HEAD described it: with its CRC-64).
        large: streamed into the cache behind a symlink (True) or downloaded to disk (False).
    """

    name: str
    path: str
    info: ObjectInfo
    large: bool

    @property
    def size(self) -> int:
        """Bytes."""
        return self.info.size


def prepare_directory(
    client: OssClient,
    scheduler: PrefetchScheduler,
    config: Config,
    oss_dir: str,
    model_dir: str | os.PathLike[str],
    *,
    namespace: str,
    lazy: bool = False,
    wait: bool = False,
    progress: bool | None = None,
    on_start: Callable[[PreparedDirectory], None] | None = None,
    residency: Residency | None = None,
    gc_idle_seconds: float | None = None,
) -> PreparedDirectory:
    """Mirror ``oss_dir`` into ``model_dir``: small files on disk, large ones streaming into the cache.

    The connector's :meth:`~ossmodelconnector.OssModelConnector.prepare_directory` is the public entry
    point; this function does the work with the connector's client, scheduler and config.

    Args:
        client: the OSS client.
        scheduler: the prefetch scheduler the large files' chunks are fetched by.
        config: the connector's settings (``smallFileMB``, ``chunkSizeMB``, ``cacheDir``...).
        oss_dir: ``oss://bucket/prefix/`` (``oss://bucket/`` for the whole bucket).
        model_dir: the local directory; created if missing, cleaned if prepared before.
        namespace: the endpoint, so that two endpoints' objects never share a segment.
        lazy: create every large file's entry (name, size) at once but fetch nothing large until a
            reader opens it (see :mod:`ossmodelconnector.directory.lazy.residency`); the files are kept within
            ``memoryLimitMB`` by eviction and released after ``gc_idle_seconds`` without a reader.
        wait: return only when every large file is local and verified (not with ``lazy``).
        progress: a tqdm bar on stderr while prefetching; None: only when stderr is a terminal.
        on_start: called with the :class:`PreparedDirectory` as soon as it exists, before anything is
            written (the connector keeps it, so that a prepare that fails still shows in ``stats()``).
        residency: the memory budget lazy files are kept within (the connector's); a new one over
            ``memoryLimitMB`` when None.
        gc_idle_seconds: lazy files not read for this long are released; None: ``gc.idleSeconds``
            (0 = never).

    Returns:
        The :class:`PreparedDirectory`; close it (or the connector) to release the cache.

    Raises:
        InvalidURIError: ``oss_dir`` is not an ``oss://bucket/prefix/`` URI.
        UnsafePathError: ``model_dir`` must not be touched, or a key cannot be mirrored safely.
        ObjectNotFoundError: no objects under the prefix, or no such bucket.
        CacheError: the cache cannot be created (``OutOfMemoryError`` when it does not fit).
        ConnectorError: a download failed (small files; large ones too with ``wait=True``).
    """
    started = (time.time(), time.monotonic())
    bucket, prefix = parse_prefix_uri(oss_dir)
    uri = f"oss://{bucket}/{prefix}"
    idle_s = lazy_idle_seconds(uri, config, lazy=lazy, wait=wait, gc_idle_seconds=gc_idle_seconds)
    fleet = fleet_settings(config)  # a fleet's settings are checked before anything is touched
    if fleet is not None and lazy:
        log.info(
            "%s: fleet mode: a lazy directory loads alone (its files are fetched as they are opened)", uri
        )
        fleet = None
    if fleet is not None:
        import_group_early()
    refuse_overlap(normalize_model_dir(model_dir))
    check = check_model_dir(model_dir)
    entries = plan_entries(fast_list(client, bucket, prefix, config.fast_list_requests), bucket, prefix)
    if not entries:
        raise ObjectNotFoundError(
            f"no objects under {uri}: check the bucket and the prefix (keys are case-sensitive; list "
            f"them with connector.list({bucket!r}, {prefix!r}))",
            bucket=bucket,
            key=prefix,
        )
    # A lazy directory's bytes arrive only as files are opened: a bar over all of them would never end.
    show_bar = (progress if progress is not None else _stderr_is_a_terminal()) and not lazy
    threads = max(1, min(config.prefetch_connections, len(entries)))
    with ThreadPoolExecutor(threads, thread_name_prefix="ossmodelconnector-prepare") as pool:
        large = [entry for entry in entries if _is_large(entry.info, config)]
        # A listing has no CRC-64; the HEAD gives it (and the current version) so the cache can verify.
        heads = _run_all(pool, [partial(client.head_object, bucket, entry.info.key) for entry in large])
        # Tensors are fetched in the order frameworks read them, which their headers tell (read_order.py).
        # A lazy directory reads no header now: nothing large is fetched before a reader opens the file.
        # The headers are read on the pool while this thread sets the directory up; the order is needed
        # only when the fetch starts (_start_large).
        headers = _HeaderReads(pool, client, namespace, [] if lazy else heads, config)
        files = [
            PreparedFile(entry.name, os.path.join(check.path, entry.name), entry.info, large=False)
            for entry in entries
            if not _is_large(entry.info, config)
        ]
        files += [
            PreparedFile(entry.name, os.path.join(check.path, entry.name), info, large=True)
            for entry, info in zip(large, heads, strict=True)
        ]
        files.sort(key=lambda file: file.name)
        directory = PreparedDirectory(check.path, uri, files, config, show_bar=show_bar, started=started)
        if lazy:
            directory.lazy_files = LazyFiles(
                residency or Residency(scheduler, config.memory_limit_bytes), idle_s, check.path
            )
        try:
            reserve(directory.model_dir, directory)
            if on_start is not None:
                on_start(directory)
        except BaseException:
            headers.close()  # the reads still running finish, and the peers are closed
            raise
        try:
            if check.exists and not check.empty:
                removed = clean_model_dir(check.path)
                log.debug("%s: removed %d entries of the previous prepare", check.path, removed)
            claim_model_dir(check, {"uri": uri, "endpoint": namespace})
            directory._start_large(client, scheduler, namespace, fleet, headers.tensors)
            directory._download_small(client, pool)
            directory.progress.mark_ready()
            # Child processes (spawn, subprocess) attach, not prepare; a lazy directory's files are this
            # process's only (cache-layout.md, 6), and the children are told so when they read one.
            export_directory(check.path)
            log.debug(
                "%s: ready after %.3f s (%d files, %d large, placement %s)",
                check.path,
                time.monotonic() - started[1],
                len(files),
                sum(1 for file in files if file.large),
                directory.placement or "none",
            )
        except BaseException:
            headers.close()
            directory.close()
            raise
    # Waited for after the pool's threads were joined (leaving the block), not before: joined at the end
    # they were a GIL round trip each between the last chunk and the return.
    if wait:
        try:
            directory.wait()
        except BaseException:
            directory.close()
            raise
    return directory


class PreparedDirectory:
    """A model directory being filled from OSS: its files, their progress, and the cache behind them.

    Made by :func:`prepare_directory`. Closing it unregisters its files from the reader hooks, unlinks
    the cache (segments, state table, manifest) and removes the symlinks that would dangle; the small
    files and the owner record stay. The connector closes it on :meth:`OssModelConnector.close`.

    Attributes:
        model_dir: the absolute directory.
        uri: the ``oss://bucket/prefix/`` it mirrors.
        files: every file, by name.
        placement: where the large files' bytes live: ``"shm"`` (``cacheDir``), ``"disk"`` (under
            ``model_dir/.ossmodelconnector/data``), or ``""`` when there are none.
        progress: per-file states and times (see :meth:`stats`).
    """

    def __init__(
        self,
        model_dir: str,
        uri: str,
        files: Sequence[PreparedFile],
        config: Config,
        *,
        show_bar: bool,
        started: tuple[float, float] | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.uri = uri
        self.files: tuple[PreparedFile, ...] = tuple(files)
        self.placement = ""
        self._config = config
        self.progress = DirectoryProgress(
            model_dir,
            uri,
            [
                FileProgress(file.name, file.path, file.size, file.large, config.chunk_size)
                for file in self.files
            ],
            show_bar=show_bar,
            started=started,
        )
        self._lock = threading.Lock()
        self._closed = False
        self._cache: SharedCache | None = None
        self._handles: dict[str, ObjectHandle] = {}
        self._registered: list[str] = []
        self._links: dict[str, str] = {}
        self._hooks_installed = False
        self._stop_downloads = threading.Event()
        self.lazy_files: LazyFiles | None = None
        """The lazy side (``prepare_directory(..., lazy=True)``): files, ``gc_idle_seconds``, ``collect``."""
        self._demand: DemandServer | None = None
        self._peers: list[PeerSource] = []
        self.fleet: FleetExchange | None = None
        """This node's share of a fleet (fleet mode), or None."""
        self._pid = os.getpid()

    # --- public -------------------------------------------------------------------------------------

    @property
    def started_at(self) -> float:
        """When the prepare began (``time.time()``)."""
        return self.progress.started_at

    @property
    def ready_at(self) -> float | None:
        """When ``prepare_directory`` returned, small files on disk (``time.time()``), or None."""
        return self.progress.ready_at

    @property
    def finished_at(self) -> float | None:
        """When every large file had arrived (``time.time()``), or None while they are arriving."""
        return self.progress.finished_at

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._closed

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until every large file is READY and its CRC-64 verified.

        Args:
            timeout_s: give up after this many seconds without any chunk arriving (not in total: a big
                model on a slow link is fine as long as it moves); ``waitTimeoutSeconds`` by default.

        Raises:
            RequestTimeoutError: nothing arrived for ``timeout_s`` seconds.
            IntegrityError: a file's CRC-64 differs from the server's.
            ConnectorError: a file's download failed (the worker's error, with it as the cause).
            ClosedError: the directory was closed.
        """
        if self._closed:
            raise ClosedError(f"{self.model_dir}: the prepared directory is closed; prepare it again")
        stall_s = timeout_s if timeout_s is not None else self._config.wait_timeout_s
        if self.lazy_files is not None:  # only the files opened so far are on their way
            self.lazy_files.wait(stall_s)
            return
        self.progress.wait(stall_s)
        failed = {file.name for file in self.progress.failures()}
        # Every chunk has arrived, or one failed: the failed files first, so that their error is raised
        # at once rather than after the others have arrived.
        for name in sorted(self._handles, key=lambda name: name not in failed):
            self._handles[name].wait_all(stall_s)

    def stats(self) -> dict[str, Any]:
        """This directory's figures and, under ``"files"``, each file's state by path.

        Returns:
            ``uri``, ``placement``, ``files`` (count), ``bytes``, ``started_at``, ``ready_at``,
            ``finished_at``, ``seconds``, ``throughput_gbps``, ``time_to_first_byte_s`` and ``states``:
            ``{path: {"size", "state", "percent", "first_byte_at", "done_at"}}``, the state being one of
            ``"not fetched"``, ``"fetching"``, ``"cached"``, ``"failed"`` (and ``"evicted"`` in a lazy
            directory, whose files also show ``"readers"``, ``"evictions"``, ``"held_bytes"`` and
            ``"last_used_at"``).
        """
        summary = self.progress.summary()
        summary["placement"] = self.placement
        if self.fleet is not None:
            summary["fleet"] = self.fleet.stats()
        summary["states"] = self.file_states()
        return summary

    def file_states(self) -> dict[str, dict[str, Any]]:
        """Per file path: ``{"size", "state", "percent", ...}`` (see :meth:`stats`)."""
        states = self.progress.snapshot()
        if self.lazy_files is not None and not self._closed:
            for path, state in self.lazy_files.states().items():
                states[path] = {**states.get(path, {}), **state}
        return states

    def close(self) -> None:
        """Remove the symlinks, end the waits, unlink the cache, unregister the files. Idempotent.

        Readers still waiting for bytes get :class:`ClosedError`; the small files stay.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            registered, handles = list(self._registered), list(self._handles.items())
            links, cache, hooks_installed = list(self._links.items()), self._cache, self._hooks_installed
            peers = list(self._peers)
            lazy_first, lazy_last = self.lazy_files.close_steps() if self.lazy_files is not None else ([], [])
        self._stop_downloads.set()
        self.progress.freeze()
        # The order keeps every open on the safe side: the entries go first (a new open by name fails),
        # then the waits end (a reader waiting gets ClosedError), then the segments are unlinked, and
        # only then are the files unregistered: no open can reach a segment its waits no longer guard.
        owner = os.getpid() == self._pid  # a forked child never removes what its parent serves
        steps: list[tuple[str, Callable[[], None]]] = list(lazy_first)
        if owner:
            steps += [(f"remove {path}", partial(_unlink_link, path, target)) for path, target in links]
        steps += [(f"stop waiting on {peer.lister.directory}", peer.close) for peer in peers]
        if self.fleet is not None:
            steps.append(("leave the fleet", self.fleet.close))
        if self._demand is not None:
            steps.append(("stop serving demands", self._demand.close))
        steps += [(f"close {name}", handle.close) for name, handle in handles]
        steps += lazy_last
        if cache is not None:
            steps.append(("close the cache", cache.close))
        steps += [(f"unregister {path}", partial(unregister_file, path)) for path in registered]
        if hooks_installed:
            steps.append(("uninstall the hooks", _uninstall_hooks))
        if owner:
            steps.append(("unexport it", partial(unexport_directory, self.model_dir)))
        steps.append(("stop the progress", self.progress.close))
        if owner:
            steps.append(("release the owner record", partial(release_owner, self.model_dir)))
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # close must finish: each step is independent of the others
                log.warning("%s: could not %s while closing: %s", self.model_dir, what, exc)
        release(self.model_dir, self)
        log.debug("%s: closed", self.model_dir)

    def __enter__(self) -> PreparedDirectory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("finished" if self.progress.finished else "filling")
        return f"PreparedDirectory({self.uri!r} -> {self.model_dir!r}, {len(self.files)} files, {state})"

    # --- building (prepare_directory) ---------------------------------------------------------------

    def _start_large(
        self,
        client: OssClient,
        scheduler: PrefetchScheduler,
        namespace: str,
        fleet: FleetSettings | None,
        read_tensors: Callable[[], Mapping[str, Mapping[str, tuple[int, int]] | None]],
    ) -> None:
        large = [file for file in self.files if file.large]
        if not large:
            return
        cache = SharedCache.create(
            self.model_dir,
            [file.info for file in large],
            namespace=namespace,
            chunk_size=self._config.chunk_size,
            cache_dir=self._config.cache_dir,
            memory_limit_bytes=self._config.memory_limit_bytes,
            relative_paths=[file.name for file in large],
            lazy=self.lazy_files is not None,
        )
        try:
            with self._while_open():
                self._cache = cache
        except ClosedError:
            cache.close()
            raise
        self.placement = self.progress.placement = cache.placement
        for index, file in enumerate(large):
            target = cache.data_path(index)
            with self._while_open():  # created and recorded together, so that close() removes it
                # The link's own time too (os.lstat): the data segment already has Last-Modified.
                entry = make_parents(self.model_dir, file.name)
                symlink_atomically(target, entry, mtime_ns=file.info.mtime_ns)
                self._links[file.path] = target
        with self._while_open():  # before the workers start: importing the hooks competes with them
            _install_hooks()
            self._hooks_installed = True
        if self.lazy_files is not None:
            # Entries in the registry, nothing fetched: the first load or read of a file starts it.
            for index, file in enumerate(large):
                start = partial(self._register_large, client, scheduler, cache, index, file)
                with self._while_open():
                    lazy_file = self.lazy_files.add(file.path, cache.data_path(index), file.info, start)
                    register_file(file.path, lazy_file, mtime_ns=file.info.mtime_ns)
                    self._registered.append(file.path)
            with self._while_open():
                self.lazy_files.start_timer()
            return
        # Fetching starts once every entry exists (a framework globbing the directory sees them all), and
        # with the scheduler's lock held throughout, so that the first chunk of every file is queued
        # before any worker starts on a body: transformers opens every shard before reading a tensor.
        tensors = read_tensors()
        order = chunk_order(
            [file.size for file in large],
            [tensors.get(file.info.key) for file in large],
            self._config.chunk_size,
        )
        if fleet is not None:
            self._join_fleet(fleet, cache, [file.info for file in large], order)
        with scheduler.lock:
            for index, file in enumerate(large):
                self._register_large(client, scheduler, cache, index, file, eager=True)
            if self.fleet is None:
                scheduler.read_ahead_in_order([(self._handles[large[i].name], chunk) for i, chunk in order])
        if self.fleet is not None:  # the exchange queues what this node fetches, as it goes
            handles = [self._handles[file.name] for file in large]
            self.fleet.on_delivered = lambda file, chunk: scheduler.boost(handles[file], [chunk])
            self.fleet.queue_chunks = lambda chunks: scheduler.queue_read_ahead(
                [(handles[file], chunk) for file, chunk in chunks]
            )
            self.fleet.start()
        for file in large:
            with self._while_open():
                register_file(file.path, self._handles[file.name], mtime_ns=file.info.mtime_ns)
                self._registered.append(file.path)
        handles = [self._handles[file.name] for file in large]
        with self._while_open():  # readers in other processes ask for chunks through the table's ring
            self._demand = DemandServer(
                cache.table,
                lambda index, chunks: scheduler.boost(handles[index], chunks),
                name=self.model_dir,
            )

    def _register_large(
        self,
        client: OssClient,
        scheduler: PrefetchScheduler,
        cache: SharedCache,
        index: int,
        file: PreparedFile,
        *,
        eager: bool = False,
    ) -> ObjectHandle:
        # Eager: every file at prepare time, headers first, the handle kept here; lazy: one file at its
        # first open (the residency calls it and keeps the handle).
        # Stored with pwrite inside the tracked call (progress counts a chunk once it is stored); a peer
        # below hands its bytes over in the shared segment itself and uses this only as its fallback.
        fetch = cache.backing(index).file_fetcher(client.make_fetch_into(file.info))
        lister = cache.peer(index)
        if lister is not None:  # another live directory fetches this object into the same segment
            source = PeerSource(
                lister, owner_check_s=self._config.owner_check_s, wait_timeout_s=self._config.wait_timeout_s
            )
            with self._while_open():
                self._peers.append(source)
            with cache.data_view(index) as own:
                fetch = source.fetch_into(fetch, own)
        if self.fleet is not None:  # eager only: this node's share from OSS, the rest from the peers
            fetch = self.fleet.fetch_into(index, fetch)
        with self._while_open():
            handle = scheduler.register(
                file.info,
                self.progress.track(file.name, fetch),
                chunk_size=self._config.chunk_size,
                backing=cache.backing(index),
                evictable=False,
                first_chunk_first=eager,
                read_ahead=self.fleet is None,  # a fleet's exchange queues what this node fetches
            )
            if eager:
                self._handles[file.name] = handle  # recorded with the registration: close() undoes both
        self.progress.set_verdict(file.name, partial(_verdict, handle))
        return handle

    def _join_fleet(
        self, fleet: FleetSettings, cache: SharedCache, infos: list[ObjectInfo], order: list[tuple[int, int]]
    ) -> None:
        total = sum(info.size for info in infos)
        limit = self._config.memory_limit_bytes
        if limit is not None and limit < total:
            log.warning(
                "%s: fleet mode: the large files (%d bytes) exceed memoryLimitMB (%d bytes), so chunks "
                "may be dropped before the peers had them; this node loads alone",
                self.model_dir,
                total,
                limit,
            )
            return
        views = [cache.data_view(index) for index in range(len(infos))]
        plan = FleetPlan(infos, order, self._config.chunk_size, fleet.nodes)
        # The fleet as a whole keeps about one node's connections busy on OSS (at least two per node).
        window = max(2, -(-self._config.prefetch_connections // fleet.nodes))
        exchange = FleetExchange(fleet, plan, views, name=self.model_dir, window=window)
        try:
            with self._while_open():
                self.fleet = exchange
        except ClosedError:
            exchange.close()
            raise
        self.progress.sources = exchange.sources

    @contextlib.contextmanager
    def _while_open(self) -> Iterator[None]:
        # Building and close() exclude each other: whatever is recorded here, close() undoes; once closed,
        # nothing more is built (a connector closed by another thread while this prepare runs).
        with self._lock:
            if self._closed:
                raise ClosedError(
                    f"{self.uri} -> {self.model_dir}: closed while it was being prepared; prepare it again"
                )
            yield

    def _download_small(self, client: OssClient, pool: ThreadPoolExecutor) -> None:
        small = [file for file in self.files if not file.large]
        for file in small:
            make_parents(self.model_dir, file.name)
        _run_all(pool, [partial(self._download_one, client, file) for file in small])

    def _download_one(self, client: OssClient, file: PreparedFile) -> None:
        if self._stop_downloads.is_set():
            return  # another download failed: this one is cancelled
        self.progress.small_started(file.name)
        try:
            client.download_to_file(file.info.bucket, file.info.key, file.path, file.info)
        except BaseException as exc:
            self.progress.small_failed(file.name, exc)
            self._stop_downloads.set()
            raise
        self.progress.small_done(file.name)


# --- helpers --------------------------------------------------------------------------------------------


def _is_large(info: ObjectInfo, config: Config) -> bool:
    # An empty file is always small: a segment of 0 bytes cannot be mapped, and there is nothing to stream.
    return info.size > 0 and info.size >= config.small_file_bytes


class _HeaderReads:
    """The large ``.safetensors`` files' headers, read on ``pool`` (from a peer's copy where another live
    directory fetches the same object) while the caller goes on; :meth:`tensors` waits for them.

    Close it on every path (idempotent): it waits for the reads still running and closes the peers.
    """

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        client: OssClient,
        namespace: str,
        heads: Sequence[ObjectInfo],
        config: Config,
    ) -> None:
        self._keys = [info.key for info in heads]
        self._peers: list[PeerSource | None] = []
        self._futures: list[Future[dict[str, tuple[int, int]] | None]] = []
        if not heads:
            return
        waits = {"owner_check_s": config.owner_check_s, "wait_timeout_s": config.wait_timeout_s}
        self._peers = PeerSource.for_objects(namespace, heads, config.cache_dir, **waits)
        try:
            for info, peer in zip(heads, self._peers, strict=True):
                fetch = _peer_or(peer, client.make_fetch_into(info))
                self._futures.append(pool.submit(fetch_tensor_ranges, fetch, info))
        except BaseException:
            self.close()
            raise

    def tensors(self) -> dict[str, dict[str, tuple[int, int]] | None]:
        """Per object key, its tensors' byte ranges (None: not a safetensors file, or unreadable).

        Raises:
            Exception: what a read raised beyond the request errors ``fetch_tensor_ranges`` turns into None.
        """
        try:
            return {key: future.result() for key, future in zip(self._keys, self._futures, strict=True)}
        finally:
            self.close()

    def close(self) -> None:
        for future in self._futures:
            future.cancel()
        wait_futures(self._futures)
        peers, self._peers = self._peers, []
        for peer in peers:
            if peer is not None:
                peer.close()


def _peer_or(peer: PeerSource | None, fetch: FetchInto) -> FetchInto:
    return fetch if peer is None else peer.fetch_into(fetch)


def _run_all(pool: ThreadPoolExecutor, tasks: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run every task in the pool; the first error cancels the rest (those not started) and is raised."""
    futures: list[Future[Any]] = [pool.submit(task) for task in tasks]
    done, pending = wait_futures(futures, return_when=FIRST_EXCEPTION)
    for future in futures:
        if future in done and future.exception() is not None:
            for other in pending:
                other.cancel()
            # The ones already running finish (a download cannot be interrupted safely): wait for them,
            # so nothing writes into the directory after the caller starts cleaning up.
            wait_futures(pending)
            raise future.exception()  # type: ignore[misc]
    return [future.result() for future in futures]


def _unlink_link(path: str, target: str) -> None:
    # Only our own symlink: if something else took the name meanwhile it is left alone.
    with contextlib.suppress(FileNotFoundError):
        if os.path.islink(path) and os.readlink(path) == target:
            os.unlink(path)


def _verdict(handle: ObjectHandle) -> str | None:
    buffer = handle.buffer
    if buffer.complete_and_verified:
        return STATE_CACHED
    try:
        buffer.check_usable()
    except IntegrityError:
        return STATE_FAILED
    except ConnectorError:
        return None
    return None


def _install_hooks() -> None:
    hooks.install()


def _uninstall_hooks() -> None:
    hooks.uninstall()


def _stderr_is_a_terminal() -> bool:
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False
