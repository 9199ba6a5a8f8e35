"""``atomic_files``: the one write-then-rename mechanism (downloads, manifests, owner records, symlinks)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ossmodelconnector.atomic_files import (
    atomic_output,
    symlink_atomically,
    temporary_name,
    write_json_atomically,
)


def test_a_new_file_appears_whole_with_mode_0600_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    with atomic_output(target, fsync=True) as out:
        out.write(b"part one, ")
        assert not target.exists()  # nothing under the final name until the block ends
        out.write(b"part two")
    assert target.read_bytes() == b"part one, part two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_a_failure_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "tokenizer.json"
    target.write_bytes(b"old")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), atomic_output(target) as out:
        out.write(b"new, half")
        raise Boom
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]


def test_json_records_are_sorted_and_replace_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    write_json_atomically(target, {"b": 1, "a": [1, 2]})
    write_json_atomically(target, {"z": "last", "a": 0})
    assert json.loads(target.read_text()) == {"a": 0, "z": "last"}
    assert target.read_text().index('"a"') < target.read_text().index('"z"')


def test_a_symlink_replaces_whatever_entry_was_there(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"a plain file before")
    symlink_atomically("/dev/shm/ossmc-d-example", target)
    assert os.readlink(target) == "/dev/shm/ossmc-d-example"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_temporary_names_are_hidden_beside_the_target_and_never_repeat(tmp_path: Path) -> None:
    names = {temporary_name(tmp_path / "w.bin") for _ in range(100)}
    assert len(names) == 100
    for name in names:
        assert os.path.dirname(name) == str(tmp_path)
        assert os.path.basename(name).startswith(".w.bin.") and name.endswith(".part")


LAST_MODIFIED_NS = 1_620_284_889 * 1_000_000_000  # 2021-05-06T07:08:09Z, an object's Last-Modified


def test_a_file_appears_with_the_time_it_was_given_even_when_written_in_pieces(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    seen = []
    with atomic_output(target, mtime_ns=LAST_MODIFIED_NS) as out:
        out.write(b"x" * 100_000)  # more than the buffer: a write reaches the file before the block ends
        seen.append(os.fstat(out.fileno()).st_mtime_ns)
        out.write(b"tail")  # still buffered when the block ends: flushed before the times are set
    assert seen[0] != LAST_MODIFIED_NS
    info = target.stat()
    assert (info.st_mtime_ns, info.st_atime_ns) == (LAST_MODIFIED_NS, LAST_MODIFIED_NS)
    assert target.read_bytes() == b"x" * 100_000 + b"tail"


def test_without_a_time_a_file_keeps_the_time_of_its_writing(tmp_path: Path) -> None:
    target = tmp_path / "plain"
    with atomic_output(target) as out:
        out.write(b"data")
    assert target.stat().st_mtime_ns != LAST_MODIFIED_NS


def test_a_symlink_gets_its_own_time_and_leaves_its_targets_alone(tmp_path: Path) -> None:
    target = tmp_path / "segment"
    target.write_bytes(b"bytes")
    before = target.stat().st_mtime_ns
    link = tmp_path / "entry"
    symlink_atomically(str(target), link, mtime_ns=LAST_MODIFIED_NS)
    assert os.lstat(link).st_mtime_ns == LAST_MODIFIED_NS
    assert target.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry", "segment"]


def test_a_file_system_refusing_times_still_gets_the_file_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "utime", refuse)
    with atomic_output(tmp_path / "config.json", mtime_ns=LAST_MODIFIED_NS) as out:
        out.write(b"{}")
    symlink_atomically("config.json", tmp_path / "link", mtime_ns=LAST_MODIFIED_NS)
    assert (tmp_path / "config.json").read_bytes() == b"{}" and os.readlink(
        tmp_path / "link"
    ) == "config.json"
    assert sum("modification time" in record.getMessage() for record in caplog.records) == 2
