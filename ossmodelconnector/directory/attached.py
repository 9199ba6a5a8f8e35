"""Two processes preparing the same directory at once: one fetches, the other attaches.

::

    connector.prepare_directory(uri, dir)                  (in every process that calls it)
      prepare_lock(dir): flock on /dev/shm/ossmc-l-<uid>-<hash of realpath(dir)>   held until ready
        live_owner(dir, uri, endpoint)?  another live process prepared dir from the same uri
            yes -> AttachedDirectory: register the owner's files as RemoteFiles (no download here)
            no  -> directory.prepare_directory: this process is the owner (a dead owner's files are
                   recovered there)

The lock is held through the owner's whole prepare (listing, cleaning, small files), so the second
process finds either nothing (and prepares) or a complete directory with a live owner (and attaches);
never a half-cleaned one. A process that dies holding the lock releases it (the kernel drops a
``flock`` with its last descriptor): stale-owner recovery needs nothing more. The lock file is unlinked
on release; a waiter that locked an unlinked file notices (another inode at the path) and tries again.
A lock name that another user's file (or a symlink, or a file of another mode) holds is left alone: every
process of the user skips it the same way and locks the next name (``segments.candidate_names``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from typing import Any

from ossmodelconnector import hooks
from ossmodelconnector.cache import attaching
from ossmodelconnector.cache.attached import AttachedCache
from ossmodelconnector.cache.chunk_state import ChunkState
from ossmodelconnector.cache.manifest import manifest_path, read_manifest
from ossmodelconnector.cache.segments import (
    SEGMENT_MODE,
    STATE_DIR,
    candidate_names,
    describe_process,
    describe_user,
    lock_name,
    process_alive,
    warn_squatted,
)
from ossmodelconnector.cache.state_table import FileStatus
from ossmodelconnector.directory.safety import read_owner
from ossmodelconnector.errors import CacheError, ClosedError, RequestTimeoutError

__all__ = [
    "DEFAULT_LOCK_POLL_S",
    "AttachedDirectory",
    "AttachedProgress",
    "live_owner",
    "open_lock_file",
    "prepare_lock",
]

log = logging.getLogger(__name__)

DEFAULT_LOCK_POLL_S = 0.05
"""How often a process waiting for another one's prepare tries the lock again (seconds)."""


def lock_path(model_dir: str) -> str:
    """``/dev/shm/ossmc-l-<uid>-<hash of realpath(model_dir)>``: the first file :func:`prepare_lock` tries."""
    return os.path.join(STATE_DIR, lock_name(model_dir))


