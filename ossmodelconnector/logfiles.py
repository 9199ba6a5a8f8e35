"""The ``logPath`` file: a handler on the ``ossmodelconnector`` logger, added and removed on request.

The library itself only adds a ``NullHandler``; this module is how a config's ``logPath`` and
``logLevel`` take effect. Several connectors may configure logging at once (several may name the same
file): handlers are shared per file and reference-counted, and the package logger's level is the lowest
level any of them asked for, restored when the last one is undone.

The file is opened with :func:`~ossmodelconnector.regular_files.open_private_append`: created 0600, never
through a symlink, and only if it is this user's own regular file, because a log path in a shared
directory (``/tmp/ossmc.log``) is a name another user can plant first.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from io import TextIOWrapper

from ossmodelconnector.config import Config
from ossmodelconnector.errors import ConfigError
from ossmodelconnector.regular_files import open_private_append

__all__ = ["LOG_FORMAT", "PACKAGE_LOGGER", "configure_logging"]

log = logging.getLogger(__name__)

PACKAGE_LOGGER = "ossmodelconnector"
LOG_FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"


class _PrivateFileHandler(logging.FileHandler):
    """A ``FileHandler`` whose file is opened by ``open_private_append`` (also when it reopens it)."""

    def __init__(self, path: str, setting: str) -> None:
        self._setting = setting  # as the user wrote it, for messages; set before FileHandler opens
        super().__init__(path, mode="a", encoding="utf-8")

    def _refuse(self, why: str) -> ConfigError:
        return ConfigError(
            f"logPath {self._setting!r} {why}: refused, nothing was written to it. Remove it if it is not "
            "yours, or set logPath to a file of your own in a directory others cannot write to "
            '(or "" for no log file)'
        )

    def _open(self) -> TextIOWrapper:
        fd = open_private_append(self.baseFilename, self._refuse)
        try:
            return open(fd, "a", encoding=self.encoding, errors=self.errors)
        except BaseException:
            os.close(fd)
            raise


@dataclass
class _Active:
    handler: _PrivateFileHandler
    levels: list[int]  # one entry per configure_logging() call still in effect on this file


_lock = threading.Lock()
_active: dict[str, _Active] = {}
_saved_level: int | None = None  # the package logger's level before the first file was attached


def _apply_level(logger: logging.Logger) -> None:
    global _saved_level
    if not _active:
        if _saved_level is not None:
            logger.setLevel(_saved_level)
            _saved_level = None
        return
    if _saved_level is None:
        _saved_level = logger.level
    lowest = min(level for entry in _active.values() for level in entry.levels)
    # The logger must let the lowest requested level through; never raise it above what the user set.
    logger.setLevel(lowest if _saved_level == logging.NOTSET else min(lowest, _saved_level))
    for entry in _active.values():
        entry.handler.setLevel(min(entry.levels))


def configure_logging(config: Config) -> Callable[[], None]:
    """Attach a file handler for ``config.log_path`` at ``config.log_level`` to the package logger.

    A new file is created with mode 0600 whatever the umask; an existing one is appended to.

    Lines read ``2026-11-25 10:00:00,123 INFO [thread] ossmodelconnector.module: message``. The
    package logger's level is lowered to ``log_level`` if needed, so its records also reach the handlers
    an application put on the root logger, as with any logger level. With no ``log_path`` nothing is
    attached.

    Args:
        config: the settings; ``log_path`` and ``log_level`` are used.

    Returns:
        An idempotent undo callable that detaches the handler (closing it once no other configuration
        uses the same file) and restores the logger's level.

    Raises:
        ConfigError: the log file cannot be opened for appending (the path and the OS reason are named);
            or it is refused: a symbolic link, not a regular file, another user's, or a file with more than
            one link (the path, the reason and the fix are named).
    """
    if not config.log_path:
        return lambda: None
    path = os.path.abspath(config.log_path)
    level = config.logging_level
    logger = logging.getLogger(PACKAGE_LOGGER)
    with _lock:
        entry = _active.get(path)
        if entry is None:
            try:
                handler = _PrivateFileHandler(path, config.log_path)
            except OSError as exc:
                raise ConfigError(
                    f"logPath {config.log_path!r} cannot be opened for appending: {exc.strerror}; create its "
                    'directory, fix the path or permissions, or set logPath to "" for no log file'
                ) from None
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            entry = _active[path] = _Active(handler, [])
            logger.addHandler(handler)
        entry.levels.append(level)
        _apply_level(logger)
    log.debug("logging to %s at %s", path, logging.getLevelName(level))
    done = False

    def undo() -> None:
        nonlocal done
        with _lock:
            if done:
                return
            done = True
            current = _active[path]
            current.levels.remove(level)
            if not current.levels:
                del _active[path]
                logger.removeHandler(current.handler)
                current.handler.close()
            _apply_level(logger)

    return undo
