"""The processes that use a directory an owner process serves (``ENABLE_CONNECTOR``), counted with ``flock``.

::

    user (any process started with ENABLE_CONNECTOR=1)        owner process (started by the first user)
      DirectoryUsers.join(dir): flock(LOCK_SH) on              serve_while_used(dir, check_s, close):
        /dev/shm/ossmc-u-<uid>-<hash of realpath(dir)>           every check_s: flock(LOCK_EX | LOCK_NB)
      ... reads through the owner's cache ...                      refused -> users remain: keep serving
      exit (the kernel drops the lock; a forked child              granted -> none left: close the cache,
        shares it, an exec'd one joins on its own)                 unlink the file under the lock, return

The owner outlives any one user, so a short-lived first process (``python -c "import torch"``) no longer
takes the cache with it when it exits while a server started later still reads. A user that joins while
the owner is closing waits for the owner's ``LOCK_EX`` to go, sees the file unlinked (another inode at
the path), and joins afresh: it then finds no live owner and starts a new one. A name another user's file
holds is skipped as for the prepare lock (``open_lock_file``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable

from ossmodelconnector.cache.segments import descriptor_is_at, users_name
from ossmodelconnector.directory.attached import DEFAULT_LOCK_POLL_S, open_lock_file
from ossmodelconnector.errors import RequestTimeoutError

__all__ = ["DirectoryUsers", "serve_while_used"]

log = logging.getLogger(__name__)


class DirectoryUsers:
    """This process's place among a directory's users: a shared ``flock`` held until :meth:`leave`.

    Make one with :meth:`join`. The descriptor is ``O_CLOEXEC``: a forked child shares the hold, a program
    started with ``exec`` joins on its own (at its start-up).
    """

    def __init__(self, model_dir: str, path: str, fd: int) -> None:
        self.model_dir = model_dir
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def join(cls, model_dir: str, timeout_s: float) -> DirectoryUsers:
        """Hold a shared lock on ``model_dir``'s users file (waiting out an owner that is closing).

        Args:
            model_dir: the absolute directory.
            timeout_s: give up after this many seconds.

        Raises:
            RequestTimeoutError: the owner process kept the file locked for longer.
            CacheError: every name the users file may take is held by a file that is not ours.
        """
        deadline = time.monotonic() + timeout_s
        squatters: dict[str, str] = {}
        while True:
            path, fd, _ = open_lock_file(model_dir, squatters, name=users_name, what="users file")
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # the owner is closing: it holds LOCK_EX for as long as that takes
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise RequestTimeoutError(
                        f"{model_dir}: the process serving it has been closing for over {timeout_s:g} s "
                        f"(users file {path}); wait for it, or stop it"
                    ) from None
                time.sleep(DEFAULT_LOCK_POLL_S)
                continue
            except BaseException:
                os.close(fd)
                raise
            if descriptor_is_at(fd, path):
                return cls(model_dir, path, fd)
            os.close(fd)  # unlinked by the owner that just closed: join the new file

    @property
    def joined(self) -> bool:
        """Whether :meth:`leave` has not run yet."""
        return self._fd is not None

    def leave(self, *, unlink_if_last: bool = False) -> None:
        """Drop this process's hold (the owner process closes once no user is left). Idempotent.

        Args:
            unlink_if_last: remove the users file when nobody else holds it (no owner process and no other
                user: a user whose owner process failed to start), under an exclusive lock so that no one
                joins it in between.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if unlink_if_last:
                with contextlib.suppress(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if descriptor_is_at(fd, self.path):
                        os.unlink(self.path)
        except OSError as exc:
            log.debug("%s: users file not removed: %s", self.path, exc)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __repr__(self) -> str:
        return f"DirectoryUsers({self.model_dir!r}, {'joined' if self.joined else 'left'})"


def serve_while_used(model_dir: str, check_s: float, close: Callable[[], None]) -> None:
    """In the owner process: return once no process uses ``model_dir`` any more, after calling ``close``.

    Every ``check_s`` seconds it tries ``flock(LOCK_EX | LOCK_NB)`` on the users file. Granted, no user is
    left: ``close`` runs while the lock is held (a user joining now waits, then starts a new owner), and
    the file is unlinked under it.

    Args:
        model_dir: the absolute directory this process serves.
        check_s: seconds between checks (``ownerCheckSeconds``).
        close: releases the directory (the connector's ``close``).
    """
    squatters: dict[str, str] = {}
    while True:
        time.sleep(check_s)
        path, fd, _ = open_lock_file(model_dir, squatters, name=users_name, what="users file")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # users remain
            if not descriptor_is_at(fd, path):
                continue  # replaced meanwhile: look again at the next check
            log.info("%s: no process uses it any more; releasing its cache", model_dir)
            try:
                close()
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            return
        finally:
            os.close(fd)
