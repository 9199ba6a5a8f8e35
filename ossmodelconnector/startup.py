"""The start-up entry point of the no-code modes: every Python process under an owner reads its cache.

::

    interpreter start-up ── ossmodelconnector.pth (site-packages) ──┐  both call run() only when a
                        └── sitecustomize.py (on PYTHONPATH, put     │  variable below is set; the
                            there by ``ossmodelconnector run``) ─────┘  .pth line costs one dict lookup
    run():
      OSSMC_PREPARED_DIRS=/models/a:/models/b   (exported by prepare_directory while open)
          -> reader: hooks.install(), cache.attaching.enable(dirs): a read under a directory attaches its
             state table on first use and waits on the owner's chunk states (no download here)
      ENABLE_CONNECTOR=1 + OSS_ENDPOINT, OSS_PATH, MODEL_DIR (+ OSS_ACCESS_KEY_ID/...), MODEL_DIR not
      exported yet
          -> owner: OssModelConnector(...).prepare_directory(OSS_PATH, MODEL_DIR); the directory is
             exported, so this process's descendants attach instead of preparing again; the cache is
             released when this process exits

Both variables travel to children through the environment: ``spawn`` and ``forkserver`` children,
``subprocess`` and ``python -m`` all start a new interpreter, which runs this hook again. ``fork``
children inherit the loaded modules instead (``cache/attaching.py`` switches their handles to the shared
states). Failures never stop the program: they are reported on stderr (a reader without the hook still
reads complete small files; the owner's error names the variable to fix).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ossmodelconnector import hooks
from ossmodelconnector.cache import attaching
from ossmodelconnector.config import load_config
from ossmodelconnector.directory.exported import exported_directories
from ossmodelconnector.directory.safety import normalize_model_dir
from ossmodelconnector.environment import CONFIG_PATH_ENV, CRED_PATH_ENV, environment_value

if TYPE_CHECKING:
    from ossmodelconnector.connector import OssModelConnector

__all__ = [
    "ENABLE_ENV",
    "MODEL_DIR_ENV",
    "OSS_ENDPOINT_ENV",
    "OSS_PATH_ENV",
    "connector_from_environment",
    "enabled",
    "run",
]

log = logging.getLogger(__name__)

# The reference product's variables (not OSSMC_*: users set them as its documentation says).
ENABLE_ENV = "ENABLE_CONNECTOR"
OSS_ENDPOINT_ENV = "OSS_ENDPOINT"
OSS_PATH_ENV = "OSS_PATH"
MODEL_DIR_ENV = "MODEL_DIR"

_lock = threading.Lock()
_ran = False
_owner: OssModelConnector | None = None  # made for ENABLE_CONNECTOR, kept alive until exit


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``ENABLE_CONNECTOR`` asks for the no-code mode (``1``, ``true``, ``yes``, ``on``)."""
    value = (os.environ if environ is None else environ).get(ENABLE_ENV, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def connector_from_environment(
    endpoint: str = "", cred_path: str = "", config_path: str = ""
) -> OssModelConnector:
    """A connector built from the arguments, each falling back to its environment variable.

    The one place both no-code modes (``ossmodelconnector run`` and ``ENABLE_CONNECTOR=1``) build their
    connector: the endpoint from ``OSS_ENDPOINT``, credentials from ``OSSMC_CRED_PATH`` (else the
    ``OSS_ACCESS_KEY_*`` variables), the config from ``OSSMC_CONFIG_PATH``.

    Raises:
        ConfigError: no endpoint given or set.
        ConnectorError: as :class:`~ossmodelconnector.connector.OssModelConnector` raises.
    """
    # Imported here, not at the top: a reader process (a vLLM worker) runs this module at start-up and
    # never builds a connector; the connector pulls in oss2 and the HTTP client (~0.4 s).
    from ossmodelconnector.connector import OssModelConnector
    from ossmodelconnector.errors import ConfigError

    endpoint = endpoint or os.environ.get(OSS_ENDPOINT_ENV, "")
    if not endpoint:
        raise ConfigError(f"no endpoint: give --endpoint or set {OSS_ENDPOINT_ENV}")
    return OssModelConnector(
        endpoint,
        cred_path=cred_path or environment_value(CRED_PATH_ENV),
        config_path=config_path or environment_value(CONFIG_PATH_ENV),
    )


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
    return bool(model_dir) and normalize_model_dir(model_dir) in exported_directories()


def _become_reader(directories: list[str]) -> None:
    config = load_config(environment_value(CONFIG_PATH_ENV) or None)
    settings = attaching.AttachSettings(
        owner_check_s=config.owner_check_s, wait_timeout_s=config.wait_timeout_s
    )
    hooks.install()
    attaching.enable(directories, settings)
    log.debug("process %d reads %s through the shared cache", os.getpid(), directories)


def _become_owner() -> None:
    global _owner
    missing = [name for name in (OSS_ENDPOINT_ENV, OSS_PATH_ENV, MODEL_DIR_ENV) if not os.environ.get(name)]
    if missing:
        raise RuntimeError(
            f"{ENABLE_ENV}=1 needs {', '.join(missing)} as well (OSS_ENDPOINT=oss-cn-...aliyuncs.com, "
            "OSS_PATH=oss://bucket/model/, MODEL_DIR=/local/dir); set them, or unset ENABLE_CONNECTOR"
        )
    connector = connector_from_environment()
    try:
        connector.prepare_directory(os.environ[OSS_PATH_ENV], os.environ[MODEL_DIR_ENV])
    except BaseException:
        connector.close()
        raise
    _owner = connector  # closed at exit by the connector's own atexit hook: segments released then
