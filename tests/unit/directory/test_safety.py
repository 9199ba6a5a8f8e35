"""``dirsafety``: a refusal leaves the refused directory exactly as it was; cleaning never follows a symlink.

The refusal cases run on real paths (``/``, the home directory, ``/proc``, ``/sys``, a read-only tmpfs
when the test may mount one); ``check_model_dir`` changes nothing by contract, and each test compares a
full snapshot (names, types, bytes, link targets, modes) of what was refused before and after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ossmodelconnector.cache.manifest import OWN_DIR_NAME
from ossmodelconnector.cache.segments import process_start_time
from ossmodelconnector.directory.safety import (
    MAX_FILE_NAME_BYTES,
    MAX_NAME_BYTES,
    OWNER_FILE_NAME,
    check_model_dir,
    claim_model_dir,
    clean_model_dir,
    make_parents,
    plan_entries,
    read_owner,
    relative_name,
    release_owner,
)
from ossmodelconnector.errors import UnsafePathError
from ossmodelconnector.objects import ObjectInfo

IS_ROOT = os.geteuid() == 0


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root`` (not following symlinks): type, mode, bytes or link target."""
    found: dict[str, object] = {}
    if not os.path.lexists(root):
        return found
    st_root = os.lstat(root)
    found["."] = ("root", oct(st_root.st_mode), os.readlink(root) if os.path.islink(root) else None)
    if os.path.islink(root) or not root.is_dir():
        if root.is_file() and not os.path.islink(root):
            found["."] = ("file", oct(st_root.st_mode), root.read_bytes())
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            if os.path.islink(path):
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir", oct(st.st_mode))
            else:
                found[rel] = ("file", oct(st.st_mode), path.read_bytes())
    return found


def precious_dir(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "keep.txt").write_bytes(b"precious bytes")
    (path / "sub" / "deep.bin").write_bytes(os.urandom(1000))
    return path


def make_ours(path: Path) -> None:
    claim_model_dir(check_model_dir(path), {"uri": "oss://bucket/model/"})


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = precious_dir(tmp_path / "users" / "alice")
    monkeypatch.setenv("HOME", str(home))
    return home


# --- refusals, contents unchanged -------------------------------------------------------------------------


def test_root_is_refused() -> None:
    # Other processes on the machine may add entries meanwhile: what matters is that none is gone.
    before = set(os.listdir("/"))
    for path in ("/", "//", "///", "/tmp/..", "/./", "//tmp/.."):
        with pytest.raises(UnsafePathError, match="root directory"):
            check_model_dir(path)
    assert before <= set(os.listdir("/"))


def test_real_home_and_its_ancestors_are_refused() -> None:
    home = Path(os.path.expanduser("~"))
    before = set(os.listdir(home))
    with pytest.raises(UnsafePathError, match="home directory"):
        check_model_dir(home)
    with pytest.raises(UnsafePathError, match="home directory"):
        check_model_dir("~")
    assert before <= set(os.listdir(home))


