"""Reference counts on data segments across processes: the last process that uses one removes it.

Two directories prepared from the same object version share its data segment (``peer_source.py``), so
the process that created it must not unlink it while another still serves a directory from it::

    hold = SegmentHold.take(path)          flock(LOCK_SH) on the file, for as long as this process uses it
    ...
    hold.release(unlink_if_last=True)      drop ours; if flock(LOCK_EX | LOCK_NB) then succeeds, nobody
                                           else holds it: unlink (under that lock, so no one takes a hold
                                           in between)

The kernel drops the locks of a process that dies, so a crash never leaves a count behind. A hold taken
on a name that was unlinked meanwhile (the inode at the path changed) is refused with
:class:`FileNotFoundError`, like a file that is not there. A forked child closes the descriptors it
inherited (they share the parent's lock and would keep the segment alive after the parent's release).

Whoever else removes a file that holds may protect (a stale segment, a dead owner's state table, a
lock) goes through :func:`unlink_unheld`: the same exclusive lock first, so a file a live process holds
is never removed, whatever its name or the spelling of its directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import weakref

from ossmodelconnector.cache.segments import descriptor_is_at

__all__ = ["SegmentHold", "unlink_unheld"]

log = logging.getLogger(__name__)

_LIVE: weakref.WeakSet[SegmentHold] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


class SegmentHold:
    """This process's shared lock on one data segment file. Make one with :meth:`take`.

    Attributes:
        path: the segment file.
    """

    path: str
    _fd: int | None

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd
        info = os.fstat(fd)
        self._identity = (info.st_dev, info.st_ino)
        self._pid = os.getpid()
        with _LIVE_LOCK:
            _LIVE.add(self)

    @classmethod
    def take(cls, path: str) -> SegmentHold:
        """Hold the segment at ``path`` (shared ``flock``) until :meth:`release`.

        Raises:
            FileNotFoundError: nothing at ``path``, or it was unlinked while the hold was being taken.
            OSError: the file cannot be opened or locked.
        """
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits out a releaser's LOCK_EX, which only lasts an unlink
            if not descriptor_is_at(fd, path):
                raise FileNotFoundError(f"{path} was removed while this process took a hold on it")
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    @property
    def held(self) -> bool:
        """Whether :meth:`release` has not run yet."""
        return self._fd is not None

    def release(self, *, unlink_if_last: bool) -> bool:
        """Drop this hold; with ``unlink_if_last``, unlink the file when no other process holds it.

        Idempotent. In a forked child (which does not own the parent's hold) it does nothing.

        Returns:
            True when this call unlinked the file.
        """
        fd, self._fd = self._fd, None
        if fd is None or os.getpid() != self._pid:
            return False
        os.close(fd)
        if not unlink_if_last:
            return False
        try:
            probe = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.debug("%s: still held by another process; the last one removes it", self.path)
                return False
            opened = os.fstat(probe)
            if (opened.st_dev, opened.st_ino) != self._identity or not descriptor_is_at(probe, self.path):
                return False  # unlinked, and perhaps created anew, by someone else meanwhile
            os.unlink(self.path)
            return True
        finally:
            os.close(probe)

    def __repr__(self) -> str:
        return f"SegmentHold({self.path!r}, {'held' if self.held else 'released'})"


def unlink_unheld(path: str) -> os.stat_result | None:
    """Remove the file at ``path`` unless a live process holds it (a shared or exclusive ``flock``).

    Returns:
        The removed file's status (its size and blocks, for reports), or None: nothing there, another
        process holds it, or the name moved to another file meanwhile. Never follows a symlink.

    Raises:
        OSError: the file cannot be opened or removed (other than gone).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # held: a live process uses it
        if not descriptor_is_at(fd, path):
            return None
        info = os.fstat(fd)
        try:
            os.unlink(path)  # under the exclusive lock: nobody takes a hold in between
        except FileNotFoundError:
            return None
        return info
    finally:
        os.close(fd)


def _after_fork_in_child() -> None:
    global _LIVE_LOCK  # a lock another thread held at the fork stays held in the child: a new one
    _LIVE_LOCK = threading.Lock()
    # The child's copies of the descriptors share the parent's open file descriptions, hence its locks:
    # kept open, they would count the parent as a holder until the child exits.
    for hold in list(_LIVE):
        fd, hold._fd = hold._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


os.register_at_fork(after_in_child=_after_fork_in_child)
