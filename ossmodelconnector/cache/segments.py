"""The files of the cache: names, creation (O_EXCL, 0600), attaching with ownership checks, removal.

A *segment* is one file mapped ``MAP_SHARED``: a data segment (exactly one object's bytes) or a state
table. In ``/dev/shm`` it is a POSIX shared-memory object made with ``posix_ipc``; elsewhere (the disk
fallback under ``model_dir``, a ``cacheDir`` other than ``/dev/shm``) a plain file opened
``O_CREAT | O_EXCL | O_NOFOLLOW``. Either way it is created sparse at its full size, mode ``0600``, and
never reused unless it is a regular file of ours with that mode (see ``docs/cache-layout.md``).

Names carry the effective uid (``ossmc-d-<uid>-<hash>``), so two users never meet at one name. Anyone
may still create a file under a name of ours first (``/dev/shm`` is world-writable and the names are
predictable): such a *squatted* name is left alone, and :func:`candidate_names` gives the next one to
try (``...-1``, ``...-2``, ``...-3``, then a random one), the same sequence in every process of the
user, so two of its processes still meet at one name.

Also here: who owns a segment (pid + start time, so a reused pid is not mistaken for the owner) and how
much room a directory has.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import pwd
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass

import posix_ipc

from ossmodelconnector.atomic_files import set_times
from ossmodelconnector.errors import CacheError
from ossmodelconnector.objects import ObjectInfo

__all__ = [
    "DATA_SEGMENT_PREFIX",
    "DEFAULT_FREE_SPACE_MARGIN_BYTES",
    "DETERMINISTIC_ALTERNATES",
    "LOCK_PREFIX",
    "SEGMENT_MODE",
    "SEGMENT_PREFIX",
    "STATE_DIR",
    "STATE_TABLE_PREFIX",
    "USERS_PREFIX",
    "ProcessIdentity",
    "Segment",
    "attach_segment",
    "candidate_names",
    "check_ownership",
    "create_segment",
    "data_segment_name",
    "describe_process",
    "describe_user",
    "descriptor_is_at",
    "foreign_problems",
    "free_space",
    "is_dev_shm",
    "lock_name",
    "lstat_or_none",
    "ours_in_dev_shm",
    "own_prefix",
    "own_start_time",
    "process_alive",
    "process_start_time",
    "process_state",
    "real_directory",
    "required_margin",
    "same_file",
    "segment_path",
    "squatted",
    "state_table_name",
    "unlink_segment",
    "users_name",
    "warn_squatted",
]

log = logging.getLogger(__name__)

STATE_DIR = "/dev/shm"
"""Where state tables and prepare locks always live, whatever ``cacheDir`` says (data segments go to
``cacheDir``, whose default is ``config.DEFAULT_CACHE_DIR``): every process must find them by name."""

SEGMENT_PREFIX = "ossmc-"
"""Every name the cache creates starts with this."""
DATA_SEGMENT_PREFIX = SEGMENT_PREFIX + "d-"
STATE_TABLE_PREFIX = SEGMENT_PREFIX + "s-"
LOCK_PREFIX = SEGMENT_PREFIX + "l-"
"""Prepare locks (``directory/attached.py``)."""
USERS_PREFIX = SEGMENT_PREFIX + "u-"
"""The users of a directory served by an owner process (``ENABLE_CONNECTOR``, ``startup.py``)."""

DETERMINISTIC_ALTERNATES = 3
"""Names tried after a squatted one, the same in every process: ``<name>-1`` ... ``<name>-3``."""

SEGMENT_MODE = 0o600
"""The only mode a segment of ours has; any other mode means someone else made the file."""

DEFAULT_FREE_SPACE_MARGIN_BYTES = 16 * 1024 * 1024
"""Room always left free in the cache directory (or 5% of its size, whichever is larger)."""
_MARGIN_FRACTION = 0.05

_HASH_HEX = 32  # 128 bits of sha256: collisions are out of reach, and names stay short
_DEV_SHM = "/dev/shm"


# --- names ---------------------------------------------------------------------------------------------


def _hashed(prefix: str, *fields: str | int) -> str:
    digest = hashlib.sha256()
    for field in fields:
        data = field.encode("utf-8") if isinstance(field, str) else str(field).encode("ascii")
        # Length-prefixed, so that no two different tuples feed the hash the same bytes.
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return prefix + digest.hexdigest()[:_HASH_HEX]


def own_prefix(kind: str, uid: int | None = None) -> str:
    """The start of every name of ``kind`` (``DATA_SEGMENT_PREFIX``...) that user ``uid`` creates.

    Args:
        kind: one of the ``*_PREFIX`` constants.
        uid: the user; default the effective uid of this process.
    """
    return f"{kind}{os.geteuid() if uid is None else uid}-"


def data_segment_name(namespace: str, info: ObjectInfo) -> str:
    """The data segment name of one object version: the same in every process of this user.

    Args:
        namespace: the endpoint the object comes from (two endpoints may hold different objects under the
            same bucket and key).
        info: the object version (bucket, key, ETag and size enter the hash).

    Returns:
        ``ossmc-d-<uid>-`` followed by 32 hex digits.
    """
    return _hashed(own_prefix(DATA_SEGMENT_PREFIX), namespace, info.bucket, info.key, info.etag, info.size)


def state_table_name(model_dir: str | os.PathLike[str]) -> str:
    """The state table name of a prepared directory: ``ossmc-s-<uid>-`` + a hash of its real path."""
    return _hashed(own_prefix(STATE_TABLE_PREFIX), os.path.realpath(model_dir))


def lock_name(model_dir: str | os.PathLike[str]) -> str:
    """The prepare lock of a directory: ``ossmc-l-<uid>-`` + the hash of its state table name."""
    return own_prefix(LOCK_PREFIX) + state_table_name(model_dir)[len(own_prefix(STATE_TABLE_PREFIX)) :]


def users_name(model_dir: str | os.PathLike[str]) -> str:
    """The users file of a directory served by an owner process: ``ossmc-u-<uid>-`` + the same hash."""
    return own_prefix(USERS_PREFIX) + state_table_name(model_dir)[len(own_prefix(STATE_TABLE_PREFIX)) :]


def candidate_names(name: str, *, fresh: bool = True) -> Iterator[str]:
    """``name``, then the names to try when it is squatted: ``-1`` ... ``-3``, then a random one.

    Args:
        name: the name every process of this user computes.
        fresh: end with a random name (not for names other processes must find by computing them, such
            as locks).
    """
    yield name
    for number in range(1, DETERMINISTIC_ALTERNATES + 1):
        yield f"{name}-{number}"
    if fresh:
        yield f"{name}-r{secrets.token_hex(8)}"


def is_dev_shm(directory: str) -> bool:
    """Whether ``directory`` is ``/dev/shm`` (where ``posix_ipc`` creates its objects)."""
    return os.path.realpath(directory) == _DEV_SHM


def real_directory(directory: str) -> str:
    """``directory`` resolved once (symlinks, ``..``): ``/run/shm`` and ``/dev/shm`` are one directory.

    Two processes that spell ``cacheDir`` differently must still agree on which segments they share and
    which are stale; names of files are compared in this form, files themselves by device and inode.
    """
    return os.path.realpath(directory)


def descriptor_is_at(fd: int, path: str) -> bool:
    """Whether the open descriptor ``fd`` is the file now at ``path`` (not followed if a symlink): False
    once the name was unlinked or replaced."""
    try:
        current = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino)


def same_file(first: str, second: str) -> bool:
    """Whether two paths name one file: same device and inode (neither followed if it is a symlink).

    Paths of which one is missing are the same when their directories resolve to one and their names
    are equal.
    """
    try:
        a, b = os.stat(first, follow_symlinks=False), os.stat(second, follow_symlinks=False)
    except OSError:
        return _canonical(first) == _canonical(second)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _canonical(path: str) -> str:
    return os.path.join(os.path.realpath(os.path.dirname(path) or "."), os.path.basename(path))


def segment_path(directory: str, name: str) -> str:
    """The file behind segment ``name`` in ``directory``."""
    return os.path.join(directory, name)


def ours_in_dev_shm() -> list[str]:
    """Names in ``/dev/shm`` that this package creates (``ossmc-*``), sorted: for leak checks in tests."""
    try:
        return sorted(name for name in os.listdir(_DEV_SHM) if name.startswith(SEGMENT_PREFIX))
    except FileNotFoundError:
        return []


# --- processes -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as the state table records its owner: a pid alone may be reused after the owner dies.

    Args:
        pid: the process id.
        start_time: ``/proc/<pid>/stat`` field 22, clock ticks after boot.
    """

    pid: int
    start_time: int

    @classmethod
    def current(cls) -> ProcessIdentity:
        """This process.

        Raises:
            CacheError: ``/proc`` is not readable (the cache needs Linux's ``/proc``).
        """
        pid = os.getpid()
        start = own_start_time()
        if start is None:
            raise CacheError(
                f"cannot read /proc/{pid}/stat for this process's start time: the shared-memory cache needs "
                "Linux with /proc mounted; mount it, or download with wait=True into a plain directory"
            )
        return cls(pid, start)

    def alive(self) -> bool:
        """Whether this very process still runs (same pid, same start time, not a zombie)."""
        return process_alive(self.pid, self.start_time)


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` (``/proc/<pid>/stat`` field 22), or None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = text[text.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] == b"Z":
        return None
    return int(fields[19])


_OWN_START: list[int] = []  # this process's start time once read; emptied in a forked child


def own_start_time() -> int | None:
    """This process's start time (:func:`process_start_time` of ``os.getpid()``), read once per process.

    A prepare asks for it several times (the owner record, the state table's header); each read is an
    open, reads and a close of ``/proc/<pid>/stat``, and behind a thread that computes every one of those
    system calls may wait the GIL's switch interval (5 ms) to continue.
    """
    if not _OWN_START:
        start = process_start_time(os.getpid())
        if start is None:
            return None
        _OWN_START.append(start)
    return _OWN_START[0]


os.register_at_fork(after_in_child=_OWN_START.clear)


def process_alive(pid: int, start_time: int) -> bool:
    """Whether the process ``pid`` that started at ``start_time`` still runs."""
    return pid > 0 and process_start_time(pid) == start_time


def describe_process(pid: int) -> str:
    """``the live process N``, or ``this process (N)`` when ``pid`` is the caller's own: a message that
    names the caller as "another process" sends its reader looking for a process that does not exist."""
    return f"this process ({pid})" if pid == os.getpid() else f"the live process {pid}"


def process_state(pid: int) -> str:
    """``/proc/<pid>/stat`` field 3 (``R``, ``S``, ``T`` stopped, ``t`` traced, ``Z``...), "" when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""
    fields = text[text.rfind(b")") + 2 :].split()
    return fields[0].decode("ascii", "replace") if fields else ""


# --- space ---------------------------------------------------------------------------------------------


def free_space(directory: str) -> tuple[int, int]:
    """``(available, total)`` bytes of the file system holding ``directory`` (statvfs)."""
    info = os.statvfs(directory)
    return info.f_bavail * info.f_frsize, info.f_blocks * info.f_frsize


def required_margin(total: int) -> int:
    """Bytes to keep free on a file system of ``total`` bytes: 5%, at least 16 MiB."""
    return max(DEFAULT_FREE_SPACE_MARGIN_BYTES, int(total * _MARGIN_FRACTION))


# --- segments ------------------------------------------------------------------------------------------


class Segment:
    """One cache file mapped ``MAP_SHARED`` (no mapping for an empty file).

    Args:
        name: the segment's name (no directory, no leading ``/``).
        path: the file.
        size: its length in bytes.
        mapping: the mapping, or None when ``size`` is 0.
        writable: whether the mapping was made with ``PROT_WRITE``.
    """

    def __init__(self, name: str, path: str, size: int, mapping: mmap.mmap | None, writable: bool) -> None:
        self.name = name
        self.path = path
        self.size = size
        self.mapping = mapping
        self.writable = writable

    def __repr__(self) -> str:
        return f"Segment({self.path!r}, size={self.size}, writable={self.writable})"

    def close(self) -> None:
        """Unmap, unless something still views the mapping (then it goes with the last view). Idempotent."""
        mapping, self.mapping = self.mapping, None
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:
                log.debug("%s: mapping still viewed; it is unmapped when the last view goes", self.path)


def lstat_or_none(path: str) -> os.stat_result | None:
    """``os.lstat(path)``, or None when nothing is there."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def describe_user(uid: int) -> str:
    """``uid 65534 (nobody)``, or ``uid N`` when the user has no name here."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def foreign_problems(info: os.stat_result) -> list[str]:
    """What makes a file not one of ours: not a regular file, another owner, a mode other than 0600."""
    problems = []
    if not stat.S_ISREG(info.st_mode):
        problems.append("not a regular file" if not stat.S_ISLNK(info.st_mode) else "a symbolic link")
    if info.st_uid != os.geteuid():
        problems.append(f"owned by {describe_user(info.st_uid)}, not {describe_user(os.geteuid())}")
    if stat.S_IMODE(info.st_mode) != SEGMENT_MODE:
        problems.append(f"mode {stat.S_IMODE(info.st_mode):04o}, not {SEGMENT_MODE:04o}")
    return problems


def squatted(path: str) -> str | None:
    """Why the file at ``path`` is not ours (its owner, mode or type), or None when it is ours or absent."""
    info = lstat_or_none(path)
    if info is None:
        return None
    problems = foreign_problems(info)
    if not problems:
        return None
    if info.st_uid == os.geteuid():
        problems.insert(0, f"owned by {describe_user(info.st_uid)}")
    return ", ".join(problems)


def warn_squatted(path: str, why: str, what: str) -> None:
    """The one WARNING for a name of ours that someone else's file holds: left alone, another name used."""
    log.warning(
        "%s exists but is not ossmodelconnector's (%s): it is left alone, and %s uses another name. If "
        "nobody should have made it, ask its owner, or remove it",
        path,
        why,
        what,
    )


def check_ownership(path: str, info: os.stat_result) -> None:
    """Refuse a file that is not a regular file of this user with mode 0600: someone else made it.

    Raises:
        CacheError: naming the path, what is wrong and the fix; the file is left alone.
    """
    problems = foreign_problems(info)
    if problems:
        raise CacheError(
            f"{path} exists but was not created by ossmodelconnector for this user ({', '.join(problems)}): "
            "it is never used nor removed; if it is stale remove it yourself, otherwise find out who "
            "created it, or set cacheDir (or model_dir) elsewhere"
        )


def create_segment(directory: str, name: str, size: int, *, mtime_ns: int | None = None) -> Segment:
    """Create segment ``name`` in ``directory``: exclusive, mode 0600, sparse at ``size`` bytes, mapped.

    Args:
        directory: ``/dev/shm`` (a POSIX shared-memory object) or any other directory (a plain file).
        name: the segment's name.
        size: its length in bytes, ``>= 0``.
        mtime_ns: its access and modification time once sized (a data segment shows its object's
            ``Last-Modified``); None leaves the time of creation.

    Returns:
        The segment, mapped readable and writable.

    Raises:
        FileExistsError: the name is taken (the caller decides whether it is stale).
        CacheError: the file could not be created or sized (the cause is chained).
    """
    path = segment_path(directory, name)
    try:
        if is_dev_shm(directory):
            try:
                memory = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=SEGMENT_MODE, size=size)
            except posix_ipc.ExistentialError:
                raise FileExistsError(path) from None
            fd = memory.fd
        else:
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(path, flags, SEGMENT_MODE)
    except FileExistsError:
        raise
    except (OSError, posix_ipc.Error) as exc:
        raise CacheError(
            f"cannot create cache file {path} ({size} bytes): {exc}; check that {directory} exists and is "
            "writable, or set cacheDir elsewhere"
        ) from exc
    try:
        os.fchmod(fd, SEGMENT_MODE)  # the umask may have taken bits away; we want exactly 0600
        if size and os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
        if mtime_ns is not None:
            set_times(fd, mtime_ns, name=path)  # after the sizing, which moves it
        mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED) if size else None
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise CacheError(
            f"cannot size or map cache file {path} to {size} bytes: {exc}; free memory or space in "
            f"{directory}, or set cacheDir elsewhere"
        ) from exc
    finally:
        os.close(fd)
    return Segment(name, path, size, mapping, writable=True)


def attach_segment(directory: str, name: str, *, writable: bool = False) -> Segment:
    """Map an existing segment of ours (regular file, this user, mode 0600).

    Args:
        directory: where it lives.
        name: its name.
        writable: map it writable too (the default is read-only).

    Returns:
        The segment, its size from the file.

    Raises:
        FileNotFoundError: no such segment.
        CacheError: the file is not ours (see :func:`check_ownership`) or cannot be mapped.
    """
    path = segment_path(directory, name)
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        info = lstat_or_none(path)
        if info is not None:
            check_ownership(path, info)  # a symlink (ELOOP) or a foreign file gets the clear message
        raise CacheError(f"cannot open cache file {path}: {exc}") from exc
    try:
        info = os.fstat(fd)
        check_ownership(path, info)
        size = info.st_size
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot) if size else None
    except OSError as exc:
        raise CacheError(f"cannot map cache file {path}: {exc}") from exc
    finally:
        os.close(fd)
    return Segment(name, path, size, mapping, writable)


def unlink_segment(directory: str, name: str) -> bool:
    """Remove segment ``name`` from ``directory``; False when it was already gone."""
    try:
        os.unlink(segment_path(directory, name))
    except FileNotFoundError:
        return False
    return True
