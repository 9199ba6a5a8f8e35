"""The process-wide table of files still arriving, which the reader hooks consult on every open.

``lookup`` runs on every ``open()`` in the process, so for a path outside every registered directory it
answers with string operations only: a ``str.startswith`` against the tuple of registered directories
(no syscall, no normalization). Relative paths need ``os.getcwd()``, and only when their last component
is the name of a registered file. Updates replace an immutable snapshot under a lock, so lookups take
no lock.

A file is registered under the path of its entry in the prepared directory, that path with the
directory's symlinks resolved, and its data segment (the entry's ``realpath``, what ``open`` of the
symlink really opens: ``/dev/shm/ossmc-d-...``), and by what it is: the ``(st_dev, st_ino)`` of that
segment. A path outside every registered directory whose last component is the name of a registered
file (an alias: a symlinked parent, ``/proc/self/cwd/...``, a bind mount) costs one ``stat`` and is
recognized by that identity; any other path still costs string operations only.

A process that did not prepare a directory itself (a vLLM worker, a ``spawn`` child) learns about it
through :func:`set_fallback`: a path under one of the fallback directories that is not registered yet is
handed to the resolver once (it attaches the directory's state table and registers its files); every
other path still costs one ``str.startswith``.

A file registered with a modification time (its object's ``Last-Modified``) is also listed by identity
in :func:`file_times`, which the ``os.stat`` hook (``hooks/file_times.py``) consults: one dictionary
lookup per ``stat``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "Resolver",
    "WaitableFile",
    "fallback_directories",
    "file_times",
    "lookup",
    "lookup_descriptor",
    "lookup_registered",
    "opened_is_registered",
    "path_is_registered",
    "register_file",
    "registered_directories",
    "registered_files",
    "reset_lock_after_fork",
    "set_fallback",
    "unregister_file",
]


class WaitableFile(Protocol):
    """A file whose bytes may not all be there yet: wait for a range before reading it."""

    @property
    def size(self) -> int:
        """The file's full size in bytes."""
        ...

    def wait(self, start: int, end: int, timeout_s: float | None = None) -> None:
        """Return once bytes ``[start, end)`` are readable; raise the fetch's error or a timeout."""
        ...

    def wait_all(self, timeout_s: float | None = None) -> None:
        """Return once the whole file is readable and verified."""
        ...


@dataclass(frozen=True)
class _Snapshot:
    entries: dict[str, WaitableFile] = field(default_factory=dict)
    prefixes: tuple[str, ...] = ()  # registered directories, each ending in "/"
    basenames: frozenset[str] = frozenset()
    directories: tuple[str, ...] = ()
    fallback: tuple[str, ...] = ()  # fallback directories, each ending in "/"
    all_prefixes: tuple[str, ...] = ()  # prefixes + fallback
    identities: dict[tuple[int, int], WaitableFile] = field(default_factory=dict)  # (st_dev, st_ino)
    times: dict[tuple[int, int], int] = field(default_factory=dict)  # (st_dev, st_ino) -> st_mtime_ns


Resolver = Callable[[str], "WaitableFile | None"]
"""Called with an absolute, normalized path under a fallback directory that is not registered; returns
the waitable for it (registering what it found) or None."""

_lock = threading.Lock()
_snapshot = _Snapshot()
# registered path -> (its keys in the prepared directory, the data segment it links to)
_keys_by_path: dict[str, tuple[tuple[str, ...], str]] = {}
_identity_by_path: dict[str, tuple[int, int]] = {}
_time_by_path: dict[str, int] = {}
_files: dict[str, WaitableFile] = {}
_fallback_directories: tuple[str, ...] = ()
_resolver: Resolver | None = None


def _keys(absolute: str) -> tuple[tuple[str, ...], str]:
    directory, name = os.path.split(absolute)
    model_side = tuple(dict.fromkeys([absolute, os.path.join(os.path.realpath(directory), name)]))
    return model_side, os.path.realpath(absolute)


