"""``os.stat``, ``os.lstat`` and ``os.fstat`` report a registered file's ``Last-Modified`` as its mtime.

::

    os.stat(path) -> the original stat -> (st_dev, st_ino) in registry.file_times()?
        no  -> the result as it is (one dictionary lookup; none at all while no file is registered)
        yes -> the same result with st_mtime / st_mtime_ns set to the object's Last-Modified

The cache sets a data segment's times to its object's ``Last-Modified`` when it creates it and sets them
back after every write and release of its own (``cache/shared_backing.py``), but the kernel moves them
at each write first: for the microseconds between a chunk's ``pwrite`` and the ``futimens`` after it, a
``stat`` sees the time of the write. Caches keyed on the modification time (the Stable Diffusion web UI's
sha256 cache via ``os.path.getmtime``, ComfyUI) would then hash a whole checkpoint again. In a process
with the hooks installed this wrapper closes that window: the answer is decided by what the file is
(device and inode), never by how its path is spelled, so the entry, its data segment and any alias agree.

``os.path.getmtime``, ``os.path.isfile`` and the rest of ``os.path``, ``pathlib.Path.stat`` and
``shutil`` call ``os.stat`` through the module attribute, so they are covered; ``os.DirEntry.stat()``
(``os.scandir``) and native code call the system directly and are not (they see the kernel's time,
which is ``Last-Modified`` except during that window). The import system binds ``posix.stat`` itself and never
pays for the wrapper. Only the ``os`` module's attributes are replaced: a module that bound ``stat``
with ``from os import stat`` before the hooks were installed keeps the original.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, cast

from ossmodelconnector.cache.registry import file_times
from ossmodelconnector.hooks.patching import PatchSet

__all__ = ["install", "with_mtime"]

_NS = 1_000_000_000
_MTIME = 8  # st_mtime's index in the result's sequence (whole seconds)


def with_mtime(result: os.stat_result, mtime_ns: int) -> os.stat_result:
    """``result`` with ``st_mtime`` (its sequence item, the float and ``st_mtime_ns``) set to ``mtime_ns``."""
    # The sequence (10 items) and the named rest, which varies by platform: the pickling form has both.
    sequence, extra = cast("tuple[tuple[Any, ...], dict[str, Any]]", result.__reduce__()[1])
    fields = list(sequence)
    fields[_MTIME] = mtime_ns // _NS
    named = dict(extra)
    named["st_mtime"] = mtime_ns / _NS
    named["st_mtime_ns"] = mtime_ns
    return os.stat_result(fields, named)


def _make_stat(original: Callable[..., os.stat_result]) -> Callable[..., os.stat_result]:
    # The check is written out in each wrapper (no helper call): every stat of the process pays it.
    def stat(path: Any, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> os.stat_result:
        result = original(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        times = file_times()
        if times:
            mtime_ns = times.get((result.st_dev, result.st_ino))
            if mtime_ns is not None and result.st_mtime_ns != mtime_ns:
                return with_mtime(result, mtime_ns)
        return result

    stat.__wrapped__ = original  # type: ignore[attr-defined]
    stat.__doc__ = original.__doc__
    return stat


def _make_lstat(original: Callable[..., os.stat_result]) -> Callable[..., os.stat_result]:
    # The entries are symlinks whose own time is Last-Modified already (never written after); an lstat
    # reaches a data file only when given the data file itself.
    def lstat(path: Any, *, dir_fd: int | None = None) -> os.stat_result:
        result = original(path, dir_fd=dir_fd)
        times = file_times()
        if times:
            mtime_ns = times.get((result.st_dev, result.st_ino))
            if mtime_ns is not None and result.st_mtime_ns != mtime_ns:
                return with_mtime(result, mtime_ns)
        return result

    lstat.__wrapped__ = original  # type: ignore[attr-defined]
    lstat.__doc__ = original.__doc__
    return lstat


def _make_fstat(original: Callable[[int], os.stat_result]) -> Callable[[int], os.stat_result]:
    def fstat(fd: int) -> os.stat_result:
        result = original(fd)
        times = file_times()
        if times:
            mtime_ns = times.get((result.st_dev, result.st_ino))
            if mtime_ns is not None and result.st_mtime_ns != mtime_ns:
                return with_mtime(result, mtime_ns)
        return result

    fstat.__wrapped__ = original  # type: ignore[attr-defined]
    fstat.__doc__ = original.__doc__
    return fstat


def install(patches: PatchSet) -> None:
    """Replace ``os.stat``, ``os.lstat`` and ``os.fstat`` (the ``os`` module's attributes only).

    Args:
        patches: where the replacements are recorded for :meth:`PatchSet.restore`.
    """
    patches.set_attribute(os, "stat", _make_stat(os.stat))
    patches.set_attribute(os, "lstat", _make_lstat(os.lstat))
    patches.set_attribute(os, "fstat", _make_fstat(os.fstat))
