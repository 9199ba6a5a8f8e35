"""The package's log file from the config (``logPath``, ``logLevel``): its handler, its level, its undo.

The request log (``auditPath``) is tested in ``unit/oss/test_request_log.py``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import stat
from pathlib import Path

import pytest

from ossmodelconnector.config import Config
from ossmodelconnector.errors import ConfigError
from ossmodelconnector.logfiles import PACKAGE_LOGGER, configure_logging


def test_no_log_path_attaches_nothing() -> None:
    logger = logging.getLogger(PACKAGE_LOGGER)
    handlers, level = list(logger.handlers), logger.level
    undo = configure_logging(Config())
    assert logger.handlers == handlers and logger.level == level
    undo()


def test_log_file_receives_records_at_its_level_and_undo_restores(tmp_path: Path) -> None:
    path = tmp_path / "ossmc.log"
    logger = logging.getLogger(PACKAGE_LOGGER)
    handlers, level = list(logger.handlers), logger.level
    undo = configure_logging(Config(log_path=str(path), log_level=0))
    child = logging.getLogger("ossmodelconnector.oss.client")
    child.debug("debug %s", "line")
    child.info("info line")
    logging.getLogger("somebody.else").error("not ours")
    undo()
    undo()  # idempotent
    child.error("after undo")
    assert logger.handlers == handlers and logger.level == level
    text = path.read_text(encoding="utf-8")
    assert "DEBUG" in text and "debug line" in text and "info line" in text
    assert "not ours" not in text and "after undo" not in text
    line = next(line for line in text.splitlines() if "info line" in line)
    # time, level, thread, logger
    assert " INFO [MainThread] ossmodelconnector.oss.client: info line" in line
    dt.datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S")


def test_log_level_filters(tmp_path: Path) -> None:
    path = tmp_path / "ossmc.log"
    undo = configure_logging(Config(log_path=str(path), log_level=2))
    child = logging.getLogger("ossmodelconnector.fetch.prefetch")
    child.info("quiet")
    child.warning("loud")
    undo()
    text = path.read_text(encoding="utf-8")
    assert "loud" in text and "quiet" not in text


def test_two_configurations_share_one_handler_per_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.log"
    logger = logging.getLogger(PACKAGE_LOGGER)
    before = len(logger.handlers)
    undo_info = configure_logging(Config(log_path=str(path), log_level=1))
    undo_debug = configure_logging(Config(log_path=str(path), log_level=0))
    assert len(logger.handlers) == before + 1
    logging.getLogger("ossmodelconnector.x").debug("seen once")
    undo_debug()
    logging.getLogger("ossmodelconnector.x").debug("not seen")
    logging.getLogger("ossmodelconnector.x").info("still seen")
    undo_info()
    assert len(logger.handlers) == before
    text = path.read_text(encoding="utf-8")
    assert text.count("seen once") == 1 and "not seen" not in text and "still seen" in text


def test_unopenable_log_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"logPath '.*nodir/x\.log' cannot be opened"):
        configure_logging(Config(log_path=str(tmp_path / "nodir" / "x.log")))
    assert not any(isinstance(h, logging.FileHandler) for h in logging.getLogger(PACKAGE_LOGGER).handlers)


def _our_file_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger(PACKAGE_LOGGER).handlers if isinstance(h, logging.FileHandler)]


def test_log_file_is_created_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "ossmc.log"
    old = os.umask(0)
    try:
        undo = configure_logging(Config(log_path=str(path), log_level=1))
    finally:
        os.umask(old)
    logging.getLogger("ossmodelconnector.x").warning("private line")
    undo()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "private line" in path.read_text(encoding="utf-8")


def test_log_file_of_ones_own_is_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "ossmc.log"
    path.write_text("an earlier run\n", encoding="utf-8")
    undo = configure_logging(Config(log_path=str(path), log_level=1))
    logging.getLogger("ossmodelconnector.x").warning("this run")
    undo()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "an earlier run" and lines[1].endswith("ossmodelconnector.x: this run")


def test_log_path_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n", encoding="utf-8")
    link = tmp_path / "ossmc.log"
    link.symlink_to(victim)
    before = _our_file_handlers()
    with pytest.raises(ConfigError) as info:
        configure_logging(Config(log_path=str(link)))
    message = str(info.value)
    assert f"logPath {str(link)!r} is a symbolic link: refused, nothing was written to it" in message
    assert "set logPath to a file of your own" in message
    assert victim.read_text(encoding="utf-8") == "precious\n"
    assert _our_file_handlers() == before
