"""Files named by a user's setting, opened so that the path cannot be turned against the process.

::

    read_regular_file(path)     config_path, cred_path: O_NONBLOCK open (a FIFO cannot hang it), fstat,
                                only a regular file, at most MAX_SETTINGS_FILE_BYTES, read whole
    open_private_append(path)   logPath, auditPath: created O_EXCL with mode 0600 (whatever the umask),
                                or opened O_NOFOLLOW; only a regular file of this user with one link

Both check the descriptor they opened (``fstat``), never the name beforehand, so nothing can be swapped
in between. They know nothing of settings or credentials: a refusal is built by the caller's ``refuse``
callable from a phrase such as ``"is a FIFO (named pipe), not a regular file"``, so the caller's error
names its own setting, path and fix. Errors of the operating system (missing file, no permission) come
out as the ``OSError`` they are.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

__all__ = ["MAX_SETTINGS_FILE_BYTES", "PRIVATE_FILE_MODE", "open_private_append", "read_regular_file"]

MAX_SETTINGS_FILE_BYTES = 1024 * 1024
"""The largest config or credentials file read: 1 MiB.

Both are read whole into memory. A config file with every key is about 1 KiB and a credentials file with
an STS token a few KiB, so anything past 1 MiB is the wrong file (a model, a log, ``/proc/kcore``) and is
refused before it is read, instead of filling memory.
"""

PRIVATE_FILE_MODE = 0o600
"""The mode of a file :func:`open_private_append` creates: read and write for this user only."""

Refuse = Callable[[str], Exception]
"""Builds the caller's error from why the file is refused (``"is a symbolic link"``)."""

_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO with no writer (or a device) must not wait; it is refused after fstat.
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_ATTEMPTS = 3  # create, or open what exists; again if it vanished in between (a rotating log)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def _not_regular(mode: int) -> str:
    return f"is {_kind(mode)}, not a regular file"


def _size(nbytes: int) -> str:
    mib = 1024 * 1024
    return f"{nbytes // mib} MiB" if nbytes and nbytes % mib == 0 else f"{nbytes} bytes"


def _refuse_unopenable(path: str, exc: OSError, refuse: Refuse) -> Exception:
    """ENXIO: a FIFO without reader or a socket; describe what the name is, if it still is."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return exc
    return exc if stat.S_ISREG(mode) else refuse(_not_regular(mode))


def read_regular_file(path: str, refuse: Refuse, max_bytes: int = MAX_SETTINGS_FILE_BYTES) -> bytes:
    """The whole content of ``path``, which must be a regular file of at most ``max_bytes``.

    Symlinks are followed (a Kubernetes secret or config map is mounted as a chain of them); what they
    lead to is checked.

    Args:
        path: the file.
        refuse: builds the error to raise from why the file is refused.
        max_bytes: the largest accepted size.

    Returns:
        The bytes.

    Raises:
        OSError: the file cannot be opened or read (missing, no permission...).
        Exception: ``refuse(why)`` when the file is not a regular file (a FIFO, a device, a directory, a
            socket) or holds more than ``max_bytes``.
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise _refuse_unopenable(path, exc, refuse) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refuse(_not_regular(st.st_mode))
        too_big = f"holds more than {_size(max_bytes)}"
        if st.st_size > max_bytes:
            raise refuse(f"{too_big} ({st.st_size} bytes)")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        total = 0
        # Read one byte past the bound: a file may grow after fstat, and /proc files report size 0.
        while chunk := os.read(fd, max_bytes + 1 - total):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise refuse(too_big)
        return b"".join(chunks)
    finally:
        os.close(fd)


def open_private_append(path: str, refuse: Refuse) -> int:
    """A descriptor appending to ``path``: a new file of mode 0600, or an existing one of this user.

    The file is created exclusively with mode 0600 (set again with ``fchmod``, so no umask widens or
    narrows it). An existing name is opened with ``O_NOFOLLOW`` and checked on the descriptor: it must be
    a regular file, owned by this process's effective user, with a single link. So a symlink or hard link
    someone else planted under the name is never written through, and a FIFO never blocks the open. The
    mode of an existing file is left as its owner set it.

    Args:
        path: the file.
        refuse: builds the error to raise from why the file is refused.

    Returns:
        The open descriptor (``O_WRONLY | O_APPEND``, close-on-exec); the caller closes it.

    Raises:
        OSError: the file cannot be created or opened (no such directory, no permission...).
        Exception: ``refuse(why)`` when the name is a symbolic link, not a regular file, owned by another
            user, or has more than one link.
    """
    for _ in range(_CREATE_ATTEMPTS):
        try:
            fd = os.open(path, _APPEND_FLAGS | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        except FileExistsError:
            pass  # also a symlink, dangling or not: O_EXCL never creates through one
        else:
            try:
                os.fchmod(fd, PRIVATE_FILE_MODE)
            except BaseException:
                os.close(fd)
                raise
            return fd
        try:
            fd = os.open(path, _APPEND_FLAGS)
        except FileNotFoundError:
            continue  # removed since the create failed: create it
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise refuse("is a symbolic link") from None
            if exc.errno == errno.EISDIR:
                raise refuse(_not_regular(stat.S_IFDIR)) from None
            if exc.errno == errno.ENXIO:
                raise _refuse_unopenable(path, exc, refuse) from None
            raise
        try:
            _check_own_file(fd, refuse)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise FileNotFoundError(errno.ENOENT, "the file kept disappearing while it was being opened", path)


def _check_own_file(fd: int, refuse: Refuse) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise refuse(_not_regular(st.st_mode))
    euid = os.geteuid()
    if st.st_uid != euid:
        raise refuse(f"is owned by user id {st.st_uid}, not by this process's user (id {euid})")
    if st.st_nlink != 1:
        raise refuse(f"has {st.st_nlink} hard links (a link to another file may have been planted)")
