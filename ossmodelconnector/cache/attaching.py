"""Reading a directory that another process prepared: the registry's fallback and the fork switch.

::

    enable(["/models/qwen"])            (the start-up entry point, from OSSMC_PREPARED_DIRS)
        registry.set_fallback(dirs, resolve)
    open("/models/qwen/model-00001.safetensors")  ── hook ── registry.lookup: not registered
        resolve(path): first time for /models/qwen: read .ossmodelconnector/manifest.json,
                       AttachedCache(state table, writable: waits post demands), register a
                       AttachedFile for every large file; a directory without a manifest is remembered
        -> AttachedFile.wait(range): futex waits on the owner's chunk states

    fork() in a process that prepared a directory
        after_in_child: every registered ObjectHandle (its fetch threads did not survive) is replaced
        by a AttachedFile of the parent's table, attached on first use

Only the first lookup under a directory reads its manifest; other paths never reach this module.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ossmodelconnector.cache import registry
from ossmodelconnector.cache.attached import AttachedCache, AttachedFile
from ossmodelconnector.cache.manifest import find_manifest, manifest_path, read_manifest
from ossmodelconnector.cache.state_table import FLAG_LAZY
from ossmodelconnector.config import DEFAULT_OWNER_CHECK_S, DEFAULT_WAIT_TIMEOUT_S
from ossmodelconnector.errors import CacheError

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


def enable(directories: Sequence[str], settings: AttachSettings | None = None) -> None:
    """Serve reads under ``directories`` (prepared by another process) through their shared cache.

    Nothing is read now: a directory's manifest is read on the first lookup of a path under it.

    Args:
        directories: absolute model directories.
        settings: how readers wait (default :class:`AttachSettings`).
    """
    global _settings
    with _lock:
        if settings is not None:
            _settings = settings
    registry.set_fallback([os.path.abspath(d) for d in directories], _resolve)
    log.debug("reads under %s go through the caches of the processes that prepared them", directories)


def disable() -> None:
    """Stop serving other processes' directories: unregister their files and unmap their tables."""
    registry.set_fallback([], None)
    with _lock:
        attached = list(_attached.items())
        _attached.clear()
    for directory, cache in attached:
        if cache is not None:
            _unregister_under(directory)
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
        CacheError: an invalid manifest or table.
    """
    directory = os.path.normpath(model_dir)
    with _lock:
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
    if cache is not None:
        _unregister_under(directory)
        cache.close()


# --- internals ------------------------------------------------------------------------------------------


def _resolve(path: str) -> registry.WaitableFile | None:
    if getattr(_resolving, "active", False):
        return None  # the manifest read below goes through the hooks too: it is a plain file
    directory = next((d.rstrip("/") for d in registry.fallback_directories() if path.startswith(d)), None)
    if directory is None:
        return None
    _resolving.active = True
    try:
        _attach_once(directory)
    finally:
        _resolving.active = False
    return registry.lookup_registered(path)


def _attach_once(directory: str) -> None:
    with _lock:
        if directory not in _attached:
            try:
                _attached[directory] = _attach(directory, _settings)
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
            raise CacheError(
                f"{directory} was prepared lazily by process {cache.table.owner_pid}: its files are fetched "
                "and evicted for that process's readers only, so other processes cannot read it through the "
                "cache; prepare it without lazy=True to share it"
            )
        for relative, entry in manifest.files.items():
            remote = cache.file(
                entry.index, owner_check_s=settings.owner_check_s, wait_timeout_s=settings.wait_timeout_s
            )
            registry.register_file(os.path.join(directory, *relative.split("/")), remote)
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
    if handle_type is None:
        return
    for path, waitable in registry.registered_files().items():
        if isinstance(waitable, handle_type):  # an eager directory's handle (lazy files stay as they are)
            registry.register_file(path, _AfterFork(path, waitable.size))


os.register_at_fork(after_in_child=_after_fork_in_child)
