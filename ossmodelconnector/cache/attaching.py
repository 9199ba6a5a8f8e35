"""Reading a directory that another process prepared: the registry's fallback and the fork switch.

::

    enable(["/models/qwen"])            (the start-up entry point, from OSSMC_PREPARED_DIRS)
        registry.set_fallback(dirs, resolve), then for each directory now: read
        .ossmodelconnector/manifest.json, AttachedCache(state table, writable: waits post demands),
        register an AttachedFile for every large file (with its identity: any spelling of it is seen)
    open("/models/qwen/model-00001.safetensors")  ── hook ── registry.lookup
        -> AttachedFile.wait(range): futex waits on the owner's chunk states
        (a directory that had no manifest yet is attached by resolve(path) at the first lookup under it)

    fork() in a process that prepared a directory
        after_in_child: every registered ObjectHandle (its fetch threads did not survive) is replaced
        by a AttachedFile of the parent's table, attached on first use

    a lazy directory (its table's LAZY flag): its owner fetches a file when the owner opens it and
        evicts it again, so another process would read zeros. It is refused: attach_directory (an
        explicit prepare of it elsewhere) raises CacheError; a lookup under OSSMC_PREPARED_DIRS, and a
        forked child's lazy files, register a stand-in whose every wait raises CacheError (small files
        still read as the plain files they are)

Other paths never reach this module.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ossmodelconnector.cache import registry
from ossmodelconnector.cache.attached import AttachedCache, AttachedFile
from ossmodelconnector.cache.manifest import Manifest, find_manifest, manifest_path, read_manifest
from ossmodelconnector.cache.state_table import FLAG_LAZY
from ossmodelconnector.config import DEFAULT_OWNER_CHECK_S, DEFAULT_WAIT_TIMEOUT_S
from ossmodelconnector.errors import CacheError
from ossmodelconnector.objects import mtime_ns

__all__ = [
    "AttachSettings",
    "attach_directory",
    "attached_directories",
    "detach_directory",
    "disable",
    "enable",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttachSettings:
    """How readers of another process's directory wait.

    Args:
        owner_check_s: a waiting reader notices a dead owner within this many seconds.
        wait_timeout_s: seconds a read waits for its bytes before a timeout error.
    """

    owner_check_s: float = DEFAULT_OWNER_CHECK_S
    wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S


_lock = threading.Lock()
_resolving = threading.local()
_settings = AttachSettings()
# directory -> its attached cache (None: looked, nothing to attach: no manifest, or no large file)
_attached: dict[str, AttachedCache | None] = {}
# Lazy directories of other processes, with the refusal: their large files raise it when read.
_refused: dict[str, str] = {}
# An exported directory with its symlinks resolved -> the directory as exported.
_spellings: dict[str, str] = {}


def enable(directories: Sequence[str], settings: AttachSettings | None = None) -> None:
    """Serve reads under ``directories`` (prepared by another process) through their shared cache.

    Each directory's manifest is read and its state table mapped now (a few small reads), so that its
    files are known by identity from the start; a directory that has none yet is looked at again on the
    first lookup of a path under it.

    Args:
        directories: absolute model directories.
        settings: how readers wait (default :class:`AttachSettings`).
    """
    global _settings, _spellings
    canonical = [os.path.abspath(d) for d in directories]
    # The same directory with its symlinks resolved (a symlinked parent, as volume mounts have): reads
    # by either spelling attach it once, under the spelling it was exported with.
    resolved = {os.path.realpath(d): d for d in canonical if os.path.realpath(d) != d}
    with _lock:
        if settings is not None:
            _settings = settings
        _spellings = resolved
    registry.set_fallback([*canonical, *resolved], _resolve)
    # Attached now, not at the first read under them: a file registered with its identity is recognized
    # by any spelling (a symlinked parent, a bind mount, /proc/self/cwd), which a path prefix cannot be.
    for directory in canonical:
        _resolving.active = True  # the manifest is read through the hooks: as a plain file
        try:
            _attach_once(directory)
        finally:
            _resolving.active = False
    log.debug("reads under %s go through the caches of the processes that prepared them", directories)


def disable() -> None:
    """Stop serving other processes' directories: unregister their files and unmap their tables."""
    registry.set_fallback([], None)
    _spellings.clear()
    with _lock:
        attached = list(_attached.items())
        _attached.clear()
        refused = set(_refused)
        _refused.clear()
    for directory, cache in attached:
        if cache is not None or directory in refused:
            _unregister_under(directory)
        if cache is not None:
            cache.close()


