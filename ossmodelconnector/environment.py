"""The environment variables of this package, by name, and how their legacy spelling is still read.

Every variable of ours starts with ``OSSMC_``: the settings (``OSSMC_CHUNK_SIZE_MB``..., one per
``Config`` field, parsed in ``config.py``) and the four below. The four had an ``OSSMODELCONNECTOR_``
spelling before; it is still read as an alias, the ``OSSMC_`` one winning. (The no-code mode also reads
the reference product's own ``ENABLE_CONNECTOR``, ``OSS_ENDPOINT``, ``OSS_PATH``, ``MODEL_DIR`` and the
``OSS_ACCESS_KEY_*`` credentials, as its documentation spells them: ``startup.py`` and
``oss/credentials.py``.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = [
    "CONFIG_PATH_ENV",
    "CRED_PATH_ENV",
    "ENV_PREFIX",
    "LEGACY_ENV_PREFIX",
    "NOT_SETTINGS",
    "PREPARED_DIRS_ENV",
    "PUREPYTHON_ENV",
    "environment_value",
]

ENV_PREFIX = "OSSMC_"
"""The prefix of every environment variable of this package."""
LEGACY_ENV_PREFIX = "OSSMODELCONNECTOR_"
"""Read as an alias of ``OSSMC_`` for the variables below that had it (never for settings); OSSMC_ wins."""
CRED_PATH_ENV = ENV_PREFIX + "CRED_PATH"
"""A credentials JSON file for the no-code modes (as ``cred_path``)."""
CONFIG_PATH_ENV = ENV_PREFIX + "CONFIG_PATH"
"""A config JSON file for the no-code modes (as ``config_path``)."""
PREPARED_DIRS_ENV = ENV_PREFIX + "PREPARED_DIRS"
"""``os.pathsep``-separated directories prepared by a live process of this environment's ancestry."""
PUREPYTHON_ENV = ENV_PREFIX + "PUREPYTHON"
"""``1`` forces the pure-Python twins of the ``_fast`` kernels (read once, by ``_fast``)."""
NOT_SETTINGS = frozenset({CRED_PATH_ENV, CONFIG_PATH_ENV, PREPARED_DIRS_ENV, PUREPYTHON_ENV})
"""Our variables that are not settings: ``config.py`` neither parses them nor warns about them."""


def environment_value(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of the environment variable ``name`` (an ``OSSMC_*`` name), or of its legacy alias.

    Args:
        name: one of :data:`CRED_PATH_ENV`, :data:`CONFIG_PATH_ENV`, :data:`PREPARED_DIRS_ENV`,
            :data:`PUREPYTHON_ENV`.
        environ: the mapping to read (default ``os.environ``).

    Returns:
        ``OSSMC_X`` if set and not empty, else ``OSSMODELCONNECTOR_X``, else "".
    """
    source = os.environ if environ is None else environ
    return source.get(name) or source.get(LEGACY_ENV_PREFIX + name.removeprefix(ENV_PREFIX)) or ""