def test_fake_home_and_every_ancestor_are_refused(fake_home: Path, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    with pytest.raises(UnsafePathError, match="your home directory"):
        check_model_dir(fake_home)
    with pytest.raises(UnsafePathError, match="home directory"):
        check_model_dir("~/")
    for ancestor in (fake_home.parent, tmp_path, tmp_path.parent):
        with pytest.raises(UnsafePathError, match="lies inside it"):
            check_model_dir(ancestor)
    assert snapshot(tmp_path) == before
    # A sub-directory of home is fine.
    assert check_model_dir("~/models/qwen").path == str(fake_home / "models" / "qwen")


def test_home_reached_through_a_symlink_or_dotdot_is_refused(fake_home: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    os.symlink(fake_home.parent, tmp_path / "elsewhere" / "users-link")
    before = snapshot(fake_home)
    with pytest.raises(UnsafePathError):
        check_model_dir(tmp_path / "elsewhere" / "users-link" / "alice")
    with pytest.raises(UnsafePathError, match="home directory"):
        check_model_dir(f"{fake_home}/sub/..")
    assert snapshot(fake_home) == before


def test_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"not a directory")
    with pytest.raises(UnsafePathError, match="not a directory"):
        check_model_dir(target)
    assert target.read_bytes() == b"not a directory"
    with pytest.raises(UnsafePathError):
        check_model_dir(target / "below")  # a parent is a file
    assert snapshot(tmp_path) == {
        ".": snapshot(tmp_path)["."],
        "model.bin": ("file", oct(os.lstat(target).st_mode), b"not a directory"),
    }


def test_a_symlinked_model_dir_is_refused_even_when_the_target_is_ours(tmp_path: Path) -> None:
    target = tmp_path / "real"
    make_ours(target)
    precious_dir(target)
    link = tmp_path / "model"
    os.symlink(target, link)
    before = snapshot(tmp_path)
    for path in (link, f"{link}/", f"{link}/."):
        with pytest.raises(UnsafePathError, match="symlink"):
            check_model_dir(path)
    assert snapshot(tmp_path) == before


def test_a_non_empty_foreign_directory_is_refused(tmp_path: Path) -> None:
    model = precious_dir(tmp_path / "model")
    before = snapshot(model)
    with pytest.raises(UnsafePathError, match="not empty") as info:
        check_model_dir(model)
    assert "nothing was deleted" in str(info.value)
    assert snapshot(model) == before


def test_a_lone_hidden_file_makes_a_directory_foreign(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / ".bashrc").write_text("keep me")
    with pytest.raises(UnsafePathError, match="not empty"):
        check_model_dir(model)
    assert (model / ".bashrc").read_text() == "keep me"


@pytest.mark.parametrize(
    "record",
    [b"{not json", b"[]", json.dumps({"tool": "something-else"}).encode(), b""],
    ids=["malformed", "list", "other-tool", "empty"],
)
def test_a_forged_or_broken_owner_record_is_not_ours(tmp_path: Path, record: bytes) -> None:
    model = precious_dir(tmp_path / "model")
    (model / OWN_DIR_NAME).mkdir()
    (model / OWN_DIR_NAME / OWNER_FILE_NAME).write_bytes(record)
    before = snapshot(model)
    with pytest.raises(UnsafePathError, match="not empty"):
        check_model_dir(model)
    assert snapshot(model) == before


def test_an_owner_record_reached_through_a_symlink_is_not_ours(tmp_path: Path) -> None:
    ours = tmp_path / "ours"
    make_ours(ours)
    model = precious_dir(tmp_path / "model")
    os.symlink(ours / OWN_DIR_NAME, model / OWN_DIR_NAME)
    before = snapshot(model)
    with pytest.raises(UnsafePathError, match="not empty"):
        check_model_dir(model)
    assert snapshot(model) == before
    # The same with only owner.json being a symlink to a genuine record.
    os.unlink(model / OWN_DIR_NAME)
    (model / OWN_DIR_NAME).mkdir()
    os.symlink(ours / OWN_DIR_NAME / OWNER_FILE_NAME, model / OWN_DIR_NAME / OWNER_FILE_NAME)
    with pytest.raises(UnsafePathError, match="not empty"):
        check_model_dir(model)


def test_a_directory_served_by_another_live_process_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model"
    make_ours(model)
    (model / "config.json").write_text("{}")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = read_owner(str(model))
        assert record is not None
        record.update(pid=sleeper.pid, pid_start=process_start_time(sleeper.pid), active=True)
        (model / OWN_DIR_NAME / OWNER_FILE_NAME).write_text(json.dumps(record))
        before = snapshot(model)
        with pytest.raises(UnsafePathError, match=f"process {sleeper.pid} is serving it"):
            check_model_dir(model)
        assert snapshot(model) == before
    finally:
        sleeper.kill()
        sleeper.wait()
    # Once that process is gone, the record is stale and the directory is ours to clean again.
    assert check_model_dir(model).owner is not None


def test_a_released_record_of_a_live_process_is_not_in_use(tmp_path: Path) -> None:
    model = tmp_path / "model"
    make_ours(model)
    record = read_owner(str(model))
    assert record is not None
    record.update(pid=os.getppid(), pid_start=process_start_time(os.getppid()), active=False)
    (model / OWN_DIR_NAME / OWNER_FILE_NAME).write_text(json.dumps(record))
    assert check_model_dir(model).exists


def test_a_recycled_pid_is_not_a_live_owner(tmp_path: Path) -> None:
    model = tmp_path / "model"
    make_ours(model)
    record = read_owner(str(model))
    assert record is not None
    start = process_start_time(os.getppid())
    assert start is not None
    record.update(pid=os.getppid(), pid_start=start + 1, active=True)  # same pid, another process
    (model / OWN_DIR_NAME / OWNER_FILE_NAME).write_text(json.dumps(record))
    assert check_model_dir(model).owner is not None


@pytest.mark.skipif(IS_ROOT, reason="root may write anywhere: covered by the /proc, /sys and mount cases")
def test_an_unwritable_directory_is_refused_with_the_fix(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    model.chmod(0o500)
    try:
        with pytest.raises(UnsafePathError, match="chmod u\\+w"):
            check_model_dir(model)
        with pytest.raises(UnsafePathError, match="may not create files"):
            check_model_dir(model / "below")
        assert os.listdir(model) == []
    finally:
        model.chmod(0o700)


def test_a_directory_nothing_can_be_created_in_is_refused() -> None:
    # /sys/kernel/debug (empty unless debugfs is mounted) and /proc take no new files, even from root.
    for candidate in ("/sys/kernel/debug", "/sys/kernel/tracing", "/sys/kernel/security"):
        if os.path.isdir(candidate) and not os.listdir(candidate):
            with pytest.raises(UnsafePathError, match=r"cannot be created|may not create"):
                check_model_dir(candidate)
            assert os.listdir(candidate) == []
            break
    else:
        pytest.skip("no empty directory under /sys/kernel on this machine")


def test_a_missing_directory_that_cannot_be_created_is_refused() -> None:
    path = f"/proc/ossmc-test-{os.getpid()}/model"
    with pytest.raises(UnsafePathError, match=r"cannot be created|may not create") as info:
        claim_model_dir(check_model_dir(path), {})
    assert "nothing was deleted" in str(info.value)
    assert not os.path.lexists(path)


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    if not IS_ROOT:
        pytest.skip("mounting a read-only tmpfs needs root (the non-root case is covered by chmod 0500)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount_point)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_read_only_mount_is_refused(read_only_mount: Path) -> None:
    with pytest.raises(UnsafePathError, match="read-only file system"):
        check_model_dir(read_only_mount)
    with pytest.raises(UnsafePathError, match="read-only file system"):
        check_model_dir(read_only_mount / "new" / "model")
    assert os.listdir(read_only_mount) == []


@pytest.mark.parametrize("bad", ["", "a\0b"])
def test_empty_and_nul_paths_are_refused(bad: str) -> None:
    with pytest.raises(UnsafePathError):
        check_model_dir(bad)


# --- accepted cases -------------------------------------------------------------------------------------


def test_a_missing_directory_is_created_with_parents_mode_0700_and_an_owner_record(tmp_path: Path) -> None:
    model = tmp_path / "a" / "b" / "model"
    check = check_model_dir(model)
    assert (check.exists, check.owner) == (False, None)
    assert not model.exists()  # checking changes nothing
    claim_model_dir(check, {"uri": "oss://bucket/model/"})
    assert os.lstat(model).st_mode & 0o777 == 0o700 & ~_umask()
    record = read_owner(str(model))
    assert record is not None
    assert record["uri"] == "oss://bucket/model/"
    assert record["pid"] == os.getpid()
    assert record["active"] is True
    assert check_model_dir(model).owner == record
    release_owner(str(model))
    released = read_owner(str(model))
    assert released is not None and released["active"] is False


def test_an_empty_directory_is_accepted_and_the_write_probe_leaves_nothing(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    check = check_model_dir(model)
    assert (check.exists, check.empty, check.owner) == (True, True, None)
    assert os.listdir(model) == []


def test_a_relative_path_is_taken_from_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert check_model_dir("models/x").path == str(tmp_path / "models" / "x")


# --- cleaning -------------------------------------------------------------------------------------------


def test_cleaning_never_follows_a_symlink(tmp_path: Path) -> None:
    precious = precious_dir(tmp_path / "precious")
    precious_file = tmp_path / "precious.txt"
    precious_file.write_bytes(b"do not delete")
    before = snapshot(precious)
    model = tmp_path / "model"
    make_ours(model)
    (model / "nested" / "deeper").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "nested" / "deeper" / "file.bin").write_bytes(b"x" * 100)
    os.symlink(precious, model / "link-to-dir")
    os.symlink(precious, model / "nested" / "deeper" / "link-to-dir")
    os.symlink(precious_file, model / "nested" / "link-to-file")
    os.symlink(tmp_path / "missing", model / "dangling")
    os.mkfifo(model / "fifo")
    os.symlink(precious, model / OWN_DIR_NAME / "data")  # even inside our own folder

    removed = clean_model_dir(str(model))

    assert removed == 10  # 7 files and links, 2 folders, and the planted link in our folder
    assert snapshot(precious) == before
    assert precious_file.read_bytes() == b"do not delete"
    assert sorted(os.listdir(model)) == [OWN_DIR_NAME]
    assert os.listdir(model / OWN_DIR_NAME) == [OWNER_FILE_NAME]
    assert check_model_dir(model).owner is not None


def test_cleaning_removes_a_planted_symlink_in_place_of_our_folder(tmp_path: Path) -> None:
    precious = precious_dir(tmp_path / "precious")
    before = snapshot(precious)
    model = tmp_path / "model"
    model.mkdir()
    os.symlink(precious, model / OWN_DIR_NAME)
    assert clean_model_dir(str(model)) == 1
    assert os.listdir(model) == []
    assert snapshot(precious) == before


def test_cleaning_a_symlink_instead_of_the_directory_is_refused(tmp_path: Path) -> None:
    precious = precious_dir(tmp_path / "precious")
    before = snapshot(precious)
    os.symlink(precious, tmp_path / "model")
    with pytest.raises(UnsafePathError):
        clean_model_dir(str(tmp_path / "model"))
    assert snapshot(precious) == before


def test_make_parents_mirrors_folders_0700_and_refuses_a_symlinked_one(tmp_path: Path) -> None:
    model = tmp_path / "model"
    make_ours(model)
    path = make_parents(str(model), "text_encoder/sub/model.safetensors")
    assert path == str(model / "text_encoder" / "sub" / "model.safetensors")
    assert os.lstat(model / "text_encoder" / "sub").st_mode & 0o777 == 0o700 & ~_umask()
    precious = precious_dir(tmp_path / "precious")
    os.symlink(precious, model / "vae")
    with pytest.raises(UnsafePathError, match="sub-folder"):
        make_parents(str(model), "vae/model.safetensors")


# --- keys -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../evil", "'..'"),
        ("a/../../evil", "'..'"),
        ("a/..", "'..'"),
        ("./a", "'.'"),
        ("/etc/passwd", "absolute"),
        ("a\\..\\evil", "backslash"),
        ("a\0b", "NUL"),
        ("a//b", "empty path segment"),
        ("a/", "empty path segment"),
        ("", "empty"),
        (f"{OWN_DIR_NAME}/owner.json", "reserved"),
        (OWN_DIR_NAME, "reserved"),
        ("x" * (MAX_NAME_BYTES + 1), "longer than 255"),
        ("d/" + "é" * 128, "longer than 255"),  # 256 bytes in UTF-8
        # Reserved at every depth: a sub-folder's manifest would be trusted as the directory's own.
        (f"sub/{OWN_DIR_NAME}/manifest.json", "reserved"),
        (f"a/b/{OWN_DIR_NAME}", "reserved"),
        # A file name whose temporary name (".name.<12 hex>.part") would pass the 255-byte limit.
        ("x" * (MAX_FILE_NAME_BYTES + 1), "temporary name"),
        ("d/" + "x" * MAX_NAME_BYTES, "temporary name"),
    ],
)
def test_escaping_or_unsafe_names_are_refused_naming_the_key(name: str, why: str) -> None:
    key = "models/m/" + name
    with pytest.raises(UnsafePathError, match=why) as info:
        relative_name(key, "models/m/", "bucket")
    assert info.value.key == key
    assert f"oss://bucket/{key}" in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "config.json",
        "a/b/c.safetensors",
        "..hidden",
        "...",
        "x" * MAX_FILE_NAME_BYTES,
        "x" * MAX_NAME_BYTES + "/file",  # a folder name has no temporary name
        "é" * 118,
        "sub/.ossmodelconnectors",
        "名前 with spaces/模型.bin",
    ],
)
def test_safe_names_are_accepted(name: str) -> None:
    assert relative_name("p/" + name, "p/", "bucket") == name