def attached_directories() -> list[str]:
    """The directories whose caches this process has attached (after a first read under them)."""
    with _lock:
        return sorted(d for d, cache in _attached.items() if cache is not None)


def attach_directory(model_dir: str, settings: AttachSettings | None = None) -> AttachedCache | None:
    """Attach ``model_dir``'s cache now and register its large files (idempotent).

    Args:
        model_dir: an absolute directory prepared by another (live) process.
        settings: how readers wait (default: those given to :func:`enable`).

    Returns:
        The attached cache, or None when the directory has no manifest (no large files, not prepared).

    Raises:
        CacheError: an invalid manifest or table, or a lazy directory (only its owner may read it).
    """
    directory = os.path.normpath(model_dir)
    with _lock:
        if directory in _refused:  # a lookup under it found it lazy already
            raise CacheError(_refused[directory])
        if directory in _attached:
            return _attached[directory]
        cache = _attach(directory, settings or _settings)
        _attached[directory] = cache
        return cache


def detach_directory(model_dir: str) -> None:
    """Unregister ``model_dir``'s files and unmap its table (a later read under it attaches again)."""
    directory = os.path.normpath(model_dir)
    with _lock:
        cache = _attached.pop(directory, None)
        refused = _refused.pop(directory, None) is not None
    if cache is not None or refused:
        _unregister_under(directory)
    if cache is not None:
        cache.close()


# --- internals ------------------------------------------------------------------------------------------


def _resolve(path: str) -> registry.WaitableFile | None:
    if getattr(_resolving, "active", False):
        return None  # the manifest read below goes through the hooks too: it is a plain file
    directory = next((d.rstrip("/") for d in registry.fallback_directories() if path.startswith(d)), None)
    if directory is None:
        return None
    exported = _spellings.get(directory, directory)
    _resolving.active = True
    try:
        _attach_once(exported)
    finally:
        _resolving.active = False
    return registry.lookup_registered(exported + path[len(directory) :])


def _attach_once(directory: str) -> None:
    with _lock:
        if directory not in _attached:
            try:
                _attached[directory] = _attach(directory, _settings)
            except _LazyDirectory as exc:
                # Never the plain file: its bytes are the owner's alone (an evicted or unopened file reads
                # as zeros). Each large file raises the refusal when read; small files read as usual.
                for relative, entry in exc.manifest.files.items():
                    path = os.path.join(directory, *relative.split("/"))
                    stand_in = _Refused(path, entry.size, str(exc))
                    registry.register_file(path, stand_in, mtime_ns=mtime_ns(entry.last_modified))
                _attached[directory] = None
                _refused[directory] = str(exc)
                log.warning("%s", exc)
            except (OSError, CacheError) as exc:
                # Logged once; the path then reads as a plain file (small files are complete on disk).
                log.warning("%s: cannot attach the shared cache of this directory: %s", directory, exc)
                _attached[directory] = None


def _attach(directory: str, settings: AttachSettings) -> AttachedCache | None:
    path = manifest_path(directory)
    try:
        manifest = read_manifest(path)
    except FileNotFoundError:
        return None
    cache = AttachedCache.from_manifest(path, writable=True)
    try:
        if cache.table.flags() & FLAG_LAZY:
            raise _LazyDirectory(
                f"{directory} was prepared lazily by process {cache.table.owner_pid}: its large files are "
                "fetched when that process opens them and evicted again, so process "
                f"{os.getpid()} would read zeros and may not read them; read them in process "
                f"{cache.table.owner_pid}, or prepare the directory without lazy=True to share it with other "
                "processes",
                manifest,
            )
        for relative, entry in manifest.files.items():
            remote = cache.file(
                entry.index, owner_check_s=settings.owner_check_s, wait_timeout_s=settings.wait_timeout_s
            )
            registry.register_file(
                os.path.join(directory, *relative.split("/")), remote, mtime_ns=mtime_ns(entry.last_modified)
            )
    except BaseException:
        _unregister_under(directory)
        cache.close()
        raise
    log.debug("%s: attached %s (%d large files)", directory, manifest.state_table, len(manifest.files))
    return cache


