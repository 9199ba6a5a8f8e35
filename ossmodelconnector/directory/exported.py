"""The directories a live process of this environment's ancestry prepared: ``OSSMC_PREPARED_DIRS``.

A prepared (or attached) directory is added to the variable while it is open, so that every process
started under it (``spawn`` workers, ``subprocess``, ``python -m``) attaches to it at start-up
(``ossmodelconnector.startup``) instead of preparing it again; it is removed when the directory closes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from ossmodelconnector.environment import PREPARED_DIRS_ENV, environment_value

__all__ = ["export_directory", "exported_directories", "unexport_directory"]


def exported_directories(environ: Mapping[str, str] | None = None) -> list[str]:
    """The directories listed in ``OSSMC_PREPARED_DIRS`` (absolute ones only)."""
    text = environment_value(PREPARED_DIRS_ENV, environ)
    return [part for part in text.split(os.pathsep) if part.startswith("/")]


def export_directory(model_dir: str, environ: MutableMapping[str, str] | None = None) -> None:
    """Add ``model_dir`` to ``OSSMC_PREPARED_DIRS`` so that child processes attach to it.

    Args:
        model_dir: an absolute directory this process prepared (or attached).
        environ: the mapping to change (default ``os.environ``, which children inherit).
    """
    target = os.environ if environ is None else environ
    directories = exported_directories(target)
    if model_dir not in directories:
        target[PREPARED_DIRS_ENV] = os.pathsep.join([*directories, model_dir])


def unexport_directory(model_dir: str, environ: MutableMapping[str, str] | None = None) -> None:
    """Remove ``model_dir`` from ``OSSMC_PREPARED_DIRS`` (the variable goes with the last one)."""
    target = os.environ if environ is None else environ
    directories = [d for d in exported_directories(target) if d != model_dir]
    if directories:
        target[PREPARED_DIRS_ENV] = os.pathsep.join(directories)
    else:
        target.pop(PREPARED_DIRS_ENV, None)
