"""Removing what owners that died (SIGKILL, the OOM killer) left in ``/dev/shm``: ``ossmodelconnector gc``.

::

    sweep([cacheDir])            one listing of /dev/shm (and of cacheDir when it is another directory)
        state tables of this user   owner dead (pid + start time) and no live process holding it: removed
        data segments of this user  listed by no live table and held by no live process: removed
        prepare locks, users files  locked by nobody: removed
        -> [Removed(path, kind, nbytes, why)]

Runs at every ``SharedCache.create`` (so every prepare cleans up after the dead) and from the ``gc``
command. Only names of this user (``ossmc-<kind>-<uid>-...``, and the names without a uid that earlier
versions made) are looked at, only regular files of this user with mode 0600 are touched, and every
removal goes through :func:`~ossmodelconnector.cache.segment_hold.unlink_unheld`: a file a live process
holds (its ``flock``) is never removed, whatever a table says. A table too new to be readable (created a
moment ago, its header not written yet) is left for a later sweep.
"""

from __future__ import annotations

import logging
import os
import string
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ossmodelconnector.cache.manifest import OWN_DIR_NAME
from ossmodelconnector.cache.segment_hold import unlink_unheld
from ossmodelconnector.cache.segments import (
    DATA_SEGMENT_PREFIX,
    LOCK_PREFIX,
    STATE_DIR,
    STATE_TABLE_PREFIX,
    USERS_PREFIX,
    attach_segment,
    foreign_problems,
    lstat_or_none,
    own_prefix,
    process_alive,
    real_directory,
    segment_path,
    squatted,
)
from ossmodelconnector.cache.state_table import StateTable
from ossmodelconnector.errors import CacheError

__all__ = [
    "DEFAULT_UNREADABLE_GRACE_S",
    "Removed",
    "TableOwner",
    "read_table_owner",
    "recover_table",
    "sweep",
]

log = logging.getLogger(__name__)

DEFAULT_UNREADABLE_GRACE_S = 60.0
"""A state table that cannot be read is left alone for this long after its creation: its owner may be
writing its header right now. Older, it is a crash's leftover."""

_LEGACY_HASH = 32  # names of earlier versions: the prefix and 32 hex digits, no uid
_HEX = frozenset(string.hexdigits.lower())


@dataclass(frozen=True)
class Removed:
    """One file a sweep removed.

    Args:
        path: the file.
        kind: ``"state table"``, ``"data segment"``, ``"prepare lock"`` or ``"users file"``.
        nbytes: the memory (or disk) it held: its allocated blocks.
        why: why it was stale.
    """

    path: str
    kind: str
    nbytes: int
    why: str


@dataclass(frozen=True)
class TableOwner:
    """Who owns a state table and which data segments it lists (:func:`read_table_owner`)."""

    pid: int
    start_time: int
    segments: tuple[str, ...]
    placement: str

    @property
    def alive(self) -> bool:
        """Whether the owning process still runs."""
        return process_alive(self.pid, self.start_time)


def read_table_owner(name: str) -> TableOwner | None:
    """The owner of state table ``name`` in ``/dev/shm``, or None when it is gone or cannot be read.

    Raises:
        CacheError: the file is not ours (another user's, another mode, a symlink).
    """
    try:
        segment = attach_segment(STATE_DIR, name)
    except FileNotFoundError:
        return None
    try:
        if segment.mapping is None:
            return None
        try:
            table = StateTable(segment.mapping, segment.path)
        except CacheError:
            return None
        try:
            return TableOwner(
                table.owner_pid,
                table.owner_start_time,
                tuple(entry.segment_name for entry in table.files()),
                table.placement,
            )
        except (CacheError, ValueError):
            return None
        finally:
            table.release()
    finally:
        segment.close()


def sweep(cache_dirs: Iterable[str] = ()) -> list[Removed]:
    """Remove this user's files in ``/dev/shm`` (and ``cache_dirs``) that only dead processes used.

    Args:
        cache_dirs: other directories data segments may be in (``cacheDir``); ``/dev/shm`` always.

    Returns:
        What was removed, in the order it was removed. Files that could not be inspected or removed are
        logged (DEBUG) and left.
    """
    state_dir = real_directory(STATE_DIR)
    directories = [state_dir, *(d for d in dict.fromkeys(map(real_directory, cache_dirs)) if d != state_dir)]
    listings = {directory: _listing(directory) for directory in directories}
    removed: list[Removed] = []
    live: set[str] = set()  # data segments a live table lists
    for name in _ours(listings[state_dir], STATE_TABLE_PREFIX):
        _sweep_table(state_dir, name, live, removed)
    for directory in directories:
        for name in _ours(listings[directory], DATA_SEGMENT_PREFIX):
            if name not in live:
                _remove(segment_path(directory, name), "data segment", "no live process holds it", removed)
    for prefix, kind in ((LOCK_PREFIX, "prepare lock"), (USERS_PREFIX, "users file")):
        for name in _ours(listings[state_dir], prefix):
            _remove(segment_path(state_dir, name), kind, "no live process holds it", removed)
    return removed


