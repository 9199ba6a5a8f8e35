"""Two directories prepared from the same objects by two processes: one download, one copy in memory.

- Two processes prepare the same prefix into two directories at once: both load every tensor
  bit-identical, and the objects' bytes are fetched once between them (small files: once per directory).
- The first process stops mid-download (SIGKILL, or its connector closed): the second directory's load
  still completes with the right bytes (it fetches the rest itself), and nothing is left in /dev/shm
  (after a SIGKILL, once the dead process's directory is prepared again, as for any dead owner).
- The second closes first: the first directory is untouched and completes; then nothing is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from localoss_harness import LocalOss
from multiprocess_workers import header_allowance, vllm_pattern, write_sharded_model

from ossmodelconnector import OssModelConnector
from ossmodelconnector.cache.attached import AttachedCache
from ossmodelconnector.cache.chunk_state import ChunkState
from ossmodelconnector.cache.manifest import manifest_path, read_manifest
from ossmodelconnector.cache.segments import ours_in_dev_shm
from ossmodelconnector.oss.credentials import Credentials

TESTS = str(Path(__file__).parent.parent)
PROCESS_TIMEOUT_S = 300
URI = "oss://shared-seg/m/"

# Prepares argv[4] into argv[5]; "loaded" after the vLLM pattern, when asked; closes and exits on "close".
PREPARER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    from multiprocess_workers import vllm_pattern
    from ossmodelconnector import OssModelConnector
    from ossmodelconnector.oss.credentials import Credentials
    connector = OssModelConnector(sys.argv[1], cred_provider=Credentials(sys.argv[2], sys.argv[3]),
                                  chunk_size_mb=1, small_file_mb=1, prefetch_vcpus=1, prefetch_workers=4)
    connector.prepare_directory(sys.argv[4], sys.argv[5])
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "load":
            digests, _ = vllm_pattern(sys.argv[5])
            print(json.dumps({{"bytes": connector.stats()["bytes"], "digests": digests}}), flush=True)
        elif line.strip() == "close":
            connector.close()
            print("closed", flush=True)
    """
).format(tests=TESTS)


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    source = tmp_path / "source"
    return source, write_sharded_model(str(source), 16, 4)


def _upload(server: LocalOss, source: Path) -> tuple[int, int]:
    """Uploads under ``URI``; returns (bytes of safetensors files, bytes of the other files)."""
    server.make_bucket("shared-seg")
    large = small = 0
    for path in sorted(source.iterdir()):
        data = path.read_bytes()
        server.put_file("shared-seg", "m/" + path.name, data)
        if path.suffix == ".safetensors":
            large += len(data)
        else:
            small += len(data)
    return large, small


def _start(server: LocalOss, model_dir: Path) -> subprocess.Popen[str]:
    args = [server.endpoint, server.access_key_id, server.access_key_secret, URI, str(model_dir)]
    process = subprocess.Popen(
        [sys.executable, "-c", PREPARER, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def _ask(process: subprocess.Popen[str], command: str) -> str:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(command + "\n")
    process.stdin.flush()
    return process.stdout.readline().strip()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=PROCESS_TIMEOUT_S)


def _segments(model_dir: Path) -> list[str]:
    manifest = read_manifest(manifest_path(model_dir))
    return sorted(Path(entry.data_path).name for entry in manifest.files.values())


def _ready_bytes(model_dir: Path) -> int:
    """Bytes of the directory's large files that are READY in its state table now."""
    total = 0
    with AttachedCache.from_manifest(manifest_path(model_dir)) as attached:
        table = attached.table
        for index in range(table.file_count):
            size = table.file(index).size
            for chunk, state in enumerate(bytes(table.states(index))):
                if state == ChunkState.READY:
                    total += min(size, (chunk + 1) * table.chunk_size) - chunk * table.chunk_size
    return total


def _connector(server: LocalOss) -> OssModelConnector:
    credentials = Credentials(server.access_key_id, server.access_key_secret)
    return OssModelConnector(server.endpoint, cred_provider=credentials, chunk_size_mb=1, small_file_mb=1)


def test_two_directories_of_the_same_prefix_fetch_each_byte_once(
    localoss_factory: Any, model: tuple[Path, dict[str, str]], tmp_path: Path, processes: list[Any]
) -> None:
    source, digests = model
    server = localoss_factory("--bandwidth-mibps", "32")
    large, small = _upload(server, source)
    # Both start together: whichever creates a segment first fetches it, the other waits on its states.
    args = [server.endpoint, server.access_key_id, server.access_key_secret, URI]
    for name in ("a", "b"):
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", PREPARER, *args, str(tmp_path / name)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for process in processes:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    reports = [json.loads(_ask(process, "load")) for process in processes]
    assert all(report["digests"] == digests for report in reports)
    assert _segments(tmp_path / "a") == _segments(tmp_path / "b")  # one copy in memory
    fetched = sum(report["bytes"] for report in reports)
    # Small files once per directory; each safetensors header at most twice when both read it at once.
    assert large + 2 * small <= fetched <= large + 2 * small + 2 * header_allowance(source)
    assert fetched < 2 * large  # not two downloads
    segments = _segments(tmp_path / "a")
    for process in processes:
        assert _ask(process, "close") == "closed"
    assert not set(segments) & set(ours_in_dev_shm())


@pytest.mark.parametrize("stop", ["sigkill", "close"])
def test_the_second_directory_completes_when_the_first_stops_mid_download(
    localoss_factory: Any,
    model: tuple[Path, dict[str, str]],
    tmp_path: Path,
    processes: list[Any],
    stop: str,
) -> None:
    source, digests = model
    server = localoss_factory("--bandwidth-mibps", "2")  # ~8 s for the model: the stop comes first
    large, _ = _upload(server, source)
    first = _start(server, tmp_path / "a")
    processes.append(first)
    segments = _segments(tmp_path / "a")
    with _connector(server) as connector:
        connector.prepare_directory(URI, tmp_path / "b")
        assert _segments(tmp_path / "b") == segments  # shared, not fetched a second time
        stored_there = _ready_bytes(tmp_path / "a")  # only grows until the stop: never fetched again
        assert stored_there < large  # 4 connections at 2 MiB/s: the first is far from done
        if stop == "sigkill":
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=PROCESS_TIMEOUT_S)
        else:
            assert _ask(first, "close") == "closed"
        found, _ = vllm_pattern(str(tmp_path / "b"))
        assert found == digests
        fetched_here = connector.stats()["bytes"]
        assert 0 < fetched_here <= large - stored_there + header_allowance(source)
        if stop == "sigkill":  # the dead process's table stays until its directory is prepared again
            connector.prepare_directory(URI, tmp_path / "a", wait=True)
            assert vllm_pattern(str(tmp_path / "a"))[0] == digests
    assert not set(segments) & set(ours_in_dev_shm())


