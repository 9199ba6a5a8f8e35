"""What every reader hook shares: find the waitable behind a path or a file object, and wait on it.

The hooks never handle a timeout or an error themselves: the waitable (the cache's handle) raises its own
errors (``RequestTimeoutError``, ``IntegrityError``, ``OwnerDiedError``, a worker's failure) and the hooks
let them propagate unchanged to the framework's caller.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from ossmodelconnector.cache.registry import WaitableFile, lookup, path_is_registered
from ossmodelconnector.errors import CacheError

__all__ = [
    "HOOK_WAIT_TIMEOUT_S",
    "check_entry",
    "inside_safetensors_open",
    "opening_safetensors",
    "reader_closed",
    "reader_opened",
    "reading",
    "replaced_entry_error",
    "wait_range",
    "wait_whole",
    "waitable_for",
]

HOOK_WAIT_TIMEOUT_S: float | None = None
"""Seconds a hook waits for one range; ``None`` defers to the waitable's own timeout (the connector's
configured wait timeout), which is what the hooks pass."""

_local = threading.local()


def waitable_for(target: object) -> WaitableFile | None:
    """The waitable behind a path or a file object opened on a registered path, else ``None``.

    Args:
        target: a path (``str``, ``bytes``, ``os.PathLike``), a file object with a ``name``, or anything.

    Returns:
        The registered waitable, or ``None`` for unregistered paths, descriptors and other objects.
    """
    if isinstance(target, (str, bytes, os.PathLike)):
        return lookup(target)
    if isinstance(target, int):
        return None
    try:
        name = getattr(target, "name", None)
    except Exception:  # a property of a foreign object; not ours to judge
        return None
    if isinstance(name, (str, bytes, os.PathLike)):
        return lookup(name)
    return None


def replaced_entry_error(name: object) -> CacheError:
    """The error for an entry of a prepared directory that no longer leads to the cache's file."""
    return CacheError(
        f"{name!r}: this entry of a prepared directory no longer leads to the file the cache fills (it was "
        "replaced after it was prepared); nothing was read from it. Prepare the directory again, into a "
        "directory only you can write to"
    )


def check_entry(path: object, waitable: WaitableFile) -> None:
    """Before a reader opens ``path`` itself (natively): refuse an entry replaced since it was registered.

    Raises:
        CacheError: ``path`` leads to another file than the one registered for ``waitable``.
    """
    if isinstance(path, (str, bytes, os.PathLike)) and not path_is_registered(path, waitable):
        raise replaced_entry_error(path)


def wait_range(waitable: WaitableFile, start: int, end: int) -> None:
    """Wait until bytes ``[start, end)`` (clamped to the file) are readable; nothing for an empty range.

    Args:
        waitable: the registered file.
        start: first byte.
        end: one past the last byte.

    Raises:
        ConnectorError: whatever the waitable raises (timeout, integrity, a worker's failure, closed).
    """
    end = min(end, waitable.size)
    if start < end:
        waitable.wait(max(start, 0), end, HOOK_WAIT_TIMEOUT_S)


def wait_whole(waitable: WaitableFile) -> None:
    """Wait until the whole file is readable and verified.

    Args:
        waitable: the registered file.

    Raises:
        ConnectorError: whatever the waitable raises.
    """
    waitable.wait_all(HOOK_WAIT_TIMEOUT_S)


def reader_opened(waitable: WaitableFile) -> None:
    """A reader opened the file: a lazy file is not evicted until the matching :func:`reader_closed`.

    Waitables without reader counts (a prepared directory's eager files) ignore it.

    Raises:
        ClosedError: the lazy file's directory was closed.
    """
    add = getattr(waitable, "add_reader", None)
    if add is not None:
        add()


def reader_closed(waitable: WaitableFile) -> None:
    """Undo one :func:`reader_opened`."""
    remove = getattr(waitable, "remove_reader", None)
    if remove is not None:
        remove()


@contextlib.contextmanager
def reading(waitable: WaitableFile) -> Iterator[None]:
    """Count a reader for the duration of the block (a ``torch.load`` reading the whole file)."""
    reader_opened(waitable)
    try:
        yield
    finally:
        reader_closed(waitable)


@contextlib.contextmanager
def opening_safetensors() -> Iterator[None]:
    """Mark this thread as inside the real ``safe_open`` constructor (see :func:`inside_safetensors_open`)."""
    previous = getattr(_local, "safetensors_open", False)
    _local.safetensors_open = True
    try:
        yield
    finally:
        _local.safetensors_open = previous


def inside_safetensors_open() -> bool:
    """Whether this thread is inside the real ``safe_open`` constructor.

    safetensors maps the whole file (``torch.UntypedStorage.from_file``) when it opens it, before any
    tensor is read; the storage hook must not wait for the whole file then, or opening every shard up front
    (as transformers does) would serialize the load.
    """
    return bool(getattr(_local, "safetensors_open", False))
