"""The model directories this process prepared and has not closed yet, by path.

A second ``prepare_directory`` of the same directory, of one inside it or of one around it, would clean
files that the first one is still serving: :func:`reserve` refuses it before anything is touched.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol

from ossmodelconnector.errors import UnsafePathError

__all__ = ["live_directories", "refuse_overlap", "release", "reserve"]


class LiveDirectory(Protocol):
    """What the registry needs to know of a prepared directory."""

    @property
    def closed(self) -> bool:
        """Whether it was closed (then it no longer counts)."""
        ...

    @property
    def uri(self) -> str:
        """The OSS prefix it mirrors, for messages."""
        ...


_LIVE: dict[str, LiveDirectory] = {}
_LOCK = threading.Lock()


def live_directories() -> list[str]:
    """The model directories prepared and not yet closed in this process."""
    with _LOCK:
        return sorted(_LIVE)


def reserve(path: str, directory: LiveDirectory) -> None:
    """Record ``directory`` as serving ``path``, unless a live one overlaps it.

    Raises:
        UnsafePathError: ``path`` is, is inside, or contains a live prepared directory.
    """
    with _LOCK:
        _refuse_overlap_locked(path)
        _LIVE[path] = directory


def refuse_overlap(path: str) -> None:
    """Raise if ``path`` is, is inside, or contains a live prepared directory.

    Raises:
        UnsafePathError: it does; the message names the other directory and the fix.
    """
    with _LOCK:
        _refuse_overlap_locked(path)


def release(path: str, directory: LiveDirectory) -> None:
    """Forget ``directory`` (if it is still the one recorded for ``path``)."""
    with _LOCK:
        if _LIVE.get(path) is directory:
            del _LIVE[path]


def _refuse_overlap_locked(path: str) -> None:
    for other, directory in _LIVE.items():
        if directory.closed:
            continue
        if other == path or path.startswith(other + os.sep) or other.startswith(path + os.sep):
            relation = "is" if other == path else ("is inside" if len(path) > len(other) else "contains")
            raise UnsafePathError(
                f"model_dir {path!r} refused: it {relation} the directory {other!r} this process prepared "
                f"from {directory.uri} and is still serving; nothing was deleted. Fix: close that one first "
                "(connector.close()), or choose a separate directory"
            )
