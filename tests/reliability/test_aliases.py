"""Files of ours are known by what they are, not by how a path to them is spelled.

The aliases are made for real: a symlinked parent (as Kubernetes volume mounts and ``/models -> /mnt/...``
set-ups have), ``/proc/self/cwd/...``, and a bind mount where the machine allows one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from localoss_harness import LocalOss
from reliability_harness import (
    SavedModel,
    assert_same_state,
    load_model,
    make_connector,
    upload_model,
)

from ossmodelconnector import UnsafePathError

BUCKET = "aliases"


def _tree_digest(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a file's sha256, a symlink's target (what cleaning would destroy)."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = "-> " + os.readlink(path)
        elif path.is_file():
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def _bind_mount(source: Path, target: Path) -> Iterator[bool]:
    target.mkdir()
    done = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True).returncode == 0
    try:
        yield done
    finally:
        if done:
            subprocess.run(["umount", str(target)], check=True)


@pytest.mark.parametrize("spelling", ["symlinked parent", "/proc/self/cwd", "bind mount"])
def test_preparing_an_alias_of_a_live_directory_is_refused_before_anything_is_touched(
    localoss: LocalOss, tiny_model: SavedModel, tmp_path: Path, spelling: str
) -> None:
    uri = upload_model(localoss, BUCKET, tiny_model)
    work = tmp_path / "work"
    work.mkdir()
    model_dir = work / "model"
    with contextlib.ExitStack() as stack, make_connector(localoss) as connector:
        connector.prepare_directory(uri, model_dir, wait=True)
        before = _tree_digest(model_dir)
        if spelling == "symlinked parent":
            (tmp_path / "alias").symlink_to(work)
            alias = tmp_path / "alias" / "model"
        elif spelling == "/proc/self/cwd":
            stack.enter_context(_cwd(work))
            alias = Path("/proc/self/cwd/model")
        else:
            if not stack.enter_context(_bind_mount(work, tmp_path / "bound")):
                pytest.skip("mount --bind is not permitted here (needs root in this mount namespace)")
            alias = tmp_path / "bound" / "model"
        # Another connector of the same process.
        with (
            make_connector(localoss) as other,
            pytest.raises(UnsafePathError, match="is the directory") as caught,
        ):
            other.prepare_directory(uri, alias)
        assert "nothing was deleted" in str(caught.value)
        assert _tree_digest(model_dir) == before  # config, symlinks, manifest: all still there
        assert_same_state(load_model(model_dir), tiny_model.state)
