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
          -> user: join MODEL_DIR's users (directory/users.py); unless a live process already serves it,
             start the owner process (serve_directory, below) and wait until it is ready; export
             MODEL_DIR and read it as a reader, like the descendants, which join the users too
      the owner process: OssModelConnector(...).prepare_directory(OSS_PATH, MODEL_DIR), then serve it
             until no user is left (checked every ownerCheckSeconds), then release the cache and exit

The owner is a process of its own so that ownership never goes with a user: the first process to start
may be a short probe (``python -c "import torch"``) that exits while a server it did not start still
reads; the owner serves both and leaves with the last of them.

Both variables travel to children through the environment: ``spawn`` and ``forkserver`` children,
``subprocess`` and ``python -m`` all start a new interpreter, which runs this hook again. ``fork``
children inherit the loaded modules instead (``cache/attaching.py`` switches their handles to the shared
states). Failures never stop the program: they are reported on stderr (a reader without the hook still
reads complete small files; the owner's error names the variable to fix). A ``MODEL_DIR`` that an earlier
owner left (killed before it finished) is still read through the hooks then, so its unfilled bytes raise
that owner's death instead of reading as zeros.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ossmodelconnector import hooks
from ossmodelconnector.cache import attaching
from ossmodelconnector.cache.segments import process_alive
from ossmodelconnector.config import Config, load_config
from ossmodelconnector.directory.exported import export_directory, exported_directories
from ossmodelconnector.directory.safety import normalize_model_dir, read_owner
from ossmodelconnector.directory.users import DirectoryUsers, serve_while_used
from ossmodelconnector.environment import (
    CONFIG_PATH_ENV,
    CRED_PATH_ENV,
    ENV_PREFIX,
    LEGACY_ENV_PREFIX,
    PREPARED_DIRS_ENV,
    environment_value,
)

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
    "serve_directory",
]

log = logging.getLogger(__name__)

# The reference product's variables (not OSSMC_*: users set them as its documentation says).
ENABLE_ENV = "ENABLE_CONNECTOR"
OSS_ENDPOINT_ENV = "OSS_ENDPOINT"
OSS_PATH_ENV = "OSS_PATH"
MODEL_DIR_ENV = "MODEL_DIR"

_lock = threading.Lock()
_ran = False
_users: DirectoryUsers | None = None  # this process's hold on MODEL_DIR's owner process, kept until exit

# What the owner process runs (a module-level function, not a path, so the interpreter's own sys.path finds
# the package); the URI and the directory follow as arguments, nothing secret.
_OWNER_CODE = (
    "import sys; from ossmodelconnector.startup import serve_directory; "
    "sys.exit(serve_directory(*sys.argv[1:]))"
)
# Not given to the owner process: it must neither start an owner of its own nor read other directories.
_NOT_FOR_THE_OWNER = (
    ENABLE_ENV,
    PREPARED_DIRS_ENV,
    LEGACY_ENV_PREFIX + PREPARED_DIRS_ENV.removeprefix(ENV_PREFIX),
)


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
        directories = exported_directories()
        if enabled():
            directories = _use_the_owner_process(directories)
        if directories:
            _become_reader(directories)
    except Exception as exc:
        print(f"ossmodelconnector: start-up hook failed, continuing without it: {exc}", file=sys.stderr)
        log.debug("start-up hook failed", exc_info=True)
        if enabled():
            _guard_what_an_owner_left()


def _guard_what_an_owner_left() -> None:
    """After ``ENABLE_CONNECTOR`` failed: read what an earlier owner left in ``MODEL_DIR`` through the hooks.

    An owner killed before it finished (before it even reported ready) leaves entries that are symlinks to
    segments it never filled; read without the hooks they are zeros, the one outcome worse than an error.
    Read as an exported directory they wait for bytes and then raise that owner's death. The variable is
    exported, so the children read it the same way instead of each starting an owner of its own.
    """
    try:
        model_dir = _model_dir()
        if read_owner(model_dir) is None:  # no owner ever prepared it: nothing of ours to misread
            return
        directories = exported_directories()
        if model_dir not in directories:
            export_directory(model_dir)
            directories = [*directories, model_dir]
        _become_reader(directories)
    except Exception as exc:
        print(f"ossmodelconnector: cannot guard {os.environ.get(MODEL_DIR_ENV)}: {exc}", file=sys.stderr)
        log.debug("guarding what an owner left failed", exc_info=True)
        return
    print(
        f"ossmodelconnector: {model_dir} holds files of an earlier owner: they are read through the cache, "
        "and bytes it never fetched raise an error instead of reading as zeros",
        file=sys.stderr,
    )


