"""The start-up hook: every Python process under a prepared directory's owner reads through its cache.

::

    interpreter start-up ── ossmodelconnector.pth (site-packages) ──┐  both call run() only when a
                        └── sitecustomize.py (on PYTHONPATH, put     │  variable below is set; the
                            there by ``ossmodelconnector run``) ─────┘  .pth line costs one dict lookup
    run():
      OSSMODELCONNECTOR_PREPARED_DIRS=/models/a:/models/b   (exported by prepare_directory while open)
          -> reader: hooks.install(), cache.remote.enable(dirs): a read under a directory attaches its
             state table on first use and waits on the owner's chunk states (no download here)
      ENABLE_CONNECTOR=1 + OSS_ENDPOINT, OSS_PATH, MODEL_DIR (+ OSS_ACCESS_KEY_ID/...), MODEL_DIR not
      exported yet
          -> owner: OssModelConnector(...).prepare_directory(OSS_PATH, MODEL_DIR); the directory is
             exported, so this process's descendants attach instead of preparing again; the cache is
             released when this process exits

Both variables travel to children through the environment: ``spawn`` and ``forkserver`` children,
``subprocess`` and ``python -m`` all start a new interpreter, which runs this hook again. ``fork``
children inherit the loaded modules instead (``cache/remote.py`` switches their handles to the shared
states). Failures never stop the program: they are reported on stderr (a reader without the hook still
reads complete small files; the owner's error names the variable to fix).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any

__all__ = [
    "ENABLE_ENV",
    "MODEL_DIR_ENV",
    "OSS_ENDPOINT_ENV",
    "OSS_PATH_ENV",
    "PREPARED_DIRS_ENV",
    "export_directory",
    "exported_directories",
    "run",
    "unexport_directory",
]

log = logging.getLogger(__name__)

PREPARED_DIRS_ENV = "OSSMODELCONNECTOR_PREPARED_DIRS"
"""``os.pathsep``-separated directories prepared by a live process of this environment's ancestry."""
CRED_PATH_ENV = "OSSMODELCONNECTOR_CRED_PATH"
"""Optional, for ``ENABLE_CONNECTOR``: a credentials JSON file (as ``cred_path``)."""
CONFIG_PATH_ENV = "OSSMODELCONNECTOR_CONFIG_PATH"
"""Optional, for ``ENABLE_CONNECTOR``: a config JSON file (as ``config_path``)."""
ENABLE_ENV = "ENABLE_CONNECTOR"
OSS_ENDPOINT_ENV = "OSS_ENDPOINT"
OSS_PATH_ENV = "OSS_PATH"
MODEL_DIR_ENV = "MODEL_DIR"

_lock = threading.Lock()
_ran = False
_owner: Any = None  # the connector this process created for ENABLE_CONNECTOR (kept alive until exit)


def exported_directories(environ: Mapping[str, str] | None = None) -> list[str]:
    """The directories listed in ``OSSMODELCONNECTOR_PREPARED_DIRS`` (absolute ones only)."""
    text = (os.environ if environ is None else environ).get(PREPARED_DIRS_ENV, "")
    return [part for part in text.split(os.pathsep) if part.startswith("/")]


def export_directory(model_dir: str, environ: MutableMapping[str, str] | None = None) -> None:
    """Add ``model_dir`` to ``OSSMODELCONNECTOR_PREPARED_DIRS`` so that child processes attach to it.

    Args:
        model_dir: an absolute directory this process prepared (or attached).
        environ: the mapping to change (default ``os.environ``, which children inherit).
    """
    target = os.environ if environ is None else environ
    directories = exported_directories(target)
    if model_dir not in directories:
        target[PREPARED_DIRS_ENV] = os.pathsep.join([*directories, model_dir])


def unexport_directory(model_dir: str, environ: MutableMapping[str, str] | None = None) -> None:
    """Remove ``model_dir`` from ``OSSMODELCONNECTOR_PREPARED_DIRS`` (the variable goes with the last one)."""
    target = os.environ if environ is None else environ
    directories = [d for d in exported_directories(target) if d != model_dir]
    if directories:
        target[PREPARED_DIRS_ENV] = os.pathsep.join(directories)
    else:
        target.pop(PREPARED_DIRS_ENV, None)


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``ENABLE_CONNECTOR`` asks for the no-code mode (``1``, ``true``, ``yes``, ``on``)."""
    value = (os.environ if environ is None else environ).get(ENABLE_ENV, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def run() -> None:
    """Install what the environment asks for (see the module docstring); only the first call acts.

    Never raises: a failure is printed on stderr, and the program goes on without the connector.
    """
    global _ran
    with _lock:
        if _ran:
            return
        _ran = True
    try:
        # Listed before becoming an owner: the owner's own directory is served by its own handles.
        directories = exported_directories()
        if enabled() and not _model_dir_exported():
            _become_owner()
        if directories:
            _become_reader(directories)
    except Exception as exc:
        print(f"ossmodelconnector: start-up hook failed, continuing without it: {exc}", file=sys.stderr)
        log.debug("start-up hook failed", exc_info=True)


def _model_dir_exported() -> bool:
    model_dir = os.environ.get(MODEL_DIR_ENV, "")
    if not model_dir:
        return False
    from ossmodelconnector.dirsafety import normalize_model_dir

    return normalize_model_dir(model_dir) in exported_directories()


def _become_reader(directories: list[str]) -> None:
    from ossmodelconnector import hooks
    from ossmodelconnector.cache import remote
    from ossmodelconnector.config import load_config

    config = load_config(os.environ.get(CONFIG_PATH_ENV) or None)
    settings = remote.RemoteSettings(owner_check_s=config.owner_check_s, wait_timeout_s=config.wait_timeout_s)
    hooks.install()
    remote.enable(directories, settings)
    log.debug("process %d reads %s through the shared cache", os.getpid(), directories)


def _become_owner() -> None:
    global _owner
    missing = [name for name in (OSS_ENDPOINT_ENV, OSS_PATH_ENV, MODEL_DIR_ENV) if not os.environ.get(name)]
    if missing:
        raise RuntimeError(
            f"{ENABLE_ENV}=1 needs {', '.join(missing)} as well (OSS_ENDPOINT=oss-cn-...aliyuncs.com, "
            "OSS_PATH=oss://bucket/model/, MODEL_DIR=/local/dir); set them, or unset ENABLE_CONNECTOR"
        )
    from ossmodelconnector.connector import OssModelConnector

    connector = OssModelConnector(
        os.environ[OSS_ENDPOINT_ENV],
        cred_path=os.environ.get(CRED_PATH_ENV, ""),
        config_path=os.environ.get(CONFIG_PATH_ENV, ""),
    )
    try:
        connector.prepare_directory(os.environ[OSS_PATH_ENV], os.environ[MODEL_DIR_ENV])
    except BaseException:
        connector.close()
        raise
    _owner = connector  # closed at exit by the connector's own atexit hook: segments released then
