"""Where a prepared directory's large files go, and under which paths inside it.

``choose_placement``: ``"shm"`` when the bytes to create fit in ``cacheDir`` (keeping a margin free) and
within ``memoryLimitMB``, else ``"disk"`` (``model_dir/.ossmodelconnector/data/``), with the reason.
``relative_paths_of``: each file's path inside the directory, refused when it could escape it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import PurePosixPath

from ossmodelconnector.cache.manifest import OWN_DIR_NAME
from ossmodelconnector.cache.segments import free_space, required_margin
from ossmodelconnector.errors import UnsafePathError
from ossmodelconnector.objects import ObjectInfo

__all__ = ["choose_placement", "relative_paths_of"]


def choose_placement(
    new: int, cache_dir: str, memory_limit_bytes: int | None, *, total: int | None = None
) -> tuple[str, str]:
    """Where files go: ``new`` bytes to create in ``cache_dir``, of ``total`` (default ``new``) in all.

    The rest of ``total`` is in segments another directory shares already: they count towards
    ``memoryLimitMB`` but need no room.
    """
    if memory_limit_bytes is not None and (new if total is None else total) > memory_limit_bytes:
        return "disk", f"they exceed memoryLimitMB ({memory_limit_bytes} bytes)"
    try:
        available, size = free_space(cache_dir)
    except OSError as exc:
        return "disk", f"{cache_dir} is not usable ({exc})"
    margin = required_margin(size)
    if new + margin > available:
        return "disk", f"{cache_dir} has {available} bytes free and {margin} must stay free"
    return "shm", ""


def relative_paths_of(files: Sequence[ObjectInfo], given: Sequence[str] | None) -> tuple[str, ...]:
    """Each file's ``/``-separated path inside the prepared directory: ``given``, checked, or by default
    each key after the keys' common folder.

    Raises:
        UnsafePathError: an absolute, empty or climbing path, or one inside ``.ossmodelconnector``.
        ValueError: not one path per file, or two files on one path.
    """
    if given is None:
        folders = [info.key.rsplit("/", 1)[0] + "/" if "/" in info.key else "" for info in files]
        common = os.path.commonprefix(folders)  # noqa: RUF071 - keys are strings, not local paths
        common = common[: common.rfind("/") + 1]  # ... so cut back to a whole folder
        given = [info.key[len(common) :] for info in files]
    if len(given) != len(files):
        raise ValueError(f"{len(given)} relative paths for {len(files)} files: give one per file")
    paths = []
    for relative in given:
        parts = PurePosixPath(relative).parts
        if (
            not relative
            or relative.startswith("/")
            or "\0" in relative
            or any(part in ("..", ".") for part in parts)
            or parts[0] == OWN_DIR_NAME
        ):
            raise UnsafePathError(
                f"{relative!r} cannot be a path inside the prepared directory (absolute, empty, '..' or "
                f"{OWN_DIR_NAME!r}): skip that object or rename it"
            )
        paths.append("/".join(parts))
    if len(set(paths)) != len(paths):
        raise ValueError("two files map to the same relative path; give distinct relative_paths")
    return tuple(paths)
