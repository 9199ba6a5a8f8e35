"""The ``os.stat`` hook: a registered data file reports its object's ``Last-Modified`` as its mtime,
whatever the kernel says in the instant after a write; every other file is untouched."""

from __future__ import annotations

import os
import pathlib
import pickle
import posix
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ossmodelconnector import hooks
from ossmodelconnector.cache import registry
from ossmodelconnector.hooks.file_times import with_mtime

LAST_MODIFIED_NS = 1_620_284_889 * 1_000_000_000  # 2021-05-06T07:08:09Z
LAST_MODIFIED_S = 1_620_284_889


class Waitable:
    size = 4

    def wait(self, start: int, end: int, timeout_s: float | None = None) -> None:
        pass

    def wait_all(self, timeout_s: float | None = None) -> None:
        pass


@pytest.fixture
def hooked() -> Iterator[None]:
    originals = (os.stat, os.lstat, os.fstat)
    hooks.install()
    try:
        yield
    finally:
        hooks.uninstall()
        assert (os.stat, os.lstat, os.fstat) == originals  # the very objects, put back


@pytest.fixture
def entry(tmp_path: Path) -> Iterator[Path]:
    """model/w.safetensors -> data/segment, registered with Last-Modified; the segment was just written."""
    data = tmp_path / "data"
    data.mkdir()
    segment = data / "segment"
    segment.write_bytes(b"abcd")  # the kernel's time: now
    (tmp_path / "model").mkdir()
    link = tmp_path / "model" / "w.safetensors"
    link.symlink_to(segment)
    registry.register_file(str(link), Waitable(), mtime_ns=LAST_MODIFIED_NS)
    yield link
    registry.unregister_file(str(link))


def test_every_way_to_stat_the_file_reports_last_modified(hooked: None, entry: Path) -> None:
    segment = entry.resolve()
    assert posix.stat(segment).st_mtime_ns != LAST_MODIFIED_NS  # what the kernel says
    alias = entry.parent.parent / "alias"
    alias.symlink_to(entry.parent)  # another spelling of the directory
    for path in (entry, str(entry), segment, alias / "w.safetensors", os.fsencode(entry)):
        info = os.stat(path)
        assert (info.st_mtime_ns, info.st_mtime, info[8]) == (
            LAST_MODIFIED_NS,
            LAST_MODIFIED_S,
            LAST_MODIFIED_S,
        )
    assert os.path.getmtime(entry) == LAST_MODIFIED_S  # the web UI's hash cache key
    assert pathlib.Path(entry).stat().st_mtime == LAST_MODIFIED_S
    assert os.lstat(segment).st_mtime_ns == LAST_MODIFIED_NS
    with open(entry, "rb") as file:
        assert os.fstat(file.fileno()).st_mtime_ns == LAST_MODIFIED_NS
    directory_fd = os.open(segment.parent, os.O_RDONLY)
    try:
        assert os.stat(segment.name, dir_fd=directory_fd).st_mtime_ns == LAST_MODIFIED_NS
    finally:
        os.close(directory_fd)
    copy = entry.parent / "copy"
    shutil.copy2(entry, copy)  # copystat goes through os.stat too
    assert posix.stat(copy).st_mtime_ns == LAST_MODIFIED_NS


def test_everything_else_is_what_the_kernel_says(hooked: None, entry: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    assert os.stat(plain) == posix.stat(plain)
    link = os.lstat(entry)  # the symlink itself is another file: its own time
    assert link == posix.lstat(entry)
    assert os.stat(entry, follow_symlinks=False) == posix.lstat(entry)
    with pytest.raises(FileNotFoundError):
        os.stat(tmp_path / "missing")


def test_without_the_hooks_stat_is_the_kernels(entry: Path) -> None:
    assert os.stat is posix.stat
    assert os.stat(entry).st_mtime_ns != LAST_MODIFIED_NS


def test_a_rewritten_result_keeps_every_other_field_and_pickles(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"12345")
    real = posix.stat(path)
    changed = with_mtime(real, LAST_MODIFIED_NS + 500)
    assert isinstance(changed, os.stat_result)
    assert changed.st_mtime_ns == LAST_MODIFIED_NS + 500
    assert changed.st_mtime == (LAST_MODIFIED_NS + 500) / 1e9
    for name in ("st_mode", "st_ino", "st_dev", "st_size", "st_atime_ns", "st_ctime_ns", "st_blocks"):
        assert getattr(changed, name) == getattr(real, name)
    assert tuple(changed)[:8] == tuple(real)[:8] and changed[9] == real[9]
    assert pickle.loads(pickle.dumps(changed)) == changed
