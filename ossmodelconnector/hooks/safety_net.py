"""The safety net: any other Python-level open or mapping of a registered file waits for the whole file.

Python raises the audit event ``open`` from ``io.FileIO`` and ``os.open`` (and native code may raise it
too) and ``mmap.__new__`` from ``mmap.mmap``; a hook added with :func:`sys.addaudithook` sees them all,
whichever module bound which name. For a registered path opened for reading, or a registered file mapped
from a descriptor, the hook waits for the whole file before the call proceeds.

Audit hooks cannot be removed, so it is added once per process and does nothing while the hooks are not
installed; for every other event it costs one set-membership test. Opens and mappings made by this
package's own code are let through: the cache writes its segments itself, and the ``open`` hook's file
objects wait per range. It raises nothing but the cache's own errors (a wait's timeout, integrity,
a worker's failure): anything else is logged and the open proceeds.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from ossmodelconnector.cache.registry import lookup, registered_directories
from ossmodelconnector.errors import ConnectorError
from ossmodelconnector.hooks.waits import wait_whole

__all__ = ["disable", "enable"]

log = logging.getLogger(__name__)

_OWN_PACKAGE = __name__.partition(".")[0] + "."
_EVENTS = frozenset(("open", "mmap.__new__"))
_READ_ONLY_ACCESS = {0, 1, 3}  # mmap ACCESS_DEFAULT, ACCESS_READ, ACCESS_COPY: anything but ACCESS_WRITE

_lock = threading.Lock()
_added = False
_enabled = False


def enable() -> None:
    """Make the audit hook act (adding it on first use)."""
    global _added, _enabled
    with _lock:
        if not _added:
            sys.addaudithook(_audit)
            _added = True
        _enabled = True


def disable() -> None:
    """Make the audit hook a no-op again (it cannot be removed)."""
    global _enabled
    _enabled = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event not in _EVENTS or not _enabled:
        return
    try:
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                path = _descriptor_path(path)
            # The registry's prefix check first: it rejects unrelated paths before anything else runs.
            waitable = lookup(path) if isinstance(path, (str, bytes, os.PathLike)) else None
            if waitable is None or not _reads_only(mode, flags):
                return
        else:
            fileno, _length, access, _offset = args
            if fileno < 0 or access not in _READ_ONLY_ACCESS:
                return
            path = _descriptor_path(fileno)
            waitable = None if path is None else lookup(path)
            if waitable is None:
                return
        if _called_from_this_package():
            return
        log.debug("%s of %s outside the reader hooks: waiting for the whole file", event, path)
        wait_whole(waitable)
    except ConnectorError:
        raise
    except Exception:
        # The safety net must never break an unrelated open: report and let it proceed.
        log.exception("ossmodelconnector audit hook failed on %s %r; the open proceeds unhooked", event, args)


def _reads_only(mode: object, flags: object) -> bool:
    if isinstance(mode, str):
        return not ("w" in mode or "a" in mode or "x" in mode or "+" in mode)
    return isinstance(flags, int) and flags & os.O_ACCMODE == os.O_RDONLY


def _descriptor_path(fd: int) -> str | None:
    # Only when a directory is registered: a readlink per descriptor-based open or mapping otherwise.
    if not registered_directories():
        return None
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


# Frames that stand in for the function whose event this is (the ``open`` and ``os.open`` replacements):
# the caller is the frame beyond them.
_STAND_INS = frozenset(
    {("ossmodelconnector.hooks.files", "open"), ("ossmodelconnector.hooks.files", "os_open")}
)


def _called_from_this_package() -> bool:
    # Frame 0 is this module; walk out to the first frame that is not (the caller of os.open/mmap/FileIO).
    frame = sys._getframe(1)
    while frame is not None and (
        frame.f_globals.get("__name__") == __name__
        or (frame.f_globals.get("__name__"), frame.f_code.co_name) in _STAND_INS
    ):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return False
    name = frame.f_globals.get("__name__", "")
    return isinstance(name, str) and name.startswith(_OWN_PACKAGE)
