"""Files replaced in one step: written under a temporary name beside the target, then ``os.replace``d.

::

    atomic_output(path) -> binary file .<name>.<random>.part (O_EXCL | O_NOFOLLOW, mode 0600)
        body writes ... [fsync] ... [times set] ... close -> os.replace(temporary, path)
        any exception -> the temporary is removed, path is untouched
    write_json_atomically(path, record)     the same, for a JSON record
    symlink_atomically(target, path)        .<name>.<random>.link, [its own times set], then os.replace

A reader (another process, or this one after a crash) sees the old file or the whole new one, never a
half-written one; given ``mtime_ns``, the new one shows that modification time from the moment it appears
(a rename moves neither the file's nor the link's own ``mtime``). The temporary is created exclusively
and never through a symlink, so a file someone planted under that name is never written through; the
random part keeps concurrent writers apart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

__all__ = [
    "TEMPORARY_NAME_EXTRA_BYTES",
    "atomic_output",
    "set_times",
    "symlink_atomically",
    "temporary_name",
    "warn_times_refused",
    "write_json_atomically",
]

log = logging.getLogger(__name__)

_RANDOM_HEX = 12  # secrets.token_hex(6)
TEMPORARY_NAME_EXTRA_BYTES = len(".") + len(".") + _RANDOM_HEX + len(".part")
"""How many bytes longer than its target's name a temporary name is (``.part`` and ``.link`` alike): a
name within ``255 - TEMPORARY_NAME_EXTRA_BYTES`` bytes can be written this way."""

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_MODE = 0o600


def temporary_name(path: str | os.PathLike[str], kind: str = "part") -> str:
    """A fresh hidden name beside ``path`` (same directory, same file system): ``.<name>.<hex>.<kind>``."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(directory, f".{name}.{secrets.token_hex(_RANDOM_HEX // 2)}.{kind}")


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], *, fsync: bool = False, mtime_ns: int | None = None
) -> Iterator[BinaryIO]:
    """Write a new ``path`` in one step: yields a binary file that replaces ``path`` when the block ends.

    Args:
        path: the file to create or replace (its directory must exist).
        fsync: flush the data to the disk before the rename (crash safety, slower).
        mtime_ns: the access and modification time the file has when it appears (nanoseconds since the
            epoch: an object's ``Last-Modified``); None leaves the time of the last write. A file system
            that refuses the time gets a WARNING, not an error.

    Raises:
        OSError: the temporary could not be created or written, or the rename failed; ``path`` is then
            untouched and no temporary is left.
    """
    temporary = temporary_name(path)
    fd = os.open(temporary, _CREATE_FLAGS, _FILE_MODE)
    try:
        with open(fd, "wb", closefd=True) as out:
            yield out
            out.flush()  # every write before the times: a write after them would move them again
            if mtime_ns is not None:
                set_times(out.fileno(), mtime_ns, name=os.fspath(path))
            if fsync:
                os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_json_atomically(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``record`` as indented, key-sorted JSON (mode 0600), in one step."""
    with atomic_output(path) as out:
        out.write(json.dumps(record, indent=1, sort_keys=True).encode("utf-8"))


def symlink_atomically(target: str, path: str | os.PathLike[str], *, mtime_ns: int | None = None) -> None:
    """Make ``path`` a symlink to ``target``, replacing whatever entry ``path`` was, in one step.

    Args:
        target: what the link points to.
        path: the entry to create or replace.
        mtime_ns: the link's own access and modification time (what ``os.lstat`` shows), in nanoseconds;
            None leaves the time it was made.
    """
    temporary = temporary_name(path, "link")
    os.symlink(target, temporary)
    try:
        if mtime_ns is not None:
            set_times(temporary, mtime_ns, name=f"the symlink {os.fspath(path)}", follow_symlinks=False)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def set_times(
    target: int | str | os.PathLike[str], mtime_ns: int, *, name: str, follow_symlinks: bool = True
) -> bool:
    """Set ``target``'s access and modification times to ``mtime_ns`` (an object's ``Last-Modified``).

    A time is for caches keyed on it; the bytes are what a load needs: a file system that refuses it
    gets a WARNING and False, never an error.

    Args:
        target: an open descriptor or a path.
        mtime_ns: nanoseconds since the epoch.
        name: what the warning calls the file.
        follow_symlinks: False to set a symlink's own times (``target`` a path).

    Returns:
        Whether the times were set.
    """
    try:
        os.utime(target, ns=(mtime_ns, mtime_ns), follow_symlinks=follow_symlinks)
    except OSError as exc:
        warn_times_refused(name, exc)
        return False
    return True


def warn_times_refused(name: str, error: OSError) -> None:
    """The WARNING for a file system that refused ``name``'s times (``error``); said once per file."""
    log.warning(
        "cannot set the modification time of %s to its object's Last-Modified (%s): it shows the time "
        "of its writes, so caches keyed on it (a web UI's hash cache) will read it again",
        name,
        error,
    )