def _unregister_under(directory: str) -> None:
    prefix = os.path.join(directory, "")
    for path in registry.registered_files():
        if path.startswith(prefix):
            registry.unregister_file(path)


class _LazyDirectory(CacheError):
    """A lazy directory another process prepared: refused here (the manifest, for the stand-ins)."""

    def __init__(self, message: str, manifest: Manifest) -> None:
        super().__init__(message)
        self.manifest = manifest

    def __reduce__(self) -> tuple[Any, ...]:  # crosses processes as the CacheError it is
        return (CacheError, (str(self),))


class _Refused:
    """Stands in for a large file this process must not read (another process's lazy directory)."""

    def __init__(self, path: str, size: int, message: str) -> None:
        self.path = path
        self.size = size
        self._message = message

    def wait(self, start: int, end: int, timeout_s: float | None = None) -> None:
        raise CacheError(f"{self.path}: {self._message}")

    def wait_all(self, timeout_s: float | None = None) -> None:
        raise CacheError(f"{self.path}: {self._message}")


class _AfterFork:
    """Stands in for an owner's handle in a forked child until its first wait attaches the table."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self._remote: AttachedFile | None = None

    def _target(self) -> AttachedFile:
        if self._remote is None:
            found = find_manifest(self.path)
            if found is None:
                raise CacheError(
                    f"{self.path}: the prepared directory of this process's parent has no manifest any "
                    "more (the parent closed it); prepare the directory again"
                )
            manifest_file, relative = found
            directory = str(manifest_file.parent.parent)
            cache = attach_directory(directory)
            entry = read_manifest(manifest_file).files.get(relative)
            if entry is None or cache is None:
                raise CacheError(f"{self.path}: not in its directory's manifest; prepare it again")
            self._remote = cache.file(
                entry.index, owner_check_s=_settings.owner_check_s, wait_timeout_s=_settings.wait_timeout_s
            )
        return self._remote

    def wait(self, start: int, end: int, timeout_s: float | None = None) -> None:
        self._target().wait(start, end, timeout_s)

    def wait_all(self, timeout_s: float | None = None) -> None:
        self._target().wait_all(timeout_s)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    registry.reset_lock_after_fork()
    # The parent's fetch threads are gone: its handles would start fetching again in this process. Wait
    # on the parent's shared chunk states instead (the parent, still alive, keeps fetching).
    handle_type = getattr(sys.modules.get("ossmodelconnector.fetch.object_handle"), "ObjectHandle", None)
    # Looked up, not imported: the lazy files' module is a layer above this one (loaded if in use).
    lazy_type = getattr(sys.modules.get("ossmodelconnector.directory.lazy.residency"), "LazyFile", None)
    for path, waitable in registry.registered_files().items():
        if handle_type is not None and isinstance(waitable, handle_type):  # an eager directory's handle
            registry.register_file(path, _AfterFork(path, waitable.size))
        elif lazy_type is not None and isinstance(waitable, lazy_type):
            # The parent fetches and evicts a lazy file for its own readers: a child reading it would
            # read zeros, or start fetches into the parent's segment behind the parent's back.
            parent = os.getppid()
            registry.register_file(
                path,
                _Refused(
                    path,
                    waitable.size,
                    f"this process is a fork of process {parent}, which prepared its directory lazily: its "
                    f"large files are fetched when process {parent} opens them and evicted again, so this "
                    f"process may not read them; read them in process {parent}, or prepare the directory "
                    "without lazy=True to share it with child processes",
                ),
            )


os.register_at_fork(after_in_child=_after_fork_in_child)
