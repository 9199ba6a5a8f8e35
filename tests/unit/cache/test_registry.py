"""The process-wide registry of files still arriving: what ``lookup`` matches, and what it must not."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ossmodelconnector.cache import registry


class Waitable:
    size = 10

    def wait(self, start: int, end: int, timeout_s: float | None = None) -> None:
        pass

    def wait_all(self, timeout_s: float | None = None) -> None:
        pass


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[tuple[Path, Path, Waitable]]:
    """model/w.safetensors -> data/ossmc-d-x (a symlink, as prepare_directory makes), registered."""
    data = tmp_path / "data"
    data.mkdir()
    segment = data / "ossmc-d-x"
    segment.write_bytes(b"0123456789")
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    entry = model / "sub" / "w.safetensors"
    entry.symlink_to(segment)
    waitable = Waitable()
    registry.register_file(str(entry), waitable)
    yield model, segment, waitable
    registry.unregister_file(str(entry))


def test_the_entry_its_segment_and_relative_paths_are_found(
    layout: tuple[Path, Path, Waitable], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, segment, waitable = layout
    entry = model / "sub" / "w.safetensors"
    assert registry.lookup(str(entry)) is waitable
    assert registry.lookup(entry) is waitable
    assert registry.lookup(os.fsencode(entry)) is waitable
    assert registry.lookup(str(segment)) is waitable
    assert registry.lookup(f"{model}/./sub//w.safetensors") is waitable
    assert registry.lookup(f"{model}/other/../sub/w.safetensors") is waitable
    monkeypatch.chdir(model)
    assert registry.lookup("sub/w.safetensors") is waitable
    assert registry.lookup(Path("sub") / "w.safetensors") is waitable


def test_the_directory_reached_through_a_symlink_is_found(layout: tuple[Path, Path, Waitable]) -> None:
    model, _, waitable = layout
    alias = model.parent / "alias"
    alias.symlink_to(model)
    registry.register_file(str(alias / "sub" / "w.safetensors"), waitable)
    try:
        assert registry.lookup(str(model / "sub" / "w.safetensors")) is waitable
        assert str(model / "sub") in registry.registered_directories()
    finally:
        registry.unregister_file(str(alias / "sub" / "w.safetensors"))


@pytest.mark.parametrize(
    "path",
    [
        "/etc/hosts",
        "/usr/lib/python3/os.py",
        "config.json",
        "w.safetensors.lock",
        3,
        b"/etc/passwd",
        "",
        object(),
    ],
)
def test_unrelated_paths_and_fds_are_none(layout: tuple[Path, Path, Waitable], path: object) -> None:
    assert registry.lookup(path) is None  # type: ignore[arg-type]


def test_neighbours_of_a_registered_file_are_none(layout: tuple[Path, Path, Waitable]) -> None:
    model, _, _ = layout
    assert registry.lookup(str(model / "sub" / "config.json")) is None
    assert registry.lookup(str(model / "sub" / "w.safetensors.index.json")) is None
    assert registry.lookup(str(model) + "2/sub/w.safetensors") is None
    assert registry.lookup(str(model / "sub")) is None


def test_unregistering_forgets_every_alias(layout: tuple[Path, Path, Waitable]) -> None:
    model, segment, _ = layout
    entry = model / "sub" / "w.safetensors"
    registry.unregister_file(str(entry))
    assert registry.lookup(str(entry)) is None
    assert registry.lookup(str(segment)) is None
    assert str(model / "sub") not in registry.registered_directories()
    registry.unregister_file(str(entry))  # a second time is a no-op


def test_registered_directories_name_the_model_side_only(layout: tuple[Path, Path, Waitable]) -> None:
    model, segment, _ = layout
    directories = registry.registered_directories()
    assert str(model / "sub") in directories
    assert str(segment.parent) not in directories


LAST_MODIFIED_NS = 1_620_284_889 * 1_000_000_000


def test_a_file_registered_with_a_time_is_listed_by_what_it_is(layout: tuple[Path, Path, Waitable]) -> None:
    model, segment, waitable = layout
    entry = model / "sub" / "w.safetensors"
    info = os.stat(segment)
    assert (info.st_dev, info.st_ino) not in registry.file_times()  # registered without a time
    registry.register_file(str(entry), waitable, mtime_ns=LAST_MODIFIED_NS)
    assert registry.file_times()[(info.st_dev, info.st_ino)] == LAST_MODIFIED_NS
    link = os.lstat(entry)
    assert (link.st_dev, link.st_ino) not in registry.file_times()  # the data, not the symlink


def test_registering_again_without_a_time_keeps_it_and_unregistering_forgets_it(
    layout: tuple[Path, Path, Waitable],
) -> None:
    model, segment, _ = layout
    entry = model / "sub" / "w.safetensors"
    identity = (os.stat(segment).st_dev, os.stat(segment).st_ino)
    registry.register_file(str(entry), Waitable(), mtime_ns=LAST_MODIFIED_NS)
    registry.register_file(str(entry), Waitable())  # a forked child's stand-in for the same file
    assert registry.file_times()[identity] == LAST_MODIFIED_NS
    registry.unregister_file(str(entry))
    assert identity not in registry.file_times()