def _open_lock(path: str) -> tuple[int, os.stat_result] | str:
    """The lock file at ``path``, opened (created if missing), or why it is not ours to lock."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENXIO, errno.EISDIR):
            try:
                info = os.lstat(path)
            except OSError:
                return f"cannot be opened ({exc.strerror})"
            kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else f"cannot be opened ({exc.strerror})"
            return f"{kind}, owned by {describe_user(info.st_uid)}"
        raise
    info = os.fstat(fd)
    problems = []
    if not stat.S_ISREG(info.st_mode):
        problems.append("not a regular file")
    if info.st_uid != os.geteuid():
        problems.append(f"owned by {describe_user(info.st_uid)}")
    if stat.S_IMODE(info.st_mode) & ~SEGMENT_MODE:
        problems.append(f"mode {stat.S_IMODE(info.st_mode):04o}")
    if problems:
        os.close(fd)
        return ", ".join(problems)
    return fd, info


def open_lock_file(
    model_dir: str,
    squatters: dict[str, str],
    *,
    name: Callable[[str], str] = lock_name,
    what: str = "prepare lock",
) -> tuple[str, int, os.stat_result]:
    """The first of ``model_dir``'s lock file names (``name``: ``lock_name``, ``users_name``) that no
    foreign file holds, opened (created if missing; not locked yet).

    Args:
        model_dir: the directory.
        squatters: collects the names skipped (warned about once each, however often this is called).
        name: computes the first name.
        what: the file's role, for messages.

    Returns:
        ``(path, fd, its status)``.

    Raises:
        CacheError: every name is held by a file that is not ours.
    """
    for candidate in candidate_names(name(model_dir), fresh=False):
        path = os.path.join(STATE_DIR, candidate)
        opened = _open_lock(path)
        if not isinstance(opened, str):
            return path, *opened
        if path not in squatters:
            squatters[path] = opened
            warn_squatted(path, opened, f"the {what} of {model_dir}")
    raise CacheError(
        f"{model_dir}: every name its {what} may take in {STATE_DIR} is held by a file that is not "
        f"ours ({'; '.join(f'{p}: {why}' for p, why in squatters.items())}): remove them"
    )


def _lock_holder(info: os.stat_result) -> str:
    """Who holds the ``flock`` on the file ``info`` describes, from ``/proc/locks``, for messages."""
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                fields = line.split()
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device and fields[4].isdigit():
                    pid = int(fields[4])
                    if pid == os.getpid():
                        return f"this process ({pid}) itself, in another prepare of it"
                    return describe_process(pid)
    except OSError:
        pass
    return "another process"


@contextlib.contextmanager
def prepare_lock(model_dir: str, timeout_s: float) -> Iterator[None]:
    """Hold the node-wide lock on preparing ``model_dir`` (``flock``; released if the process dies).

    Args:
        model_dir: the absolute model directory.
        timeout_s: give up after this many seconds waiting for another process's prepare.

    Raises:
        RequestTimeoutError: another process held it for longer.
        CacheError: every name the lock may take is held by a file that is not ours.
    """
    deadline = time.monotonic() + timeout_s
    squatters: dict[str, str] = {}
    while True:
        path, fd, info = open_lock_file(model_dir, squatters)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RequestTimeoutError(
                        f"{model_dir}: {_lock_holder(info)} has been preparing it for over {timeout_s:g} s "
                        f"(lock {path}); wait for it, stop it, or raise waitTimeoutSeconds"
                    ) from None
                os.close(fd)
                fd = -1
                time.sleep(DEFAULT_LOCK_POLL_S)
                continue
            try:
                current = os.stat(path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                current = -1
            if current == info.st_ino:
                break  # locked, and still the file at the path: ours
            os.close(fd)  # released and unlinked by its holder meanwhile: lock the new one
            fd = -1
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def live_owner(model_dir: str, uri: str, endpoint: str) -> dict[str, Any] | None:
    """The owner record of another live process that prepared ``model_dir`` from ``uri`` at ``endpoint``.

    Returns:
        The record (``pid``...), or None: no record, released, this process, a dead process, or another
        URI or endpoint (then ``prepare_directory`` refuses the directory itself, naming that process).
    """
    record = read_owner(model_dir)
    if record is None or not record.get("active"):
        return None
    pid, start = record.get("pid"), record.get("pid_start")
    if not isinstance(pid, int) or pid == os.getpid() or not isinstance(start, int):
        return None
    if not process_alive(pid, start):
        return None
    if record.get("uri") != uri or record.get("endpoint") != endpoint:
        return None
    return record


class AttachedProgress:
    """``stats()`` figures of an attached directory, read from the owner's state table."""

    def __init__(self, model_dir: str, uri: str, cache: AttachedCache | None, paths: dict[int, str]) -> None:
        self.model_dir = model_dir
        self.uri = uri
        self._cache = cache
        self._paths = paths
        self.started_at = time.time()
        self.closed = False

    @property
    def time_to_first_byte_s(self) -> float | None:
        """Not measured here: the owner fetched the bytes."""
        return None

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per file path: ``{"size", "state", "percent"}`` as the owner's table shows them now."""
        cache = self._cache
        if cache is None or self.closed or cache.table.released:
            return {}
        table = cache.table
        result = {}
        for index, path in self._paths.items():
            entry = table.file(index)
            states = bytes(table.states(index))
            ready = states.count(bytes([ChunkState.READY]))
            if table.file_status(index) == FileStatus.FAILED or bytes([ChunkState.FAILED]) in states:
                state = "failed"
            elif table.file_status(index) == FileStatus.VERIFIED:
                state = "cached"
            elif ready or bytes([ChunkState.FETCHING]) in states:
                state = "fetching"
            else:
                state = "not fetched"
            percent = 100.0 * ready / len(states) if states else 100.0
            result[path] = {"size": entry.size, "state": state, "percent": percent, "attached": True}
        return result

    def summary(self) -> dict[str, Any]:
        """The directory's figures for ``stats()["directories"]`` (``attached``: True)."""
        files = self.snapshot()
        return {
            "uri": self.uri,
            "attached": True,
            "placement": self._cache.table.placement if self._cache and not self.closed else "",
            "files": len(self._paths),
            "large_files": len(self._paths),
            "bytes": sum(file["size"] for file in files.values()),
            "started_at": self.started_at,
            "time_to_first_byte_s": None,
            "failed": sum(1 for file in files.values() if file["state"] == "failed"),
            "closed": self.closed,
        }


