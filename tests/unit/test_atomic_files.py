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