def _rebuild() -> None:
    global _snapshot
    entries: dict[str, WaitableFile] = {}
    model_side: set[str] = set()
    for path, (keys, segment) in _keys_by_path.items():
        waitable = _files[path]
        for key in (*keys, segment):
            entries[key] = waitable
        model_side.update(os.path.dirname(key) for key in keys)
    prefixes = tuple(sorted({os.path.join(os.path.dirname(key), "") for key in entries}))
    identities = {identity: _files[path] for path, identity in _identity_by_path.items()}
    times = {
        identity: _time_by_path[path] for path, identity in _identity_by_path.items() if path in _time_by_path
    }
    _snapshot = _Snapshot(
        entries=entries,
        prefixes=prefixes,
        basenames=frozenset(os.path.basename(key) for key in entries),
        directories=tuple(sorted(model_side)),
        fallback=_fallback_directories,
        all_prefixes=prefixes + _fallback_directories,
        identities=identities,
        times=times,
    )


def register_file(
    path: str | os.PathLike[str], waitable: WaitableFile, *, mtime_ns: int | None = None
) -> None:
    """Make reads of ``path`` (and of what it links to) wait through ``waitable``.

    Args:
        path: the entry in the prepared directory (made absolute; usually a symlink to a data segment).
        waitable: what to wait on (the owner's ``ObjectHandle``, or a reader's ``AttachedFile``).
        mtime_ns: the modification time ``os.stat`` reports for the file it links to (its object's
            ``Last-Modified``, in nanoseconds; see :func:`file_times`); None keeps the time registered
            for ``path`` before, if any (a forked child registering stand-ins).
    """
    absolute = os.path.abspath(os.fspath(path))
    keys = _keys(absolute)
    identity = _identity(absolute)
    with _lock:
        _keys_by_path[absolute] = keys
        _files[absolute] = waitable
        if mtime_ns is not None:
            _time_by_path[absolute] = mtime_ns
        if identity is None:
            _identity_by_path.pop(absolute, None)
        else:
            _identity_by_path[absolute] = identity
        _rebuild()


def unregister_file(path: str | os.PathLike[str]) -> None:
    """Forget ``path`` (registered with :func:`register_file`); a no-op when it is not registered."""
    absolute = os.path.abspath(os.fspath(path))
    with _lock:
        if _keys_by_path.pop(absolute, None) is not None:
            del _files[absolute]
            _identity_by_path.pop(absolute, None)
            _time_by_path.pop(absolute, None)
            _rebuild()


def lookup(
    path: str | bytes | os.PathLike[str] | os.PathLike[bytes] | int, *, by_identity: bool = True
) -> WaitableFile | None:
    """The waitable file registered for ``path``, or None (fast for paths that are not registered).

    Args:
        path: what a hook was given: a path (absolute or relative to the current directory, str, bytes
            or path-like) or a file descriptor (always None: hooks cannot tell what an fd is cheaply).
        by_identity: also recognize a registered file by another spelling (a symlinked parent,
            ``/proc/self/cwd``, a bind mount): a path outside the registered directories whose last
            component is a registered name costs one ``stat``. A caller that another check always follows
            (the ``open`` hook: the audit hook sees the same path) passes False.

    Returns:
        The registered file, or None.
    """
    snapshot = _snapshot
    if not snapshot.all_prefixes or isinstance(path, int):
        return None
    if isinstance(path, str):
        text = path
    else:
        try:
            raw = os.fspath(path)
        except TypeError:
            return None
        text = os.fsdecode(raw) if isinstance(raw, bytes) else raw
    if not text.startswith("/"):
        if text.rpartition("/")[2] not in snapshot.basenames and not snapshot.fallback:
            return None
        text = os.path.join(os.getcwd(), text)
    if not text.startswith(snapshot.all_prefixes):
        # Outside the registered directories only a registered name can be ours: one set lookup decides
        # for unrelated paths (no syscall, no normalization).
        if text.rpartition("/")[2] not in snapshot.basenames:
            return None
        if "/." in text or "//" in text:
            text = os.path.normpath(text)  # "/model/./x", "/tmp/../model/x": normalize, then check again
            if text.startswith(snapshot.all_prefixes):
                return _registered(snapshot, text)
        return _by_identity(snapshot, text) if by_identity else None
    return _registered(snapshot, text)