class AttachedDirectory:
    """A directory another live process prepared (and keeps fetching), read from this process.

    Made by the connector's ``prepare_directory`` when another process already prepared the same URI into
    the same directory. Nothing is downloaded here: reads wait on the owner's chunk states, and waits on
    chunks not yet in flight ask the owner to fetch them next. When the owner closes (or dies), readers get
    ``ClosedError`` (``OwnerDiedError``); prepare again to become the owner.

    Args:
        model_dir: the absolute directory.
        uri: the ``oss://bucket/prefix/`` it mirrors.
        owner_pid: the process that prepared it.
        settings: how readers wait.

    Raises:
        CacheError: the manifest or state table is invalid.
    """

    def __init__(self, model_dir: str, uri: str, owner_pid: int, settings: attaching.AttachSettings) -> None:
        self.model_dir = model_dir
        self.uri = uri
        self.owner_pid = owner_pid
        self._settings = settings
        self._closed = False
        cache = attaching.attach_directory(model_dir, settings)
        paths: dict[int, str] = {}
        if cache is not None:
            manifest = read_manifest(manifest_path(model_dir))
            paths = {
                entry.index: os.path.join(model_dir, *relative.split("/"))
                for relative, entry in manifest.files.items()
            }
        self._remote = {
            path: cache.file(
                index, owner_check_s=settings.owner_check_s, wait_timeout_s=settings.wait_timeout_s
            )
            for index, path in paths.items()
            if cache is not None
        }
        self.placement = cache.table.placement if cache is not None else ""
        self.files = tuple(sorted(paths.values()))
        self.progress = AttachedProgress(model_dir, uri, cache, paths)
        hooks.install()
        log.info("%s: attached to the cache that process %d is filling from %s", model_dir, owner_pid, uri)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._closed

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until every large file is READY and verified by the owner.

        Raises:
            OwnerDiedError: the owner died first.
            ClosedError: the owner closed the directory, or this one is closed.
            IntegrityError: a file's CRC-64 differs from the server's.
            RequestTimeoutError: not complete within ``timeout_s`` (default ``waitTimeoutSeconds``).
        """
        if self._closed:
            raise ClosedError(f"{self.model_dir}: the attached directory is closed; prepare it again")
        limit = timeout_s if timeout_s is not None else self._settings.wait_timeout_s
        for remote_file in self._remote.values():
            remote_file.wait_all(limit)

    def file_states(self) -> dict[str, dict[str, Any]]:
        """Per file path: ``{"size", "state", "percent", "attached"}`` from the owner's table."""
        return self.progress.snapshot()

    def stats(self) -> dict[str, Any]:
        """As ``PreparedDirectory.stats``: the summary, and each file's state under ``"states"``."""
        summary = self.progress.summary()
        summary["states"] = self.progress.snapshot()
        return summary

    def close(self) -> None:
        """Uninstall its hooks and unmap the owner's table in this process; nothing is deleted. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.progress.closed = True
        attaching.detach_directory(self.model_dir)
        hooks.uninstall()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"owner {self.owner_pid}"
        return f"AttachedDirectory({self.uri!r} -> {self.model_dir!r}, {len(self.files)} files, {state})"