@given(st.text(st.characters(codec="utf-8", exclude_characters="\ud800"), max_size=40))
def test_any_accepted_name_stays_inside_the_directory(name: str) -> None:
    root = "/srv/model"
    try:
        accepted = relative_name(name, "", "bucket")
    except UnsafePathError:
        return
    joined = os.path.join(root, accepted)
    assert os.path.normpath(joined) == joined  # nothing for the OS to reinterpret
    assert joined.startswith(root + "/")
    assert os.path.commonpath([root, os.path.realpath(joined)]) in (root, os.path.realpath(root))


def _info(key: str, size: int = 10) -> ObjectInfo:
    return ObjectInfo("bucket", key, size, '"etag"', time.time())


def test_plan_skips_markers_sorts_by_name_and_refuses_a_file_that_is_also_a_folder() -> None:
    objects = [
        _info("m/", 0),
        _info("m/vae/", 0),
        _info("m/z.bin"),
        _info("m/vae/model.safetensors"),
        _info("m/a.json"),
        _info("m/B.json"),
    ]
    assert [entry.name for entry in plan_entries(objects, "bucket", "m/")] == [
        "B.json",
        "a.json",
        "vae/model.safetensors",
        "z.bin",
    ]
    assert plan_entries([_info("m/", 0)], "bucket", "m/") == []
    with pytest.raises(UnsafePathError, match="both a file and a folder"):
        plan_entries([_info("m/vae"), _info("m/vae/x.bin")], "bucket", "m/")
    with pytest.raises(UnsafePathError, match="empty path segment"):
        plan_entries([_info("m/dir/", 5)], "bucket", "m/")  # a "marker" with bytes cannot be a file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
