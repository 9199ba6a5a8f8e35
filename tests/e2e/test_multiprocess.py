"""One copy for every process: spawned and forked workers read a directory this process prepared.

The workers run vLLM's loading pattern (``glob`` + the index's filter + ``safe_open``/``get_tensor`` per
key) in fresh interpreters started with ``spawn``, whose only link to the connector is the environment:
``OSSMC_PREPARED_DIRS`` (exported by ``prepare_directory``) and the start-up folder on
``PYTHONPATH`` (the route ``ossmodelconnector run`` takes; an installed package uses its .pth instead).
Checked: every tensor bit-identical to the source, each byte fetched once (the connector's counters),
the data segments hold one copy (their allocated blocks), and no worker holds a private copy (its
anonymous memory does not grow by the tensors it holds).

``OSSMC_E2E_MODEL_MIB`` sets the model size (default 96 MiB; the issue's 1 GiB run: ``=1024``); when it
is set, the case of workers started after the download finished runs too (by default only the streaming
cases run: each spawned worker imports torch, which is most of these tests' time).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from localoss_harness import LocalOss
from multiprocess_workers import header_allowance, vllm_worker, write_sharded_model

from ossmodelconnector import OssModelConnector
from ossmodelconnector.cache.manifest import manifest_path, read_manifest
from ossmodelconnector.cli import child_environment
from ossmodelconnector.oss.credentials import Credentials

MIB = 1 << 20
MODEL_MIB = int(os.environ.get("OSSMC_E2E_MODEL_MIB", "96"))
SHARDS = 4
RESULT_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    source = tmp_path_factory.mktemp("mp-model") / "model"
    digests = write_sharded_model(str(source), MODEL_MIB, SHARDS)
    return source, digests


def _upload(server: LocalOss, bucket: str, source: Path) -> int:
    total = 0
    for path in sorted(source.iterdir()):
        data = path.read_bytes()
        server.put_file(bucket, f"mp/{path.name}", data)
        total += len(data)
    return total


def _connector(server: LocalOss) -> OssModelConnector:
    return OssModelConnector(
        server.endpoint,
        cred_provider=Credentials(server.access_key_id, server.access_key_secret),
        chunk_size_mb=4,
        small_file_mb=1,
    )


def _segment_bytes(model_dir: Path) -> tuple[int, int]:
    """(allocated bytes, sizes) of the data segments behind the directory's large files."""
    manifest = read_manifest(manifest_path(model_dir))
    allocated = sum(os.stat(entry.data_path).st_blocks * 512 for entry in manifest.files.values())
    return allocated, sum(entry.size for entry in manifest.files.values())


@pytest.fixture
def spawn_env() -> Iterator[None]:
    """Children started by this test get the start-up folder on PYTHONPATH (as ``run`` gives them)."""
    os.environ.update(child_environment(dict(os.environ)))
    yield


def _run_workers(model_dir: Path, workers: int) -> tuple[list[dict[str, Any]], tuple[int, int]]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    release = context.Event()
    processes = [
        context.Process(target=vllm_worker, args=(str(model_dir), results, release)) for _ in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        reports = [results.get(timeout=RESULT_TIMEOUT_S) for _ in processes]
        # Every worker holds all its tensors now: this is the peak.
        in_use = _segment_bytes(model_dir)
    finally:
        release.set()
        for process in processes:
            process.join(60)
            if process.is_alive():
                process.kill()
    assert [process.exitcode for process in processes] == [0] * workers
    return reports, in_use


@pytest.mark.usefixtures("spawn_env")
@pytest.mark.parametrize(
    ("workers", "streaming"),
    [(4, True), (3, True)] + ([(4, False)] if "OSSMC_E2E_MODEL_MIB" in os.environ else []),
    ids=["4-workers-while-streaming", "3-children-while-streaming", "4-workers-after-download"][
        : 3 if "OSSMC_E2E_MODEL_MIB" in os.environ else 2
    ],
)
def test_spawned_workers_share_one_copy(
    localoss_factory: Any,
    model: tuple[Path, dict[str, str]],
    tmp_path: Path,
    workers: int,
    streaming: bool,
) -> None:
    source, digests = model
    # Throttled so the workers start long before the last shard is complete (~2 s for the model).
    server = localoss_factory(*(["--bandwidth-mibps", str(max(48, MODEL_MIB // 2))] if streaming else []))
    server.make_bucket("mp-bucket")
    total = _upload(server, "mp-bucket", source)
    model_dir = tmp_path / "model"
    with _connector(server) as connector:
        directory = connector.prepare_directory("oss://mp-bucket/mp/", model_dir, wait=not streaming)
        if streaming:
            assert not directory.progress.finished  # the workers start before the download finishes
        reports, (allocated, size) = _run_workers(model_dir, workers)
        directory.wait()
        fetched = connector.stats()["bytes"]
    growth = max(report["anon_growth"] for report in reports)
    print(f"{workers} workers: segments {allocated / size:.3f}x the model, max anon growth {growth} B")
    for report in reports:
        assert report["hooked"], "the start-up hook did not run in the spawned worker"
        assert report["digests"] == digests  # every tensor bit-identical to the source
        # Tensors map the shared segment: a private copy would add their size to anonymous memory.
        assert report["anon_growth"] < report["bytes"] * 0.1, report["anon_growth"]
    assert size >= MODEL_MIB * MIB * 0.9
    assert allocated <= size * 1.1  # one copy in /dev/shm, not one per worker
    # Each byte fetched once, by this process only (N workers fetching would multiply it).
    assert total <= fetched <= total + header_allowance(source)
    assert not model_dir.joinpath("model-00001-of-00004.safetensors").exists()  # released by close


def test_forked_child_waits_on_the_parent_cache(
    localoss_factory: Any, model: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    source, digests = model
    server = localoss_factory("--bandwidth-mibps", str(max(48, MODEL_MIB // 2)))
    server.make_bucket("mp-bucket")
    total = _upload(server, "mp-bucket", source)
    model_dir = tmp_path / "model"
    with _connector(server) as connector:
        directory = connector.prepare_directory("oss://mp-bucket/mp/", model_dir)
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        release = context.Event()
        child = context.Process(target=vllm_worker, args=(str(model_dir), results, release))
        child.start()
        report = results.get(timeout=RESULT_TIMEOUT_S)
        release.set()
        child.join(60)
        assert child.exitcode == 0
        # The child's exit removed nothing of the parent's: the directory still reads whole.
        directory.wait()
        assert all(os.path.exists(os.path.realpath(model_dir / name)) for name in os.listdir(source))
        fetched = connector.stats()["bytes"]
    assert report["digests"] == digests
    assert total <= fetched <= total + header_allowance(source)  # the child fetched nothing itself


def test_source_of_truth_is_unchanged(model: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    # The workers' digests are compared with these: make sure the local copy reads back the same way.
    source, digests = model
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    from multiprocess_workers import vllm_pattern

    found, _ = vllm_pattern(str(copy))
    assert found == digests
