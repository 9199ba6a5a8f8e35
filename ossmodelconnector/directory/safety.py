"""Path safety for ``prepare_directory``: which directories may be cleaned, which keys may be mirrored.

::

    check_model_dir(dir)    refuse "/", home and its ancestors, files, symlinks, foreign non-empty
                            directories, unwritable ones, read-only mounts; live owners. Changes nothing.
    plan_entries(objects)   key -> relative name below the prefix; refuse any name that could escape
                            model_dir or clash; skip directory markers. Changes nothing.
    clean_model_dir(dir)    remove every entry inside dir except our owner record, never following a
                            symlink (each level is opened with O_NOFOLLOW and emptied through its fd).
    claim_model_dir(dir)    create dir if missing (0700), write .ossmodelconnector/owner.json.
    make_parents(dir, name) mirror a name's sub-folders (0700), refusing any that turned into a symlink.

Nothing is deleted before every check has passed: the checks run first and the listing is validated
before the directory is touched, so a refused call leaves every byte where it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ossmodelconnector.atomic_files import TEMPORARY_NAME_EXTRA_BYTES, write_json_atomically
from ossmodelconnector.cache.manifest import OWN_DIR_NAME
from ossmodelconnector.cache.segments import own_start_time, process_alive
from ossmodelconnector.errors import UnsafePathError
from ossmodelconnector.objects import ObjectInfo

__all__ = [
    "MAX_FILE_NAME_BYTES",
    "MAX_NAME_BYTES",
    "OWNER_FILE_NAME",
    "DirectoryCheck",
    "Entry",
    "check_model_dir",
    "claim_model_dir",
    "clean_model_dir",
    "make_parents",
    "normalize_model_dir",
    "owner_record_path",
    "plan_entries",
    "read_owner",
    "relative_name",
    "release_owner",
]

log = logging.getLogger(__name__)

OWNER_FILE_NAME = "owner.json"
"""The record that marks a directory as prepared by us (who, when, from where, still live or not)."""
MAX_NAME_BYTES = 255
"""The longest file name (one path segment) Linux file systems accept, in UTF-8 bytes."""
MAX_FILE_NAME_BYTES = MAX_NAME_BYTES - TEMPORARY_NAME_EXTRA_BYTES
"""The longest name of a mirrored file: it is first written under a longer temporary name beside it."""

_TOOL = "ossmodelconnector"
_OWNER_FORMAT = 1
_DIR_MODE = 0o700
_OPEN_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class DirectoryCheck:
    """What :func:`check_model_dir` found out about a model directory that may be used.

    Args:
        path: the absolute, normalized path (``~`` expanded).
        exists: whether it exists already (otherwise :func:`claim_model_dir` creates it).
        empty: whether it exists and holds nothing.
        owner: the owner record of a previous prepare (``owner.json``), or None.
    """

    path: str
    exists: bool
    empty: bool
    owner: Mapping[str, Any] | None


@dataclass(frozen=True)
class Entry:
    """One object to mirror: its name below the prefix (``/``-separated) and what the listing said.

    Args:
        name: the relative name, validated (no ``..``, no empty segment, ...).
        info: the object.
    """

    name: str
    info: ObjectInfo


# --- model_dir -----------------------------------------------------------------------------------------


def check_model_dir(model_dir: str | os.PathLike[str]) -> DirectoryCheck:
    """Decide whether ``model_dir`` may be cleaned and filled; change nothing on disk.

    Refused: ``/``; the home directory and every ancestor of it; an existing file; a symlink (the
    directory itself); a non-empty directory without our owner record; a directory another live process
    is serving; a read-only mount; a directory we cannot create files in. A missing directory is fine
    (it is created later, parents too), as is an empty one or one a previous prepare marked as ours.

    Args:
        model_dir: the local directory (``~`` is expanded; relative paths are taken from the cwd).

    Returns:
        What was found.

    Raises:
        UnsafePathError: one of the cases above; the message names the directory, why, and the fix.
    """
    path = normalize_model_dir(model_dir)
    _refuse_root_and_home(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        _check_creatable(path)
        return DirectoryCheck(path, exists=False, empty=False, owner=None)
    except OSError as exc:  # e.g. ENOTDIR: a parent is a file
        raise _unsafe(path, f"it cannot be inspected ({exc.strerror})", "give a directory path") from exc
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        raise _unsafe(
            path,
            f"it is a symlink (to {target!r}), and cleaning it would delete what lies elsewhere",
            "pass the real directory, or a new path",
        )
    if not stat.S_ISDIR(st.st_mode):
        raise _unsafe(path, "it exists and is not a directory", "remove the file or choose another path")
    try:
        names = os.listdir(path)
    except OSError as exc:
        raise _unsafe(
            path, f"its contents cannot be listed ({exc.strerror})", "fix its permissions or use another"
        ) from exc
    owner = read_owner(path)
    if names and owner is None:
        raise _unsafe(
            path,
            f"it is not empty ({len(names)} entries, e.g. {sorted(names)[0]!r}) and was not prepared by "
            f"ossmodelconnector (no {OWN_DIR_NAME}/{OWNER_FILE_NAME}), so cleaning it could destroy "
            "your files",
            "pass an empty or new directory, or empty this one yourself",
        )
    if owner is not None:
        _refuse_live_owner(path, owner)
    _check_writable(path)
    return DirectoryCheck(path, exists=True, empty=not names, owner=owner)


def normalize_model_dir(model_dir: str | os.PathLike[str]) -> str:
    """The absolute, normalized form of ``model_dir`` (``~`` expanded; symlinks are not resolved).

    Args:
        model_dir: the local directory.

    Raises:
        UnsafePathError: an empty path, a path with a NUL, or not text.
    """
    raw = os.fspath(model_dir)
    if not isinstance(raw, str) or not raw:
        raise UnsafePathError(f"model_dir={raw!r}: give a non-empty directory path as a str or Path")
    if "\0" in raw:
        raise UnsafePathError(f"model_dir={raw!r} contains a NUL character; give a valid directory path")
    path = os.path.abspath(os.path.expanduser(raw))
    # POSIX lets a path keep exactly two leading slashes ("//x"); on Linux it is the same as "/x".
    return "/" + path.lstrip("/") if path.startswith("//") else path


def claim_model_dir(check: DirectoryCheck, record: Mapping[str, Any]) -> None:
    """Create the directory if missing (mode 0700, parents too) and write our owner record in it.

    Args:
        check: what :func:`check_model_dir` returned for it.
        record: extra fields for ``owner.json`` (the URI...); pid, process start time and times are added.

    Raises:
        UnsafePathError: the directory (or a parent) cannot be created, or the record cannot be written.
    """
    path = check.path
    if not check.exists:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkdir(path, _DIR_MODE)
        except FileExistsError:
            # Raced with someone else creating it: only a directory we can vouch for is usable.
            check_model_dir(path)
        except OSError as exc:
            raise _unsafe(
                path,
                f"it cannot be created ({exc.strerror})",
                "create it yourself with write permission, or choose a writable location",
            ) from exc
    else:
        _make_private(path)
    owner_dir = os.path.join(path, OWN_DIR_NAME)
    try:
        _mkdir_nofollow(owner_dir)
        write_json_atomically(owner_record_path(path), _owner_fields(record, active=True))
    except OSError as exc:
        raise _unsafe(
            path, f"its owner record cannot be written ({exc.strerror})", "make the directory writable"
        ) from exc


def _make_private(path: str) -> None:
    """Only this user may change the entries of an existing model directory: it must be ours, and
    nobody else may write to it (a writer could swap a weight's symlink for a file of their own, which
    a framework would then load, ``torch.load`` included)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _unsafe(path, f"it cannot be opened ({exc.strerror})", "check its permissions") from exc
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise _unsafe(
                path,
                f"it belongs to user {info.st_uid}, who could replace its entries while they are read",
                "prepare into a directory of your own (or have its owner prepare it)",
            )
        others_write = stat.S_IMODE(info.st_mode) & 0o022
        if others_write:
            mode = stat.S_IMODE(info.st_mode) & ~0o022
            os.fchmod(fd, mode)
            log.warning(
                "%s: its group or other users could write to it (mode %o), so they could replace a "
                "weight file while it is read: it is now mode %o",
                path,
                stat.S_IMODE(info.st_mode),
                mode,
            )
    finally:
        os.close(fd)