def test_the_second_directory_closing_first_leaves_the_first_intact(
    localoss_factory: Any, model: tuple[Path, dict[str, str]], tmp_path: Path, processes: list[Any]
) -> None:
    source, digests = model
    server = localoss_factory("--bandwidth-mibps", "8")
    _upload(server, source)
    first = _start(server, tmp_path / "a")
    processes.append(first)
    segments = _segments(tmp_path / "a")
    with _connector(server) as connector:
        connector.prepare_directory(URI, tmp_path / "b")
    assert set(segments) <= set(ours_in_dev_shm())  # the first still holds them
    report = json.loads(_ask(first, "load"))
    assert report["digests"] == digests
    assert _ask(first, "close") == "closed"
    assert not set(segments) & set(ours_in_dev_shm())


def _inodes(paths: list[str]) -> list[int]:
    return [os.stat(path).st_ino for path in paths]


def test_a_cache_dir_spelled_through_a_symlink_shares_the_live_segments_and_never_replaces_them(
    localoss_factory: Any, model: tuple[Path, dict[str, str]], tmp_path: Path, processes: list[Any]
) -> None:
    source, digests = model
    server = localoss_factory()
    _upload(server, source)
    first = _start(server, tmp_path / "a")  # cacheDir /dev/shm
    processes.append(first)
    assert json.loads(_ask(first, "load"))["digests"] == digests
    data_paths = [entry.data_path for entry in read_manifest(manifest_path(tmp_path / "a")).files.values()]
    before = _inodes(data_paths)
    link = tmp_path / "shm-link"
    link.symlink_to("/dev/shm")  # as /run/shm is on many systems
    credentials = Credentials(server.access_key_id, server.access_key_secret)
    with OssModelConnector(
        server.endpoint, cred_provider=credentials, chunk_size_mb=1, small_file_mb=1, cache_dir=str(link)
    ) as connector:
        connector.prepare_directory(URI, tmp_path / "b")
        assert _segments(tmp_path / "b") == _segments(tmp_path / "a")  # the same files, shared
        assert _inodes(data_paths) == before  # never unlinked nor created anew
        assert vllm_pattern(str(tmp_path / "b"))[0] == digests
        assert connector.stats()["bytes"] <= header_allowance(source) + _small_bytes(source)  # nothing again
        # The first process still reads its bytes, not the zeros of a segment made anew under its name.
        assert json.loads(_ask(first, "load"))["digests"] == digests
    assert _inodes(data_paths) == before  # the first still holds them
    assert _ask(first, "close") == "closed"
    assert not {Path(path).name for path in data_paths} & set(ours_in_dev_shm())


def _small_bytes(source: Path) -> int:
    return sum(path.stat().st_size for path in source.iterdir() if path.suffix != ".safetensors")


def _prepare_at_once(connectors: list[OssModelConnector], dirs: list[Path]) -> list[BaseException]:
    barrier = threading.Barrier(len(connectors))
    errors: list[BaseException] = []

    def prepare(connector: OssModelConnector, model_dir: Path) -> None:
        try:
            barrier.wait(30)
            connector.prepare_directory(URI, model_dir, wait=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=prepare, args=pair) for pair in zip(connectors, dirs, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PROCESS_TIMEOUT_S)
    return errors


def test_two_preparers_racing_for_the_same_segments_both_finish(
    localoss_factory: Any, tmp_path: Path
) -> None:
    # Started at the same instant, each may create some segments first and meet the other's for the
    # rest: neither may wait on the other's manifest, nor on bytes nobody fetches.
    source = tmp_path / "source"
    digests = write_sharded_model(str(source), 8, 8)
    server = localoss_factory()
    large, small = _upload(server, source)
    for attempt in range(3):
        connectors = [_connector(server) for _ in range(2)]
        dirs = [tmp_path / f"{attempt}-{side}" for side in ("a", "b")]
        try:
            errors = _prepare_at_once(connectors, dirs)
            assert not errors, errors
            assert all(vllm_pattern(str(model_dir))[0] == digests for model_dir in dirs)
            assert _segments(dirs[0]) == _segments(dirs[1])
            fetched = sum(connector.stats()["bytes"] for connector in connectors)
            assert large + 2 * small <= fetched <= large + 2 * small + 2 * header_allowance(source)
        finally:
            for connector in connectors:
                connector.close()