def _registered(snapshot: _Snapshot, text: str) -> WaitableFile | None:
    found = snapshot.entries.get(text)
    if found is None:
        text = os.path.normpath(text)
        found = snapshot.entries.get(text)
    if found is None and snapshot.fallback and text.startswith(snapshot.fallback):
        resolver = _resolver
        if resolver is not None:
            found = resolver(text)
    return found


def _by_identity(snapshot: _Snapshot, text: str) -> WaitableFile | None:
    identity = _identity(text)
    return None if identity is None else snapshot.identities.get(identity)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except (OSError, ValueError):  # missing, a dangling link, a NUL in the name
        return None
    return info.st_dev, info.st_ino


def file_times() -> dict[tuple[int, int], int]:
    """``(st_dev, st_ino)`` of each registered file's data -> the ``st_mtime_ns`` to report for it.

    The snapshot itself, not a copy (empty when nothing is registered with a time): the ``os.stat``
    hook calls this on every ``stat`` of the process. Never modify it.
    """
    return _snapshot.times


def lookup_descriptor(fd: int) -> WaitableFile | None:
    """The registered file an open descriptor refers to (by ``fstat``), or None.

    For opens the path-based lookup cannot follow (``os.open(name, dir_fd=...)``); costs one ``fstat``,
    so callers ask only when a directory is registered.
    """
    identities = _snapshot.identities
    if not identities:
        return None
    try:
        info = os.fstat(fd)
    except OSError:
        return None
    return identities.get((info.st_dev, info.st_ino))


def path_is_registered(
    path: str | bytes | os.PathLike[str] | os.PathLike[bytes], waitable: WaitableFile
) -> bool:
    """Whether ``path``, by which ``waitable`` was found, still leads to the file registered for it.

    False when the entry was replaced after it was registered; True when it was not, or when the registry
    holds no identity for ``waitable``. A reader that opens the path itself (natively) is checked here,
    just before.
    """
    identities = _snapshot.identities
    if not any(known is waitable for known in identities.values()):
        return True
    raw = os.fspath(path)
    identity = _identity(os.fsdecode(raw) if isinstance(raw, bytes) else raw)
    return identity is not None and identities.get(identity) is waitable


def opened_is_registered(fd: int, waitable: WaitableFile) -> bool:
    """Whether descriptor ``fd``, opened by the path ``waitable`` is registered under, is still that file.

    False when the entry was replaced after it was registered (the descriptor is another file); True when
    it is, or when the registry holds no identity for ``waitable`` (nothing to compare with).
    """
    identities = _snapshot.identities
    if not any(known is waitable for known in identities.values()):
        return True
    return lookup_descriptor(fd) is waitable


def set_fallback(directories: Sequence[str], resolver: Resolver | None) -> None:
    """Let :func:`lookup` ask ``resolver`` about unregistered paths under ``directories``.

    Args:
        directories: absolute directories (prepared by another process); ``[]`` turns the fallback off.
        resolver: called once per unregistered path under them (it should register what it finds, so
            that the next lookup of that path is a plain dictionary hit, and remember misses itself).
    """
    global _fallback_directories, _resolver
    with _lock:
        _fallback_directories = tuple(sorted({os.path.join(os.path.normpath(d), "") for d in directories}))
        _resolver = resolver if _fallback_directories else None
        _rebuild()


def fallback_directories() -> tuple[str, ...]:
    """The fallback directories given to :func:`set_fallback`, each ending in ``/``."""
    return _snapshot.fallback


def lookup_registered(path: str) -> WaitableFile | None:
    """The waitable registered under exactly ``path`` (absolute, normalized); never asks the fallback."""
    return _snapshot.entries.get(path)


def registered_files() -> dict[str, WaitableFile]:
    """Every registered entry path and its waitable (a copy)."""
    with _lock:
        return dict(_files)


def reset_lock_after_fork() -> None:
    """Give a forked child a fresh lock (another thread of the parent may have held it across fork)."""
    global _lock
    _lock = threading.Lock()


def registered_directories() -> list[str]:
    """The directories holding registered entries (as given, and with their symlinks resolved), sorted."""
    return list(_snapshot.directories)