def release_owner(path: str) -> None:
    """Mark the owner record as no longer live (the directory stays ours); errors are only logged.

    Args:
        path: the model directory.
    """
    record = read_owner(path)
    if record is None:
        return
    try:
        write_json_atomically(
            owner_record_path(path), {**record, "active": False, "released_at": time.time()}
        )
    except OSError as exc:
        log.debug("%s: owner record not updated: %s", path, exc)


def owner_record_path(path: str) -> str:
    """``path/.ossmodelconnector/owner.json``."""
    return os.path.join(path, OWN_DIR_NAME, OWNER_FILE_NAME)


def read_owner(path: str) -> dict[str, Any] | None:
    """The owner record of ``path``, or None when absent, unreadable, not ours, or reached by a symlink.

    Args:
        path: the model directory.
    """
    owner_dir = os.path.join(path, OWN_DIR_NAME)
    try:
        if not stat.S_ISDIR(os.lstat(owner_dir).st_mode):
            return None
        fd = os.open(owner_record_path(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with open(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None
            record = json.loads(handle.read(1 << 20))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("tool") != _TOOL:
        return None
    return record


def clean_model_dir(path: str) -> int:
    """Remove every entry inside ``path`` except our owner record; never follow a symlink out of it.

    A symlink is unlinked itself; a sub-directory is opened with ``O_NOFOLLOW`` and emptied through its
    file descriptor, so swapping it for a symlink meanwhile cannot redirect the deletion.

    Args:
        path: a directory :func:`check_model_dir` accepted.

    Returns:
        The number of entries removed.

    Raises:
        UnsafePathError: ``path`` itself is not a directory any more (e.g. replaced by a symlink).
        OSError: an entry could not be removed (permissions); what was removed stays removed.
    """
    try:
        fd = os.open(path, _OPEN_DIR_FLAGS)
    except OSError as exc:
        raise _unsafe(path, f"it cannot be opened as a directory ({exc.strerror})", "check it") from exc
    try:
        return _empty_directory(fd, keep={OWN_DIR_NAME: {OWNER_FILE_NAME: None}})
    finally:
        os.close(fd)


def make_parents(model_dir: str, name: str) -> str:
    """Create the sub-folders of ``name`` inside ``model_dir`` (mode 0700) and return the entry's path.

    Args:
        model_dir: the prepared directory (absolute).
        name: a name :func:`relative_name` accepted.

    Returns:
        ``model_dir/name``.

    Raises:
        UnsafePathError: a sub-folder exists as something else than a directory (a symlink, a file).
    """
    parts = name.split("/")
    current = model_dir
    for part in parts[:-1]:
        current = os.path.join(current, part)
        try:
            _mkdir_nofollow(current)
        except OSError as exc:
            raise _unsafe(
                current, f"this sub-folder cannot be created ({exc.strerror})", "clean the directory"
            ) from exc
    return os.path.join(current, parts[-1])


# --- keys ---------------------------------------------------------------------------------------------


def relative_name(key: str, prefix: str, bucket: str) -> str:
    """The file name of ``key`` below ``prefix``, refused when it could escape the model directory.

    Args:
        key: the object key (starts with ``prefix``).
        prefix: the listed prefix ("" or ending in ``/``).
        bucket: the bucket, for messages.

    Returns:
        The ``/``-separated relative name.

    Raises:
        UnsafePathError: an absolute name, a backslash, a NUL, an empty, ``.`` or ``..`` segment, a
            segment over 255 UTF-8 bytes, or the reserved top-level ``.ossmodelconnector``; the message
            names the key.
    """
    if not key.startswith(prefix):
        raise _bad_key(bucket, key, key, f"does not start with the prefix {prefix!r}")
    name = key[len(prefix) :]
    problem = _name_problem(name)
    if problem:
        raise _bad_key(bucket, key, name, problem)
    return name


def plan_entries(objects: Iterable[ObjectInfo], bucket: str, prefix: str) -> list[Entry]:
    """The objects to mirror, by relative name in sorted order; directory markers are skipped.

    Args:
        objects: the listing of ``prefix``.
        bucket: the bucket.
        prefix: the listed prefix ("" or ending in ``/``).

    Returns:
        One :class:`Entry` per file, sorted by name (code point order, the same as the keys' byte order).

    Raises:
        UnsafePathError: a name that would escape (see :func:`relative_name`), or a name that is both a
            file and a folder (``a`` and ``a/b``).
    """
    entries = []
    for info in objects:
        if info.key.endswith("/") and info.size == 0:
            continue  # a "directory marker" some tools create; folders are mirrored from the file names
        entries.append(Entry(relative_name(info.key, prefix, bucket), info))
    entries.sort(key=lambda entry: entry.name)
    files = {entry.name: entry for entry in entries}
    for entry in entries:
        parts = entry.name.split("/")
        for depth in range(1, len(parts)):
            clash = files.get("/".join(parts[:depth]))
            if clash is not None:
                raise UnsafePathError(
                    f"oss://{bucket}/{clash.info.key} and oss://{bucket}/{entry.info.key}: "
                    f"{clash.name!r} would have to be both a file and a folder; rename one of the objects "
                    "or prepare a narrower prefix",
                    bucket=bucket,
                    key=entry.info.key,
                )
    return entries


# --- owner liveness -----------------------------------------------------------------------------------


def _refuse_live_owner(path: str, owner: Mapping[str, Any]) -> None:
    pid = owner.get("pid")
    if not owner.get("active") or not isinstance(pid, int) or pid == os.getpid():
        return  # released, or ours: the caller handles this process's own directories
    start = owner.get("pid_start")
    if isinstance(start, int) and process_alive(pid, start):
        raise _unsafe(
            path,
            f"process {pid} is serving it right now (prepared from {owner.get('uri', '?')})",
            f"close that process's connector (or stop process {pid}) first, or choose another directory",
        )


def _owner_fields(record: Mapping[str, Any], *, active: bool) -> dict[str, Any]:
    pid = os.getpid()
    return {
        "tool": _TOOL,
        "format": _OWNER_FORMAT,
        **record,
        "pid": pid,
        "pid_start": own_start_time(),
        "active": active,
        "prepared_at": time.time(),
    }


# --- internals ----------------------------------------------------------------------------------------


def _refuse_root_and_home(path: str) -> None:
    home = os.path.expanduser("~")
    homes = {os.path.abspath(home), os.path.realpath(home)}
    for candidate in dict.fromkeys((path, os.path.realpath(path))):
        if candidate == os.sep:
            raise _unsafe(path, "it is the root directory", "give a dedicated directory, e.g. /tmp/model")
        under = candidate.rstrip(os.sep) + os.sep
        for home_path in homes:
            if home_path == candidate:
                raise _unsafe(path, "it is your home directory", "give a dedicated sub-directory of it")
            if home_path.startswith(under):
                raise _unsafe(
                    path,
                    f"your home directory {home_path} lies inside it",
                    "give a dedicated directory, e.g. ~/models/<name>",
                )


def _check_creatable(path: str) -> None:
    ancestor = os.path.dirname(path)
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise _unsafe(path, f"{ancestor} is not a directory", "choose a path below a directory")
    _check_writable(ancestor, probe=False, subject=path)


def _check_writable(path: str, *, probe: bool = True, subject: str | None = None) -> None:
    subject = subject or path
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        raise _unsafe(
            subject,
            f"{path} is on a read-only file system",
            "choose a directory on a writable file system (e.g. /tmp or a data volume)",
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise _unsafe(
            subject,
            f"this user (uid {os.getuid()}) may not create files in {path}",
            f"chmod u+w {path} (or chown it), or choose a directory you own",
        )
    if not probe:
        return
    # access() says yes to root everywhere; only creating a file tells (e.g. /proc, /sys, some mounts).
    probe_path = os.path.join(path, f".ossmc-probe-{secrets.token_hex(6)}")
    try:
        fd = os.open(probe_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _unsafe(
            subject,
            f"files cannot be created in it ({exc.strerror})",
            "choose a directory on a normal, writable file system",
        ) from exc
    os.close(fd)
    os.unlink(probe_path)


def _empty_directory(dir_fd: int, keep: Mapping[str, Any] | None) -> int:
    # ``keep`` maps names to spare: None spares the entry whole, a mapping spares those names inside it.
    with os.scandir(dir_fd) as scan:
        entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in scan]
    removed = 0
    for name, is_dir in entries:
        spared = keep.get(name, False) if keep is not None else False
        if spared is None:
            continue
        if not is_dir:
            # A file, or a symlink: unlink removes the link itself, never what it points to.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
                removed += 1
            continue
        try:
            child = os.open(name, _OPEN_DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a symlink or a file meanwhile
                os.unlink(name, dir_fd=dir_fd)
                removed += 1
                continue
            if exc.errno == errno.ENOENT:
                continue
            raise
        try:
            removed += _empty_directory(child, spared if isinstance(spared, Mapping) else None)
        finally:
            os.close(child)
        if not isinstance(spared, Mapping):
            os.rmdir(name, dir_fd=dir_fd)
            removed += 1
    return removed


def _mkdir_nofollow(path: str) -> None:
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError as exc:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise NotADirectoryError(
                errno.ENOTDIR, "exists and is not a directory (or a symlink)", path
            ) from exc


def _name_problem(name: str) -> str | None:
    if not name:
        return "is empty (the key is the prefix itself)"
    if name.startswith("/"):
        return "is absolute"
    if "\0" in name:
        return "contains a NUL character"
    if "\\" in name:
        return "contains a backslash, which some tools treat as a path separator"
    parts = name.split("/")
    if OWN_DIR_NAME in parts:
        # At any depth: a manifest or owner record under a sub-folder would be trusted as ours.
        return f"uses the reserved name {OWN_DIR_NAME!r}"
    for part in parts:
        if part == "":
            return "has an empty path segment ('//' or a trailing '/')"
        if part in (".", ".."):
            return f"has a {part!r} segment"
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            return f"has a segment longer than {MAX_NAME_BYTES} bytes"
    file_name_bytes = len(parts[-1].encode("utf-8", "surrogatepass"))
    if file_name_bytes > MAX_FILE_NAME_BYTES:
        return (
            f"has a file name of {file_name_bytes} bytes; it is written under a temporary name "
            f"{TEMPORARY_NAME_EXTRA_BYTES} bytes longer first, and file names are limited to "
            f"{MAX_NAME_BYTES} bytes (so at most {MAX_FILE_NAME_BYTES})"
        )
    return None


def _bad_key(bucket: str, key: str, name: str, problem: str) -> UnsafePathError:
    return UnsafePathError(
        f"oss://{bucket}/{key}: its name below the prefix, {name!r}, {problem}, so it cannot be mirrored "
        "safely into the model directory; rename the object, or prepare a narrower prefix without it",
        bucket=bucket,
        key=key,
    )


def _unsafe(path: str, why: str, fix: str) -> UnsafePathError:
    return UnsafePathError(f"model_dir {path!r} refused: {why}; nothing was deleted. Fix: {fix}")
