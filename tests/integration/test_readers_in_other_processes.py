"""Readers in other processes: demands through the ring, the registry's fallback, the prepare lock.

Real segments in /dev/shm, real threads and processes; no durations asserted.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ossmodelconnector import startup
from ossmodelconnector._fast import crc64
from ossmodelconnector.cache import attaching, registry
from ossmodelconnector.cache.attached import AttachedCache, AttachedFile
from ossmodelconnector.cache.chunk_state import ChunkState
from ossmodelconnector.cache.demand import DemandServer
from ossmodelconnector.cache.shared_cache import SharedCache
from ossmodelconnector.directory import exported
from ossmodelconnector.directory.attached import lock_path, prepare_lock
from ossmodelconnector.environment import PREPARED_DIRS_ENV
from ossmodelconnector.errors import CacheError, RequestTimeoutError
from ossmodelconnector.fetch.prefetch import PrefetchScheduler
from ossmodelconnector.objects import ObjectInfo

LIVENESS_S = 60.0
CHUNK = 4096


@pytest.fixture
def namespace() -> str:
    return f"http://127.0.0.1:1/test-{uuid.uuid4().hex}"


@pytest.fixture
def cache(tmp_path: Path, namespace: str) -> Iterator[tuple[SharedCache, bytes]]:
    data = random.Random(5).randbytes(16 * CHUNK)
    info = ObjectInfo("bucket", "m/big.bin", len(data), '"etag"', 0.0, crc64(data))
    shared = SharedCache.create(tmp_path / "model", [info], namespace=namespace, chunk_size=CHUNK)
    os.symlink(shared.data_path(0), tmp_path / "model" / "big.bin")
    yield shared, data
    shared.close()


def test_a_remote_wait_moves_its_chunk_to_the_front_of_the_owners_queue(
    cache: tuple[SharedCache, bytes],
) -> None:
    shared, data = cache
    entered, release = threading.Event(), threading.Event()
    order: list[int] = []

    def fetch_into(start: int, end: int, dest: memoryview) -> int:
        order.append(start // CHUNK)
        if start == 0:
            entered.set()
            assert release.wait(LIVENESS_S)
        dest[:] = data[start:end]
        return crc64(dest)

    info = shared.files[0]
    with PrefetchScheduler(connections=1) as scheduler:
        handle = scheduler.register(
            info, fetch_into, chunk_size=CHUNK, backing=shared.backing(0), evictable=False
        )
        server = DemandServer(shared.table, lambda index, chunks: scheduler.boost(handle, chunks))
        try:
            assert entered.wait(LIVENESS_S)  # the only worker is stuck on chunk 0
            with AttachedCache(shared.state_table_name, writable=True) as reader:
                remote_file = reader.file(0, owner_check_s=0.05)
                with pytest.raises(RequestTimeoutError):
                    remote_file.wait(12 * CHUNK, 12 * CHUNK + 1, timeout_s=0.2)  # posts chunk 12
                release.set()
                remote_file.wait(12 * CHUNK, 13 * CHUNK, LIVENESS_S)
                assert order[:2] == [0, 12]  # the other process's wait jumped the queue
                assert server.served >= 1
                remote_file.wait_all(LIVENESS_S)
                assert bytes(reader.data(0)) == data
        finally:
            server.close()
            release.set()


def test_a_read_only_reader_waits_without_posting(cache: tuple[SharedCache, bytes]) -> None:
    shared, _ = cache
    with AttachedCache(shared.state_table_name) as reader:
        with pytest.raises(RequestTimeoutError):
            reader.file(0).wait(0, 1, timeout_s=0.05)
        assert shared.table.demand_head() == 0


def test_enabling_attaches_each_directory_at_once_and_any_spelling_finds_its_files(
    cache: tuple[SharedCache, bytes], tmp_path: Path
) -> None:
    shared, data = cache
    model_dir = tmp_path / "model"
    (model_dir / "config.json").write_text("{}")
    (tmp_path / "alias").symlink_to(model_dir)  # a symlinked parent: another spelling of the same files
    attaching.enable([str(model_dir)])
    try:
        assert attaching.attached_directories() == [str(model_dir)]  # attached now, not at the first read
        assert registry.lookup("/elsewhere/model/big.bin") is None  # the same name, another file
        assert registry.lookup(model_dir / "config.json") is None  # a small file: plain
        found = registry.lookup(model_dir / "big.bin")
        assert isinstance(found, AttachedFile) and found.size == len(data)
        assert registry.lookup(shared.data_path(0)) is found  # what the symlink opens, too
        assert registry.lookup(tmp_path / "alias" / "big.bin") is found  # by identity
        for index in range(found.table.file(0).chunk_count):
            shared.table.states(0)[index] = ChunkState.READY
        shared.table.publish()
        found.wait(0, len(data), LIVENESS_S)
    finally:
        attaching.disable()
    assert registry.lookup(model_dir / "big.bin") is None


def test_environment_export_round_trip() -> None:
    environ: dict[str, str] = {}
    exported.export_directory("/a", environ)
    exported.export_directory("/b", environ)
    exported.export_directory("/a", environ)
    assert exported.exported_directories(environ) == ["/a", "/b"]
    exported.unexport_directory("/a", environ)
    assert environ == {PREPARED_DIRS_ENV: "/b"}
    exported.unexport_directory("/b", environ)
    assert environ == {}
    assert startup.enabled({"ENABLE_CONNECTOR": "1"}) and not startup.enabled({"ENABLE_CONNECTOR": "0"})


def test_the_prepare_lock_excludes_and_is_released_when_its_holder_dies(tmp_path: Path) -> None:
    model_dir = str(tmp_path / "model")
    with (
        prepare_lock(model_dir, LIVENESS_S),
        pytest.raises(
            RequestTimeoutError, match=rf"this process \({os.getpid()}\) itself, in another prepare"
        ),
        prepare_lock(model_dir, 0.1),
    ):
        pass
    assert not os.path.exists(lock_path(model_dir))
    # A holder killed without releasing: the kernel drops its flock, the next one takes the lock.
    script = (
        "import os, sys, time; from ossmodelconnector.directory.attached import prepare_lock\n"
        "with prepare_lock(sys.argv[1], 60):\n    print('locked', flush=True); time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, model_dir], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        holder = f"the live process {child.pid} has been preparing"
        with pytest.raises(RequestTimeoutError, match=holder), prepare_lock(model_dir, 0.1):
            pass
        child.kill()
        child.wait()
        with prepare_lock(model_dir, LIVENESS_S):
            assert os.path.exists(lock_path(model_dir))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert not os.path.exists(lock_path(model_dir))


def test_a_lazy_directory_is_not_attached_from_another_process(tmp_path: Path, namespace: str) -> None:
    data = random.Random(6).randbytes(4 * CHUNK)
    info = ObjectInfo("bucket", "m/lazy.bin", len(data), '"etag"', 0.0, crc64(data))
    with (
        SharedCache.create(tmp_path / "lazy", [info], namespace=namespace, chunk_size=CHUNK, lazy=True),
        pytest.raises(CacheError, match="prepared lazily"),
    ):
        attaching.attach_directory(str(tmp_path / "lazy"))
    attaching.detach_directory(str(tmp_path / "lazy"))
