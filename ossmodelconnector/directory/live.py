"""The model directories this process prepared and has not closed yet, by path.

A second ``prepare_directory`` of the same directory, of one inside it or of one around it, would clean
files that the first one is still serving: :func:`reserve` refuses it before anything is touched.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
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
    # By identity, not spelling: an alias (a symlinked parent, /proc/self/cwd/..., a bind mount) of a live
    # directory is that directory, and cleaning it would delete what the live one serves.
    place = _Place.of(path)
    for other, directory in _LIVE.items():
        if directory.closed:
            continue
        relation = place.relation_to(_Place.of(other))
        if relation is None:
            continue
        spelled = "" if other == path else f" (the same place by another path: {place.real!r})"
        raise UnsafePathError(
            f"model_dir {path!r} refused: it {relation} the directory {other!r}{spelled} this process "
            f"prepared from {directory.uri} and is still serving; nothing was deleted. Fix: close that one "
            "first (connector.close()), or choose a separate directory"
        )


@dataclass(frozen=True)
class _Place:
    """Where a directory really is: its path with symlinks resolved, and the ``(st_dev, st_ino)`` of it
    (when it exists) and of each of its existing ancestors, nearest first."""

    real: str
    identity: tuple[int, int] | None
    ancestors: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, path: str) -> _Place:
        real = os.path.realpath(path)
        identity = _identity(real)
        ancestors = []
        current = real
        while (parent := os.path.dirname(current)) != current:
            current = parent
            found = _identity(current)
            if found is not None:
                ancestors.append(found)
        return cls(real, identity, tuple(ancestors))

    def relation_to(self, other: _Place) -> str | None:
        """``"is"``, ``"is inside"``, ``"contains"`` (this place relative to ``other``), or None."""
        if self.real == other.real or (self.identity is not None and self.identity == other.identity):
            return "is"
        # A bind mount has another path but the same inode: compare identities as well as paths.
        if self.real.startswith(other.real + os.sep) or (
            other.identity is not None and other.identity in self.ancestors
        ):
            return "is inside"
        if other.real.startswith(self.real + os.sep) or (
            self.identity is not None and self.identity in other.ancestors
        ):
            return "contains"
        return None


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino
