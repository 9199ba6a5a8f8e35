"""Files a setting names: read only a bounded regular file; append only to a private file of one's own."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ossmodelconnector.regular_files import (
    MAX_SETTINGS_FILE_BYTES,
    PRIVATE_FILE_MODE,
    open_private_append,
    read_regular_file,
)

MIB = 1024 * 1024


class Refused(Exception):
    pass


def refuse(why: str) -> Refused:
    return Refused(why)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def append(path: Path, data: bytes) -> None:
    fd = open_private_append(str(path), refuse)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# --- read_regular_file -----------------------------------------------------------------------------------


def test_reads_a_regular_file_whole_up_to_the_bound(tmp_path: Path) -> None:
    assert MAX_SETTINGS_FILE_BYTES == MIB
    path = tmp_path / "f.json"
    for data in (b"", b'{"a": 1}', os.urandom(MAX_SETTINGS_FILE_BYTES)):
        path.write_bytes(data)
        assert read_regular_file(str(path), refuse) == data


def test_follows_symlinks_to_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "creds.json").write_bytes(b"{}")
    (tmp_path / "creds.json").symlink_to(tmp_path / "..data" / "creds.json")
    assert read_regular_file(str(tmp_path / "creds.json"), refuse) == b"{}"


def test_a_file_over_the_bound_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b" " * (2 * MIB))
    with pytest.raises(Refused, match=r"^holds more than 1 MiB \(2097152 bytes\)$"):
        read_regular_file(str(path), refuse)
    path.write_bytes(b"12345")
    with pytest.raises(Refused, match=r"^holds more than 4 bytes \(5 bytes\)$"):
        read_regular_file(str(path), refuse, max_bytes=4)


def test_a_file_larger_than_it_says_is_cut_at_the_bound() -> None:
    """/proc files report size 0 and may hold more; the read stops one byte past the bound."""
    assert os.stat("/proc/self/maps").st_size == 0
    with pytest.raises(Refused, match=r"^holds more than 16 bytes$"):
        read_regular_file("/proc/self/maps", refuse, max_bytes=16)


@pytest.mark.timeout(60)  # only a hang guard: the open must not wait for a writer
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(Refused, match=r"^is a FIFO \(named pipe\), not a regular file$"):
        read_regular_file(str(fifo), refuse)


@pytest.mark.parametrize(
    ("path", "kind"), [("/dev/zero", "a character device"), ("/dev/null", "a character device")]
)
def test_devices_are_refused_unread(path: str, kind: str) -> None:
    with pytest.raises(Refused, match=rf"^is {kind}, not a regular file$"):
        read_regular_file(path, refuse)


def test_a_directory_and_a_socket_are_refused(tmp_path: Path) -> None:
    with pytest.raises(Refused, match=r"^is a directory, not a regular file$"):
        read_regular_file(str(tmp_path), refuse)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(Refused, match=r"^is a socket, not a regular file$"):
            read_regular_file(str(tmp_path / "sock"), refuse)


def test_os_errors_stay_os_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_regular_file(str(tmp_path / "missing"), refuse)


# --- open_private_append ---------------------------------------------------------------------------------


def test_a_new_file_is_0600_whatever_the_umask(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "new.log"
    append(path, b"one\n")
    assert stat.S_IMODE(path.stat().st_mode) == PRIVATE_FILE_MODE == 0o600
    assert path.stat().st_uid == os.geteuid()


def test_a_new_file_is_0600_with_a_restrictive_umask_too(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        append(tmp_path / "new.log", b"one\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.log").stat().st_mode) == 0o600


def test_an_existing_own_file_is_appended_to_and_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "old.log"
    path.write_bytes(b"before\n")
    path.chmod(0o640)
    append(path, b"after\n")
    append(path, b"again\n")
    assert path.read_bytes() == b"before\nafter\nagain\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-victim", "dangling"])
def test_a_planted_symlink_is_never_written_through(tmp_path: Path, dangling: bool) -> None:
    victim = tmp_path / "victim"
    if not dangling:
        victim.write_bytes(b"precious\n")
    link = tmp_path / "ossmc.log"
    link.symlink_to(victim)
    with pytest.raises(Refused, match=r"^is a symbolic link$"):
        append(link, b"x")
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_bytes() == b"precious\n"
    assert link.is_symlink()


def test_a_hard_link_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    os.link(victim, tmp_path / "ossmc.log")
    with pytest.raises(Refused, match=r"^has 2 hard links"):
        append(tmp_path / "ossmc.log", b"x")
    assert victim.read_bytes() == b"precious\n"


@pytest.mark.timeout(60)  # only a hang guard
def test_a_fifo_or_a_directory_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(Refused, match=r"^is a FIFO \(named pipe\), not a regular file$"):
        append(tmp_path / "fifo", b"x")
    with pytest.raises(Refused, match=r"^is a directory, not a regular file$"):
        append(tmp_path, b"x")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file another owner needs root")
def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "theirs.log"
    path.write_bytes(b"theirs\n")
    os.chown(path, 65534, 65534)
    with pytest.raises(Refused, match=r"^is owned by user id 65534, not by this process's user \(id 0\)$"):
        append(path, b"x")
    assert path.read_bytes() == b"theirs\n"


def test_a_missing_directory_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        append(tmp_path / "no-dir" / "x.log", b"x")