def serve_directory(uri: str, model_dir: str) -> int:
    """The owner process of ``ENABLE_CONNECTOR``: prepare ``model_dir`` and serve it while it is used.

    Reports on stdout, as one JSON line, ``{"state": "ready"}`` (this process owns the directory now),
    ``{"state": "attached"}`` (another live process owns it: this one exits) or ``{"state": "error",
    "message": ...}``; then serves until no user is left (``directory/users.py``) and releases the cache.

    Args:
        uri: ``oss://bucket/prefix/`` (``OSS_PATH``).
        model_dir: the directory (``MODEL_DIR``).

    Returns:
        The exit code: 0, or 1 when preparing failed.
    """
    os.chdir("/")  # never keep the users' working directory busy
    try:
        connector = connector_from_environment()
    except Exception as exc:
        _report({"state": "error", "message": str(exc)})
        return 1
    try:
        directory = connector.prepare_directory(uri, model_dir)
        if type(directory).__name__ == "AttachedDirectory":  # another process won the race to own it
            connector.close()
            _report({"state": "attached"})
            return 0
    except Exception as exc:
        connector.close()
        _report({"state": "error", "message": str(exc)})
        return 1
    _report({"state": "ready"})
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), sys.stdout.fileno())  # the user stops reading: nothing may block on it
    serve_while_used(directory.model_dir, connector.config.owner_check_s, connector.close)
    return 0


def _report(state: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(state) + "\n")
    sys.stdout.flush()


def _model_dir() -> str:
    missing = [name for name in (OSS_ENDPOINT_ENV, OSS_PATH_ENV, MODEL_DIR_ENV) if not os.environ.get(name)]
    if missing:
        raise RuntimeError(
            f"{ENABLE_ENV}=1 needs {', '.join(missing)} as well (OSS_ENDPOINT=oss-cn-...aliyuncs.com, "
            "OSS_PATH=oss://bucket/model/, MODEL_DIR=/local/dir); set them, or unset ENABLE_CONNECTOR"
        )
    return normalize_model_dir(os.environ[MODEL_DIR_ENV])


def _use_the_owner_process(directories: list[str]) -> list[str]:
    """Join ``MODEL_DIR``'s users, starting its owner process first when none serves it; the directories
    to read from then on (``MODEL_DIR`` among them)."""
    global _users
    model_dir = _model_dir()
    config = load_config(environment_value(CONFIG_PATH_ENV) or None)
    users = DirectoryUsers.join(model_dir, config.wait_timeout_s)
    try:
        if model_dir not in directories and not _served(model_dir, os.environ[OSS_PATH_ENV]):
            _start_the_owner_process(model_dir, config)
    except BaseException:
        users.leave(unlink_if_last=True)  # the owner process never started: nothing else will remove it
        raise
    _users = users
    if model_dir not in directories:
        export_directory(model_dir)  # descendants read it too (and join its users)
        directories = [*directories, model_dir]
    return directories


def _served(model_dir: str, uri: str) -> bool:
    """Whether a live process serves ``model_dir`` from ``uri`` (its owner record says so)."""
    from ossmodelconnector.oss.uri import parse_prefix_uri

    record = read_owner(model_dir)
    if record is None or not record.get("active"):
        return False
    pid, start = record.get("pid"), record.get("pid_start")
    if not isinstance(pid, int) or not isinstance(start, int) or not process_alive(pid, start):
        return False
    bucket, prefix = parse_prefix_uri(uri)
    return bool(record.get("uri") == f"oss://{bucket}/{prefix}")


def _start_the_owner_process(model_dir: str, config: Config) -> None:
    env = {name: value for name, value in os.environ.items() if name not in _NOT_FOR_THE_OWNER}
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER_CODE, os.environ[OSS_PATH_ENV], model_dir],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        # None of the user's streams: it outlives the user, and a caller reading the user's output to its
        # end (a shell's $(...), subprocess.run) must not wait for it. It reports on its own pipe; its
        # log goes where logPath says.
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the terminal's process group: Ctrl-C ends the users, not it
    )
    assert owner.stdout is not None
    try:
        line = _first_line(owner.stdout.fileno(), config.wait_timeout_s)
    finally:
        owner.stdout.close()
    try:
        state = json.loads(line)
    except ValueError:
        state = {"state": "error", "message": f"it exited with code {owner.wait(config.wait_timeout_s)}"}
    if state.get("state") != "ready":
        owner.wait(config.wait_timeout_s)  # it exits at once: reaped here
    if state.get("state") == "error":
        raise RuntimeError(
            f"the process preparing {model_dir} ({ENABLE_ENV}=1) failed: {state.get('message')}; fix the "
            f"variables it names, or unset {ENABLE_ENV}"
        )
    log.debug("process %d serves %s (%s)", owner.pid, model_dir, state.get("state"))


def _first_line(fd: int, timeout_s: float) -> bytes:
    """The first line written to ``fd`` (without waiting longer than ``timeout_s``), b"" at end of file."""
    deadline = time.monotonic() + timeout_s
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise RuntimeError(
                f"the process preparing {os.environ.get(MODEL_DIR_ENV)} was not ready within {timeout_s:g} s "
                "(waitTimeoutSeconds); check the network and the logs, or raise waitTimeoutSeconds"
            )
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def _become_reader(directories: list[str]) -> None:
    config = load_config(environment_value(CONFIG_PATH_ENV) or None)
    settings = attaching.AttachSettings(
        owner_check_s=config.owner_check_s, wait_timeout_s=config.wait_timeout_s
    )
    hooks.install()
    attaching.enable(directories, settings)
    log.debug("process %d reads %s through the shared cache", os.getpid(), directories)