def _sweep_table(directory: str, name: str, live: set[str], removed: list[Removed]) -> None:
    path = segment_path(directory, name)
    try:
        owner = read_table_owner(name)
    except (OSError, CacheError) as exc:
        log.debug("sweep: left %s alone: %s", path, exc)
        return
    if owner is None:
        info = lstat_or_none(path)
        if info is not None and time.time() - info.st_ctime > DEFAULT_UNREADABLE_GRACE_S:
            _remove(path, "state table", "unreadable (a crash while it was created)", removed)
        return
    if owner.alive:
        live.update(owner.segments)
        return
    why = f"left by process {owner.pid}, which died without cleaning up"
    if not _remove(path, "state table", why, removed):
        live.update(owner.segments)  # held by a live process after all (another pid namespace...)


def _remove(path: str, kind: str, why: str, removed: list[Removed]) -> bool:
    info = lstat_or_none(path)
    if info is None or foreign_problems(info):
        return False  # gone, or not ours: never touched
    try:
        gone = unlink_unheld(path)
    except OSError as exc:
        log.debug("sweep: cannot remove %s: %s", path, exc)
        return False
    if gone is None:
        return False
    removed.append(Removed(path, kind, gone.st_blocks * 512, why))
    log.info("removed the %s %s (%d bytes): %s", kind, path, gone.st_blocks * 512, why)
    return True


def _listing(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError as exc:
        log.debug("sweep: cannot list %s: %s", directory, exc)
        return []


def _ours(names: Sequence[str], kind: str) -> list[str]:
    prefix = own_prefix(kind)
    return [name for name in names if name.startswith(prefix) or _legacy(name, kind)]


def _legacy(name: str, kind: str) -> bool:
    """A name an earlier version made: ``<kind>`` and 32 hex digits, no uid (ownership is checked later)."""
    rest = name[len(kind) :] if name.startswith(kind) else ""
    return len(rest) == _LEGACY_HASH and set(rest) <= _HEX


def recover_table(name: str, model_dir: str, cache_dir: str, disk_dir_name: str) -> None:
    """Remove the state table ``name`` (ours) that a dead owner of ``model_dir`` left, with its data
    segments that no live process holds; refuse a live owner's.

    Args:
        name: the table, in ``/dev/shm``.
        model_dir: the directory it was made for (for messages, and its disk fallback).
        cache_dir: where its data segments are when its placement was ``shm``.
        disk_dir_name: the disk fallback's folder under ``model_dir/.ossmodelconnector``.

    Raises:
        CacheError: a live process owns or holds the table (the message names it and the fix).
    """
    path = segment_path(STATE_DIR, name)
    owner = read_table_owner(name)
    if owner is not None and owner.alive:
        who = (
            f"this process ({owner.pid}), which prepared it already and has not closed it"
            if owner.pid == os.getpid()
            else f"the live process {owner.pid}"
        )
        raise CacheError(
            f"{model_dir} is being prepared by {who} (state table {path}): close that "
            "connector (or directory) first, or prepare into another model_dir"
        )
    if unlink_unheld(path) is None and lstat_or_none(path) is not None:
        raise CacheError(
            f"{model_dir}: its state table {path} names a process that is gone, yet a live process "
            "holds the file (one in another pid namespace sharing /dev/shm?): close it there, or "
            "prepare into another model_dir"
        )
    if owner is None:
        log.warning("%s: replaced the unreadable state table %s", model_dir, path)
        return
    directory = (
        cache_dir if owner.placement == "shm" else os.path.join(model_dir, OWN_DIR_NAME, disk_dir_name)
    )
    removed = 0
    for segment_name in owner.segments:
        data_path = segment_path(directory, segment_name)
        if squatted(data_path) is None and unlink_unheld(data_path) is not None:
            removed += 1  # nobody holds it: no other directory shares it
    log.warning(
        "%s: removed the state table and %d data file(s) left by process %d, which died without cleaning up",
        model_dir,
        removed,
        owner.pid,
    )
