"""Files of ours are known by what they are, not by how a path to them is spelled.

The aliases are made for real: a symlinked parent (as Kubernetes volume mounts and ``/models -> /mnt/...``
set-ups have), ``/proc/self/cwd/...``, and a bind mount where the machine allows one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
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
        alias = _alias_path(stack, tmp_path, work, spelling)
        # Another connector of the same process.
        with (
            make_connector(localoss) as other,
            pytest.raises(UnsafePathError, match="is the directory") as caught,
        ):
            other.prepare_directory(uri, alias)
        assert "nothing was deleted" in str(caught.value)
        assert _tree_digest(model_dir) == before  # config, symlinks, manifest: all still there
        assert_same_state(load_model(model_dir), tiny_model.state)


def _alias_path(stack: contextlib.ExitStack, tmp_path: Path, work: Path, spelling: str) -> Path:
    """The model directory ``work/model`` spelled another way (the context stays until ``stack`` ends)."""
    if spelling == "symlinked parent":
        (tmp_path / "alias").symlink_to(work)
        return tmp_path / "alias" / "model"
    if spelling == "/proc/self/cwd":
        stack.enter_context(_cwd(work))
        return Path("/proc/self/cwd/model")
    if not stack.enter_context(_bind_mount(work, tmp_path / "bound")):
        pytest.skip("mount --bind is not permitted here (needs root in this mount namespace)")
    return tmp_path / "bound" / "model"


def _read_with(reader: str, path: Path) -> bytes | dict[str, bytes]:
    if reader == "open":
        with open(path, "rb") as file:
            return file.read()
    if reader == "safe_open":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as opened:
            return {key: opened.get_tensor(key).numpy().tobytes() for key in opened.keys()}  # noqa: SIM118
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)  # os.open(name, dir_fd=...)
    try:
        fd = os.open(path.name, os.O_RDONLY, dir_fd=directory)
    finally:
        os.close(directory)
    try:
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)


@pytest.mark.parametrize("reader", ["open", "safe_open", "os.open dir_fd"])
@pytest.mark.parametrize("spelling", ["symlinked parent", "/proc/self/cwd", "bind mount"])
def test_reads_through_an_alias_wait_for_the_bytes_and_never_see_zeros(
    localoss_factory: Callable[..., LocalOss],
    tiny_model: SavedModel,
    tmp_path: Path,
    spelling: str,
    reader: str,
) -> None:
    server = localoss_factory("--bandwidth-mibps", "2")  # the last shard arrives seconds after prepare
    uri = upload_model(server, BUCKET, tiny_model)
    work = tmp_path / "work"
    work.mkdir()
    last = sorted(name for name in tiny_model.files if name.endswith(".safetensors"))[-1]
    expected = _read_with(reader, tiny_model.source / last)
    with contextlib.ExitStack() as stack, make_connector(server) as connector:
        connector.prepare_directory(uri, work / "model")
        alias = _alias_path(stack, tmp_path, work, spelling) / last
        assert connector.status(work / "model" / last)["state"] != "cached"  # the read has to wait
        assert _read_with(reader, alias) == expected


_CHILD_READER = """
import hashlib, sys
with open(sys.argv[1], "rb") as file:
    print(hashlib.sha256(file.read()).hexdigest())
"""


@pytest.mark.parametrize("exported", ["through the symlinked parent", "by the resolved path"])
def test_a_child_process_reads_an_exported_directory_by_another_spelling(
    localoss_factory: Callable[..., LocalOss], tiny_model: SavedModel, tmp_path: Path, exported: str
) -> None:
    """A spawned reader (a vLLM worker) spelling the directory otherwise than it was exported still waits
    for the bytes: through a symlinked parent (as volume mounts are) one way or the other."""
    server = localoss_factory("--bandwidth-mibps", "2")
    uri = upload_model(server, BUCKET, tiny_model)
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "alias").symlink_to(work)
    prepared, read = (
        (tmp_path / "alias", work)
        if exported == "through the symlinked parent"
        else (work, tmp_path / "alias")
    )
    last = sorted(name for name in tiny_model.files if name.endswith(".safetensors"))[-1]
    with make_connector(server) as connector:
        connector.prepare_directory(uri, prepared / "model")  # exported to child processes by this spelling
        assert connector.status(read / "model" / last)["state"] != "cached"  # the child has to wait
        child = subprocess.run(
            [sys.executable, "-c", _CHILD_READER, str(read / "model" / last)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    assert child.stdout.strip() == hashlib.sha256(tiny_model.files[last]).hexdigest(), child.stderr
