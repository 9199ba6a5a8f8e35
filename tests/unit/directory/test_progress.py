"""The progress bar of a prepared directory: bytes of the large files, and in fleet mode their sources."""

from __future__ import annotations

import pytest

from ossmodelconnector.directory.progress import DirectoryProgress, FileProgress

MIB = 1 << 20


def _progress() -> DirectoryProgress:
    files = [FileProgress("a.safetensors", "/m/a.safetensors", 4 * MIB, True, MIB)]
    return DirectoryProgress("/m", "oss://b/m/", files, show_bar=True)


def _fetch(start: int, end: int, dest: memoryview) -> int:
    return 0


def test_the_bar_counts_the_bytes_of_every_chunk_stored(capsys: pytest.CaptureFixture[str]) -> None:
    progress = _progress()
    track = progress.track("a.safetensors", _fetch)
    for chunk in range(4):
        track(chunk * MIB, (chunk + 1) * MIB, memoryview(bytearray(MIB)))
    assert progress.finished is False  # small files not marked ready yet: the bar is done, the prepare not
    progress.mark_ready()
    assert progress.finished
    err = capsys.readouterr().err
    assert "4.00M/4.00M" in err and "OSS" not in err


def test_in_fleet_mode_the_bar_shows_what_came_from_oss_and_from_the_peers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = _progress()
    sources = [(0, 0)]
    progress.sources = lambda: sources[-1]
    track = progress.track("a.safetensors", _fetch)
    for chunk, source in enumerate([(MIB, 0), (MIB, MIB), (MIB, 2 * MIB), (2 * MIB, 2 * MIB)]):
        sources.append(source)
        track(chunk * MIB, (chunk + 1) * MIB, memoryview(bytearray(MIB)))
    progress.mark_ready()
    assert "OSS 2 MiB, peers 2 MiB" in capsys.readouterr().err
