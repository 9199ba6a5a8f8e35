"""The shared-memory cache with real files in /dev/shm and real processes.

Covers the owner (``SharedCache`` + the scheduler writing through ``SharedBacking``), readers in other
processes (``AttachedCache`` waiting on the futex), stale-owner recovery, squatters, the disk fallback and
cleanup on every way out. Every test uses its own namespace, so the segment names it checks are its own
even when other suites run at the same time; tests assert bytes and states, never durations.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multiprocess_workers import mapping_rss
from reliability_harness import as_other_file_user, as_other_user, can_mount, give_away, tmpfs

from ossmodelconnector._fast import crc64
from ossmodelconnector.cache.attached import AttachedCache
from ossmodelconnector.cache.chunk_state import ChunkState
from ossmodelconnector.cache.demand import DemandServer
from ossmodelconnector.cache.manifest import find_manifest, read_manifest
from ossmodelconnector.cache.segments import data_segment_name, lock_name, ours_in_dev_shm, state_table_name
from ossmodelconnector.cache.shared_backing import SharedBacking
from ossmodelconnector.cache.shared_cache import SharedCache
from ossmodelconnector.cache.state_table import FileStatus, TableStatus
from ossmodelconnector.directory.attached import prepare_lock
from ossmodelconnector.errors import (
    CacheError,
    ClosedError,
    IntegrityError,
    OutOfMemoryError,
    OwnerDiedError,
    RequestTimeoutError,
    RetriesExhaustedError,
)
from ossmodelconnector.fetch.chunk_buffer import ChunkBuffer
from ossmodelconnector.fetch.prefetch import PrefetchScheduler
from ossmodelconnector.objects import ObjectInfo

LIVENESS_S = 60.0
CHUNK = 4096


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def make_objects(sizes: list[int], *, prefix: str = "models/qwen/") -> dict[str, bytes]:
    return {f"{prefix}shard-{i:02d}.bin": payload(size, i) for i, size in enumerate(sizes)}


def infos_of(objects: dict[str, bytes], *, crc: bool = True) -> list[ObjectInfo]:
    return [
        ObjectInfo("bucket", key, len(data), f'"{key}-etag"', 0.0, crc64(data) if crc else None)
        for key, data in objects.items()
    ]


def fetcher(data: bytes, calls: list[tuple[str, int]] | None = None, key: str = "") -> Callable[..., int]:
    def fetch_into(start: int, end: int, dest: memoryview) -> int:
        if calls is not None:
            calls.append((key, start))
        dest[:] = data[start:end]
        return crc64(dest)

    return fetch_into


@pytest.fixture
def namespace() -> str:
    return f"http://127.0.0.1:1/test-{uuid.uuid4().hex}"


@pytest.fixture
def caches() -> Iterator[list[SharedCache]]:
    """Caches made by a test, closed afterwards even when it fails."""
    made: list[SharedCache] = []
    yield made
    for cache in made:
        cache.close()


def names_of(model_dir: Path, namespace: str, infos: list[ObjectInfo]) -> set[str]:
    return {state_table_name(model_dir)} | {data_segment_name(namespace, info) for info in infos}


def assert_gone(names: set[str]) -> None:
    assert names.isdisjoint(ours_in_dev_shm()), f"left in /dev/shm: {sorted(names & set(ours_in_dev_shm()))}"


def run_child(script: str, *args: str, timeout: float = LIVENESS_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


# --- owner side ----------------------------------------------------------------------------------------


def test_create_lays_out_segments_table_and_manifest_and_close_removes_them(
    tmp_path: Path, namespace: str
) -> None:
    objects = make_objects([3 * CHUNK + 5, 0, CHUNK])
    infos = infos_of(objects)
    model_dir = tmp_path / "model"
    cache = SharedCache.create(model_dir, infos, namespace=namespace, chunk_size=CHUNK)
    names = names_of(model_dir, namespace, infos)
    assert cache.placement == "shm"
    assert names <= set(ours_in_dev_shm())
    for index, info in enumerate(infos):
        path = cache.data_path(index)
        assert path == f"/dev/shm/{data_segment_name(namespace, info)}"
        info_stat = os.lstat(path)
        assert stat.S_ISREG(info_stat.st_mode) and stat.S_IMODE(info_stat.st_mode) == 0o600
        assert info_stat.st_size == info.size and info_stat.st_blocks == 0  # full size, sparse
        assert cache.entry_path(index) == str(model_dir / f"shard-{index:02d}.bin")
    table_stat = os.lstat(f"/dev/shm/{cache.state_table_name}")
    assert stat.S_IMODE(table_stat.st_mode) == 0o600
    table = cache.table
    assert (table.owner_pid, table.chunk_size, table.file_count) == (os.getpid(), CHUNK, 3)
    assert table.status() == TableStatus.FILLING and table.directory == os.path.realpath(model_dir)
    # Empty files have nothing to fetch: verified from the start.
    assert [entry.status for entry in table.files()] == [FileStatus.FILLING] * 3
    manifest = json.loads(cache.manifest_path.read_text())
    assert stat.S_IMODE(os.stat(cache.manifest_path).st_mode) == 0o600
    assert manifest["state_table"] == cache.state_table_name and manifest["chunk_size"] == CHUNK
    assert manifest["files"]["shard-00.bin"] == {
        "data_path": cache.data_path(0),
        "size": infos[0].size,
        "etag": infos[0].etag,
        "index": 0,
        "bucket": "bucket",
        "key": "models/qwen/shard-00.bin",
        "last_modified": 0.0,
    }
    assert find_manifest(model_dir / "shard-01.bin") == (cache.manifest_path, "shard-01.bin")
    cache.close()
    cache.close()
    assert cache.closed and not cache.manifest_path.exists()
    assert_gone(names)
    with pytest.raises(ClosedError):
        cache.backing(0)


def test_the_scheduler_fills_the_segments_headers_first_and_never_evicts(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    objects = make_objects([3 * CHUNK, 2 * CHUNK + 1, CHUNK // 2])
    infos = infos_of(objects)
    cache = SharedCache.create(tmp_path / "m", infos, namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    calls: list[tuple[str, int]] = []
    # One worker and a budget of one chunk: an evictable object would be fetched and released in turn.
    with PrefetchScheduler(connections=1, budget_bytes=CHUNK) as scheduler:
        with scheduler.lock:  # all headers queued before the worker takes a job
            handles = [
                scheduler.register(
                    info,
                    fetcher(objects[info.key], calls, info.key),
                    chunk_size=CHUNK,
                    backing=cache.backing(index),
                    evictable=False,
                    first_chunk_first=True,
                )
                for index, info in enumerate(infos)
            ]
        # Waiting through the table (as another process would) boosts nothing, so the order stays the
        # scheduler's own: a handle's wait would move its chunks ahead of the other headers.
        with AttachedCache(cache.state_table_name) as attached:
            for index in range(len(infos)):
                attached.file(index).wait_all(LIVENESS_S)
        assert scheduler.held_bytes == 0  # outside the budget
        keys = [info.key for info in infos]
        assert calls[:3] == [(key, 0) for key in keys]  # every header first, in registration order
        assert calls[3:] == [(keys[0], CHUNK), (keys[0], 2 * CHUNK), (keys[1], CHUNK), (keys[1], 2 * CHUNK)]
        for index, info in enumerate(infos):
            assert Path(cache.data_path(index)).read_bytes() == objects[info.key]
            assert handles[index].buffer.states() == [ChunkState.READY] * handles[index].buffer.count
        assert [entry.status for entry in cache.table.files()] == [FileStatus.VERIFIED] * 3
        assert cache.table.status() == TableStatus.COMPLETE
        assert bytes(cache.table.all_states()) == bytes([ChunkState.READY]) * cache.table.total_chunks


def test_wait_demands_the_chunks_it_needs_and_times_out_when_they_do_not_come(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    data = payload(8 * CHUNK, 7)
    (info,) = infos_of({"k/big.bin": data})
    cache = SharedCache.create(tmp_path / "m", [info], namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    entered = threading.Event()
    release = threading.Event()
    order: list[int] = []

    def fetch_into(start: int, end: int, dest: memoryview) -> int:
        order.append(start // CHUNK)
        if start == 0:
            entered.set()
            assert release.wait(LIVENESS_S)
        dest[:] = data[start:end]
        return crc64(dest)

    with PrefetchScheduler(connections=1) as scheduler:
        handle = scheduler.register(
            info, fetch_into, chunk_size=CHUNK, backing=cache.backing(0), evictable=False
        )
        assert entered.wait(LIVENESS_S)
        # The only worker is stuck on chunk 0: both waits time out, and leave their chunks demanded.
        with pytest.raises(RequestTimeoutError):
            handle.wait(6 * CHUNK, 6 * CHUNK + 1, timeout_s=0.05)
        with pytest.raises(RequestTimeoutError):
            handle.wait(7 * CHUNK, 7 * CHUNK + 1, timeout_s=0.05)
        release.set()
        handle.wait(6 * CHUNK + 10, 7 * CHUNK + 10, LIVENESS_S)
        assert order[:3] == [0, 6, 7]  # the waited-for chunks jumped the queue
        assert cache.table.states(0)[6] == ChunkState.READY and cache.table.states(0)[7] == ChunkState.READY
        handle.wait_all(LIVENESS_S)
        assert Path(cache.data_path(0)).read_bytes() == data


def test_a_wrong_object_crc_fails_wait_all_here_and_in_the_table(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    data = payload(3 * CHUNK, 3)
    info = ObjectInfo("bucket", "k/bad.bin", len(data), '"e"', 0.0, crc64(data) ^ 1)
    cache = SharedCache.create(tmp_path / "m", [info], namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    with PrefetchScheduler(connections=2) as scheduler:
        handle = scheduler.register(
            info, fetcher(data), chunk_size=CHUNK, backing=cache.backing(0), evictable=False
        )
        with pytest.raises(IntegrityError):
            handle.wait_all(LIVENESS_S)
        assert cache.table.file(0).status == FileStatus.FAILED
        assert cache.table.status() == TableStatus.FAILED
        kind, message = cache.table.read_error(0) or ("", "")
        assert kind == "IntegrityError" and "oss://bucket/k/bad.bin" in message
        with AttachedCache(cache.state_table_name) as attached, pytest.raises(IntegrityError):
            attached.file(0).wait_all(LIVENESS_S)


def test_a_backing_of_another_layout_is_refused(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    (info,) = infos_of({"k/a.bin": payload(100, 1)})
    cache = SharedCache.create(tmp_path / "m", [info], namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    with pytest.raises(ValueError, match="laid out for 100 bytes"):
        ChunkBuffer(info, CHUNK * 2, backing=cache.backing(0))


# --- readers in other processes ------------------------------------------------------------------------

READER = """
import sys
from pathlib import Path
from ossmodelconnector.cache.attached import AttachedCache
from ossmodelconnector.cache.manifest import find_manifest
entry, chunk = sys.argv[1], int(sys.argv[2])
manifest, relative = find_manifest(entry)
with AttachedCache.from_manifest(manifest) as cache:
    import json
    index = json.loads(manifest.read_text())["files"][relative]["index"]
    remote = cache.file(index)
    count = -(-remote.size // chunk)
    for k in range(count):
        print("waiting", k, flush=True)
        try:
            remote.wait(k * chunk, (k + 1) * chunk, 60)
        except Exception as exc:
            print("error", type(exc).__name__, str(exc).replace("\\n", " "), flush=True)
            sys.exit(3)
        data = cache.data(index)[k * chunk : (k + 1) * chunk]
        print("chunk", k, data.hex(), flush=True)
    remote.wait_all(60)
    print("verified", flush=True)
"""


class Reader:
    """A reader process attached through the manifest, driven line by line."""

    def __init__(self, entry: Path, chunk: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", READER, str(entry), str(chunk)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def line(self) -> list[str]:
        assert self.process.stdout is not None
        text = self.process.stdout.readline()
        assert text, f"reader ended early: {self.process.stderr.read() if self.process.stderr else ''}"
        return text.rstrip("\n").split(" ", 2)

    def finish(self) -> int:
        try:
            self.process.communicate(timeout=LIVENESS_S)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.communicate()
        return self.process.returncode


def test_a_reader_process_waits_on_the_futex_for_each_chunk_the_owner_marks_ready(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    data = payload(4 * CHUNK + 100, 11)
    (info,) = infos_of({"models/x/w.safetensors": data})
    model_dir = tmp_path / "model"
    cache = SharedCache.create(model_dir, [info], namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    buffer = ChunkBuffer(info, CHUNK, backing=cache.backing(0))
    reader = Reader(model_dir / "w.safetensors", CHUNK)
    for index in range(buffer.count):
        assert reader.line() == ["waiting", str(index)]  # it is about to wait (or waiting) for chunk k
        chunk = buffer.chunk(index)
        buffer.begin_fetch(index)
        view = buffer.chunk_view(index)
        view[:] = data[chunk.start : chunk.end]  # written through the shared mapping
        crc = crc64(view)
        view.release()
        assert buffer.complete(index, crc)
        kind, number, hex_bytes = reader.line()
        assert (kind, int(number)) == ("chunk", index)
        assert bytes.fromhex(hex_bytes) == data[chunk.start : chunk.end]
    assert reader.line() == ["verified"]
    assert reader.finish() == 0
    buffer.close()


def test_a_failed_chunk_reaches_the_reader_process_with_its_error(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    data = payload(2 * CHUNK, 12)
    (info,) = infos_of({"m/w.bin": data})
    cache = SharedCache.create(tmp_path / "model", [info], namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    buffer = ChunkBuffer(info, CHUNK, backing=cache.backing(0))
    reader = Reader(tmp_path / "model" / "w.bin", CHUNK)
    assert reader.line()[0] == "waiting"
    buffer.begin_fetch(0)
    buffer.fail(0, RetriesExhaustedError("oss://bucket/m/w.bin: bytes [0, 4096) failed 5 times: SlowDown"))
    kind, name, message = reader.line()
    assert (kind, name) == ("error", "RetriesExhaustedError")
    assert "failed 5 times: SlowDown" in message and f"process {os.getpid()}" in message
    assert reader.finish() == 3
    buffer.close()


def test_readers_are_woken_with_a_closed_error_when_the_owner_closes(tmp_path: Path, namespace: str) -> None:
    (info,) = infos_of({"m/w.bin": payload(CHUNK, 1)})
    cache = SharedCache.create(tmp_path / "model", [info], namespace=namespace, chunk_size=CHUNK)
    attached = AttachedCache(cache.state_table_name)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            attached.file(0).wait(0, CHUNK, LIVENESS_S)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    cache.close()
    thread.join(LIVENESS_S)
    assert len(errors) == 1 and isinstance(errors[0], ClosedError)
    attached.close()
    assert_gone(names_of(tmp_path / "model", namespace, [info]))


WAIT_ONE = """
import sys
from ossmodelconnector.cache.attached import AttachedCache
with AttachedCache.from_manifest(sys.argv[1]) as cache:
    print("attached", flush=True)
    try:
        cache.file(0, owner_check_s=0.2).wait(0, 10, float(sys.argv[2]))
        print("ready", flush=True)
    except Exception as exc:
        print(type(exc).__name__, str(exc).replace("\\n", " "), flush=True)
"""


def wait_in_another_process(manifest: Path, timeout_s: float) -> subprocess.Popen[str]:
    """A process that attaches ``manifest``'s directory and waits for its first bytes (prints the outcome)."""
    reader = subprocess.Popen(
        [sys.executable, "-c", WAIT_ONE, str(manifest), str(timeout_s)], stdout=subprocess.PIPE, text=True
    )
    assert reader.stdout is not None and reader.stdout.readline().strip() == "attached"
    return reader


def test_a_reader_in_another_process_is_told_that_the_owner_closed_and_what_to_do(
    tmp_path: Path, namespace: str
) -> None:
    (info,) = infos_of({"m/w.bin": payload(CHUNK, 1)})
    cache = SharedCache.create(tmp_path / "model", [info], namespace=namespace, chunk_size=CHUNK)
    reader = wait_in_another_process(cache.manifest_path, LIVENESS_S)  # its wait timeout: a minute
    cache.close()  # nothing will come: the reader must be told now, not when its wait times out
    output, _ = reader.communicate(timeout=LIVENESS_S)
    kind, message = output.strip().split(" ", 1)
    assert kind == "ClosedError"
    assert f"its owner, process {os.getpid()}, closed the prepared directory before bytes [0, 10)" in message
    assert "prepare the directory again" in message


def test_a_stopped_owner_is_named_when_a_reader_gives_up(tmp_path: Path, namespace: str) -> None:
    owner, manifest = start_owner(tmp_path / "model", namespace)
    try:
        os.kill(owner.pid, signal.SIGSTOP)
        reader = wait_in_another_process(manifest, 1.0)
        output, _ = reader.communicate(timeout=LIVENESS_S)
        kind, message = output.strip().split(" ", 1)
        assert kind == "RequestTimeoutError"
        assert (
            f"its owner, process {owner.pid}, is stopped by a signal: resume it (kill -CONT {owner.pid})"
            in message
        )
    finally:
        os.kill(owner.pid, signal.SIGCONT)
        owner.communicate("", timeout=LIVENESS_S)


def test_readers_of_a_closed_directory_in_its_own_process_are_told_so(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    (info,) = infos_of({"m/w.bin": payload(2 * CHUNK, 1)})
    cache = SharedCache.create(tmp_path / "model", [info], namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    opened = threading.Event()

    def never(start: int, end: int, dest: memoryview) -> int:
        opened.wait(LIVENESS_S)
        raise RetriesExhaustedError("never arrives")

    with PrefetchScheduler(connections=1) as scheduler:
        handle = scheduler.register(info, never, chunk_size=CHUNK, backing=cache.backing(0), evictable=False)
        handle.close()  # what closing its prepared directory does to each file
        with pytest.raises(ClosedError, match="its prepared directory was closed") as caught:
            handle.read_bytes(0, 10, LIVENESS_S)
        assert "stream" not in str(caught.value)
        opened.set()


def test_messages_name_this_process_as_this_process(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    caches.append(SharedCache.create(tmp_path / "eager", [OWNED_INFO], namespace=namespace, chunk_size=4096))
    with pytest.raises(CacheError, match=rf"this process \({os.getpid()}\) is preparing this object version"):
        SharedCache.create(tmp_path / "lazy", [OWNED_INFO], namespace=namespace, chunk_size=4096, lazy=True)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with prepare_lock(str(tmp_path / "eager"), LIVENESS_S):
            held.set()
            release.wait(LIVENESS_S)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(LIVENESS_S)
        who = rf"this process \({os.getpid()}\) itself, in another prepare of it"
        with pytest.raises(RequestTimeoutError, match=who), prepare_lock(str(tmp_path / "eager"), 0.1):
            pass
    finally:
        release.set()
        holder.join(LIVENESS_S)


# --- owners that die, live owners, squatters -----------------------------------------------------------

OWNER = """
import os, random, sys
from ossmodelconnector.objects import ObjectInfo
from ossmodelconnector.cache.shared_cache import SharedCache
model_dir, namespace, mode = sys.argv[1], sys.argv[2], sys.argv[3]
data = random.Random(1).randbytes(3 * 4096)
info = ObjectInfo("bucket", "m/w.bin", len(data), '"etag"', 0.0)
cache = SharedCache.create(model_dir, [info], namespace=namespace, chunk_size=4096)
print(cache.manifest_path, flush=True)
if mode == "raise":
    raise RuntimeError("the owner fails after creating its cache")
if mode == "forget":
    sys.exit(0)
if mode == "fork":
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # the child's exit (atexit, finalizers) must leave the parent's files alone
    os.waitpid(pid, 0)
    print("present" if os.path.exists(cache.data_path(0)) else "removed", flush=True)
    sys.exit(0)
if mode == "fill":  # its bytes in the segment, as if fetched: memory a SIGKILL would leave behind
    fd = os.open(cache.data_path(0), os.O_WRONLY)
    os.pwrite(fd, data, 0)
    os.close(fd)
    print("filled", flush=True)
sys.stdin.read()  # "wait": stay alive until the test closes stdin
cache.close()
"""

OWNED_INFO = ObjectInfo("bucket", "m/w.bin", 3 * 4096, '"etag"', 0.0)


def start_owner(model_dir: Path, namespace: str, mode: str = "wait") -> tuple[subprocess.Popen[str], Path]:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(model_dir), namespace, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    line = owner.stdout.readline().strip()
    assert line, owner.stderr.read() if owner.stderr else ""
    if mode == "fill":
        assert owner.stdout.readline().strip() == "filled"
    return owner, Path(line)


def test_a_dead_owner_is_reported_to_readers_and_its_files_are_recovered(
    tmp_path: Path, namespace: str, caches: list[SharedCache], caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = tmp_path / "model"
    owner, manifest = start_owner(model_dir, namespace)
    stale_table = read_manifest(manifest).state_table
    attached = AttachedCache.from_manifest(manifest)
    owner.kill()  # SIGKILL: nothing of the owner's runs
    owner.communicate()
    with pytest.raises(OwnerDiedError, match=f"process {owner.pid}"):
        attached.file(0).wait(0, 10, LIVENESS_S)
    attached.close()
    names = names_of(model_dir, namespace, [OWNED_INFO])
    assert names <= set(ours_in_dev_shm())  # left behind by the SIGKILL
    with caplog.at_level(logging.INFO, logger="ossmodelconnector.cache"):
        cache = SharedCache.create(model_dir, [OWNED_INFO], namespace=namespace, chunk_size=4096)
    caches.append(cache)
    assert f"left by process {owner.pid}" in caplog.text  # the sweep of every create removed them
    assert cache.state_table_name == stale_table and cache.table.owner_pid == os.getpid()
    assert os.stat(cache.data_path(0)).st_blocks == 0  # a fresh segment
    cache.close()
    assert_gone(names)


def test_a_live_owner_keeps_its_directory_and_its_objects(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    model_dir = tmp_path / "model"
    owner, _ = start_owner(model_dir, namespace)
    try:
        with pytest.raises(CacheError, match=f"live process {owner.pid}"):
            SharedCache.create(model_dir, [OWNED_INFO], namespace=namespace, chunk_size=4096)
        lazy = tmp_path / "lazy"
        with pytest.raises(CacheError, match=f"live process {owner.pid} .* lazy directories do not share"):
            SharedCache.create(lazy, [OWNED_INFO], namespace=namespace, chunk_size=4096, lazy=True)
        assert state_table_name(lazy) not in ours_in_dev_shm()  # the refused attempt left nothing
        # Another directory of the same object version shares the owner's segment, and its close leaves
        # it to the owner, which still holds it.
        other = tmp_path / "other"
        with SharedCache.create(other, [OWNED_INFO], namespace=namespace, chunk_size=4096) as shared:
            peer = shared.peer(0)
            assert peer is not None and peer.pid == owner.pid and peer.directory == str(model_dir)
            assert shared.data_path(0) == peer.data_path
        assert state_table_name(other) not in ours_in_dev_shm()
        assert data_segment_name(namespace, OWNED_INFO) in ours_in_dev_shm()  # the owner's is untouched
    finally:
        _, err = owner.communicate("", timeout=LIVENESS_S)
    assert owner.returncode == 0, err
    assert_gone(names_of(model_dir, namespace, [OWNED_INFO]))


def _files_of(manifest: Path) -> tuple[str, str]:
    """(state table, data segment) names of a one-file directory's manifest."""
    read = read_manifest(manifest)
    return read.state_table, Path(next(iter(read.files.values())).data_path).name


GC = "import sys; from ossmodelconnector.cli import main; sys.exit(main(['gc']))"


def test_gc_removes_what_a_sigkilled_owner_left_and_nothing_a_live_process_holds(
    tmp_path: Path, namespace: str
) -> None:
    shared, shared_manifest = start_owner(tmp_path / "shared", namespace, "fill")
    dead, dead_manifest = start_owner(tmp_path / "dead", f"{namespace}-2", "fill")
    live, live_manifest = start_owner(tmp_path / "live", f"{namespace}-3", "fill")
    holder = subprocess.Popen(  # a prepare lock whose holder is SIGKILLed too: the file stays
        [sys.executable, "-c", LOCK_HOLDER, str(tmp_path / "dead")], stdout=subprocess.PIPE, text=True
    )
    (shared_table, shared_data), (dead_table, dead_data) = (
        _files_of(shared_manifest),
        _files_of(dead_manifest),
    )
    live_files = set(_files_of(live_manifest))
    lock = lock_name(tmp_path / "dead")
    try:
        # Another directory of the same object version holds the first owner's segment.
        with SharedCache.create(
            tmp_path / "sharer", [OWNED_INFO], namespace=namespace, chunk_size=4096
        ) as sharer:
            assert sharer.peer(0) is not None and sharer.data_path(0) == f"/dev/shm/{shared_data}"
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            for process in (shared, dead, holder):
                process.kill()  # SIGKILL, as the OOM killer does: nothing of theirs runs
                process.communicate()
            left = {shared_table, shared_data, dead_table, dead_data, lock}
            assert left <= set(ours_in_dev_shm())
            done = run_child(GC)
            assert done.returncode == 0, done.stderr
            lines = done.stdout.splitlines()
            for name, kind in (
                (shared_table, "state table"),
                (dead_table, "state table"),
                (lock, "prepare lock"),
            ):
                line = next((line for line in lines if name in line), "")
                assert f"({kind}, " in line, (name, done.stdout)
            assert any(f"left by process {dead.pid}" in line for line in lines)
            assert any(dead_data in line and f"(data segment, {3 * 4096} bytes)" in line for line in lines)
            total = sum(int(line.rsplit("(", 1)[1].split(", ")[1].split()[0]) for line in lines[:-1])
            assert lines[-1] == f"removed {len(lines) - 1} file(s), {total} bytes"
            assert not {shared_table, dead_table, dead_data, lock} & set(ours_in_dev_shm())
            assert shared_data in ours_in_dev_shm()  # held by the live sharer: never removed
            assert live_files <= set(ours_in_dev_shm())  # the live owner's: untouched
            assert Path(sharer.data_path(0)).read_bytes() == random.Random(1).randbytes(3 * 4096)
        assert_gone({shared_data})  # its last holder removed it
        again = run_child(GC)
        assert not any(name in again.stdout for name in live_files) and live_files <= set(ours_in_dev_shm())
    finally:
        live.communicate("", timeout=LIVENESS_S)
    assert_gone(live_files)


def test_every_create_removes_what_dead_owners_of_other_directories_left(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    owner, manifest = start_owner(tmp_path / "dead", namespace, "fill")
    left = {read_manifest(manifest).state_table} | {
        Path(entry.data_path).name for entry in read_manifest(manifest).files.values()
    }
    owner.kill()
    owner.communicate()
    assert left <= set(ours_in_dev_shm())
    (info,) = infos_of({"m/other.bin": payload(100, 5)})
    caches.append(SharedCache.create(tmp_path / "other", [info], namespace=namespace, chunk_size=CHUNK))
    assert_gone(left)


LOCK_HOLDER = """
import sys, time
from ossmodelconnector.directory.attached import prepare_lock
with prepare_lock(sys.argv[1], 60):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("mode", ["raise", "forget"])
def test_an_owner_that_exits_without_closing_leaves_nothing(
    tmp_path: Path, namespace: str, mode: str
) -> None:
    result = run_child(OWNER, str(tmp_path / "model"), namespace, mode)
    assert result.returncode == (1 if mode == "raise" else 0), result.stderr
    assert "the owner fails" in result.stderr or mode == "forget"
    assert_gone(names_of(tmp_path / "model", namespace, [OWNED_INFO]))
    assert not (tmp_path / "model" / ".ossmodelconnector" / "manifest.json").exists()


def test_a_forked_child_exiting_leaves_the_parents_files(tmp_path: Path, namespace: str) -> None:
    result = run_child(OWNER, str(tmp_path / "model"), namespace, "fork")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1] == "present"
    assert_gone(names_of(tmp_path / "model", namespace, [OWNED_INFO]))


def test_a_dropped_cache_is_removed_by_the_garbage_collector(tmp_path: Path, namespace: str) -> None:
    (info,) = infos_of({"m/w.bin": payload(100, 1)})
    cache = SharedCache.create(tmp_path / "model", [info], namespace=namespace, chunk_size=CHUNK)
    names = names_of(tmp_path / "model", namespace, [info])
    assert names <= set(ours_in_dev_shm())
    del cache
    gc.collect()
    assert_gone(names)


@pytest.mark.parametrize("squat", ["foreign-mode", "foreign-owner", "symlink"])
@pytest.mark.parametrize("which", ["data", "table"])
def test_a_squatted_name_is_left_alone_and_the_next_name_used(
    tmp_path: Path, namespace: str, squat: str, which: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = payload(3 * CHUNK + 1, 1)
    (info,) = infos_of({"m/w.bin": data})
    model_dir = tmp_path / "model"
    name = data_segment_name(namespace, info) if which == "data" else state_table_name(model_dir)
    path = Path("/dev/shm") / name
    target = tmp_path / "target"
    target.write_bytes(b"not yours")
    owner = f"uid {os.geteuid()}"
    if squat == "symlink":
        path.symlink_to(target)
    elif squat == "foreign-mode":
        path.write_bytes(b"squatter")
        path.chmod(0o644)
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to create a file as another user")
        as_other_user(["sh", "-c", f"printf squatter > {path}"])  # nobody's file, nobody's mode
        owner = f"uid {path.stat().st_uid} (nobody)"
    try:
        with caplog.at_level(logging.WARNING, logger="ossmodelconnector"):
            cache = SharedCache.create(model_dir, [info], namespace=namespace, chunk_size=CHUNK)
        try:
            warnings = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
            assert len(warnings) == 1 and owner in warnings[0] and "left alone" in warnings[0]
            used = cache.data_path(0) if which == "data" else f"/dev/shm/{cache.state_table_name}"
            assert used == f"{path}-1"  # the next name of the same sequence in every process of the user
            fill_through_files(cache, {info.key: data}, [info], connections=2)
            assert Path(cache.data_path(0)).read_bytes() == data
            with AttachedCache.from_manifest(cache.manifest_path) as attached:
                attached.file(0).wait_all(LIVENESS_S)
                assert bytes(attached.data(0)) == data
        finally:
            cache.close()
        assert target.read_bytes() == b"not yours"
        if squat != "symlink":
            assert path.read_bytes() == b"squatter"  # never used, truncated nor removed
        assert_gone(names_of(model_dir, namespace, [info]) - {name} | {f"{name}-1"})
    finally:
        path.unlink()


# --- disk fallback -------------------------------------------------------------------------------------


def test_over_the_memory_limit_the_files_go_to_disk_with_a_warning(
    tmp_path: Path, namespace: str, caches: list[SharedCache], caplog: pytest.LogCaptureFixture
) -> None:
    objects = make_objects([3 * CHUNK, CHUNK + 7])
    infos = infos_of(objects)
    model_dir = tmp_path / "model"
    with caplog.at_level(logging.WARNING, logger="ossmodelconnector.cache.shared_cache"):
        cache = SharedCache.create(
            model_dir, infos, namespace=namespace, chunk_size=CHUNK, memory_limit_bytes=4 * CHUNK
        )
    caches.append(cache)
    assert cache.placement == "disk" and cache.table.placement == "disk"
    assert "memoryLimitMB" in caplog.text and str(model_dir) in caplog.text
    data_dir = model_dir / ".ossmodelconnector" / "data"
    for index, info in enumerate(infos):
        path = Path(cache.data_path(index))
        assert path.parent == data_dir and path.name == data_segment_name(namespace, info)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_size == info.size
    assert set(ours_in_dev_shm()) & names_of(model_dir, namespace, infos) == {cache.state_table_name}
    with PrefetchScheduler(connections=2) as scheduler:
        handles = [
            scheduler.register(
                info, fetcher(objects[info.key]), chunk_size=CHUNK, backing=cache.backing(i), evictable=False
            )
            for i, info in enumerate(infos)
        ]
        for handle in handles:
            handle.wait_all(LIVENESS_S)
        with AttachedCache.from_manifest(cache.manifest_path) as attached:
            assert bytes(attached.data(1)) == objects[infos[1].key]
    for index, info in enumerate(infos):
        assert Path(cache.data_path(index)).read_bytes() == objects[info.key]
    cache.close()
    assert not data_dir.exists()
    assert_gone(names_of(model_dir, namespace, infos))


def test_the_disk_fallback_never_follows_a_planted_symlink(tmp_path: Path, namespace: str) -> None:
    (info,) = infos_of({"m/w.bin": payload(2 * CHUNK, 1)})
    model_dir = tmp_path / "model"
    data_dir = model_dir / ".ossmodelconnector" / "data"
    data_dir.mkdir(parents=True)
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    planted = data_dir / data_segment_name(namespace, info)
    planted.symlink_to(target)
    with SharedCache.create(
        model_dir, [info], namespace=namespace, chunk_size=CHUNK, memory_limit_bytes=0
    ) as cache:
        assert cache.data_path(0) == f"{planted}-1"  # the link is left alone, never followed
    assert target.read_bytes() == b"keep me" and planted.is_symlink()
    assert_gone(names_of(model_dir, namespace, [info]))


def test_relative_paths_are_checked(tmp_path: Path, namespace: str) -> None:
    (info,) = infos_of({"m/w.bin": payload(10, 1)})
    for bad in ["../escape.bin", "/abs.bin", ".ossmodelconnector/x", "a/../../b", ""]:
        with pytest.raises(ValueError, match="cannot be a path"):
            SharedCache.create(
                tmp_path / "model", [info], namespace=namespace, chunk_size=CHUNK, relative_paths=[bad]
            )
    assert_gone(names_of(tmp_path / "model", namespace, [info]))


# --- fork ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_reads_without_touching_the_parents_state_table(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    data = payload(6 * CHUNK, 21)
    (info,) = infos_of({"m/w.bin": data})
    cache = SharedCache.create(tmp_path / "m", [info], namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    parent = os.getpid()
    entered = threading.Event()
    opened = threading.Event()

    def fetch_into(start: int, end: int, dest: memoryview) -> int:
        if start == 3 * CHUNK and os.getpid() == parent:
            entered.set()
            assert opened.wait(LIVENESS_S)
        dest[:] = data[start:end]
        return crc64(dest)

    with PrefetchScheduler(connections=1) as scheduler:
        handle = scheduler.register(
            info, fetch_into, chunk_size=CHUNK, backing=cache.backing(0), evictable=False
        )
        assert entered.wait(LIVENESS_S)  # the parent's worker is inside chunk 3
        before = bytes(cache.table.states(0))
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                same = handle.read_bytes(0, len(data), LIVENESS_S) == data
                untouched = bytes(cache.table.states(0)) == before
                code = 0 if same and untouched else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert before[3] == ChunkState.FETCHING and cache.table.states(0)[3] == ChunkState.FETCHING
        opened.set()
        handle.wait_all(LIVENESS_S)
        assert Path(cache.data_path(0)).read_bytes() == data


def test_each_segment_is_fetched_by_whichever_directory_created_it(tmp_path: Path, namespace: str) -> None:
    # One directory holds the second object only; a directory of both objects creates the first and
    # shares the second; a third shares both. Each closes in turn, and a segment goes with its last holder.
    first, second = infos_of({"m/a.bin": b"a" * 9000, "m/b.bin": b"b" * 7000})
    only_second = SharedCache.create(tmp_path / "x", [second], namespace=namespace, chunk_size=4096)
    both = SharedCache.create(tmp_path / "y", [first, second], namespace=namespace, chunk_size=4096)
    third = SharedCache.create(tmp_path / "z", [first, second], namespace=namespace, chunk_size=4096)
    try:
        assert only_second.peer(0) is None
        assert both.peer(0) is None
        peer = both.peer(1)
        assert peer is not None and peer.directory == str(tmp_path / "x") and peer.index == 0
        listers = [third.peer(0), third.peer(1)]
        assert all(lister is not None for lister in listers)  # nothing left for the third to fetch
        assert {lister.directory for lister in listers if lister} <= {
            str(tmp_path / "x"),
            str(tmp_path / "y"),
        }
        assert len({both.data_path(i) for i in (0, 1)} | {third.data_path(i) for i in (0, 1)}) == 2
        segments = {data_segment_name(namespace, info) for info in (first, second)}
        only_second.close()
        both.close()
        assert segments <= set(ours_in_dev_shm())  # the third still holds both
    finally:
        for cache in (only_second, both, third):
            cache.close()
    assert_gone(segments | {state_table_name(tmp_path / name) for name in "xyz"})


# --- no room to store a chunk ---------------------------------------------------------------------------

MIB = 1 << 20


def fill(path: Path) -> None:
    """Write ``path`` until its file system is full."""
    block = b"\xff" * (1 << 20)
    with open(path, "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


@pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs as cacheDir needs root")
def test_a_chunk_that_found_no_room_is_fetched_again_once_there_is_room(
    tmp_path: Path, namespace: str
) -> None:
    objects = make_objects([4 * MIB, 2 * MIB])
    infos = infos_of(objects)
    (good, bad), (data, _) = infos, objects.values()
    opened = threading.Event()
    calls: Counter[tuple[str, int]] = Counter()

    def fetch_into(start: int, end: int, dest: memoryview) -> int:
        assert opened.wait(LIVENESS_S)
        calls[(good.key, start)] += 1
        dest[:] = data[start:end]
        return crc64(dest)

    def failing(start: int, end: int, dest: memoryview) -> int:
        calls[(bad.key, start)] += 1
        raise RetriesExhaustedError(f"{bad.uri}: bytes [{start}, {end}) failed 5 times: SlowDown")

    with tmpfs(tmp_path / "shm", "24m") as cache_dir:  # 6 MiB + the 16 MiB margin fit: placement shm
        cache = SharedCache.create(
            tmp_path / "m", infos, namespace=namespace, chunk_size=MIB, cache_dir=str(cache_dir)
        )
        try:
            assert cache.placement == "shm" and cache.data_path(0).startswith(str(cache_dir))
            with PrefetchScheduler(connections=2) as scheduler:
                handles = [
                    scheduler.register(
                        info,
                        cache.backing(i).file_fetcher(fetch),
                        chunk_size=MIB,
                        backing=cache.backing(i),
                        evictable=False,
                        first_chunk_first=True,
                    )
                    for i, (info, fetch) in enumerate(zip(infos, [fetch_into, failing], strict=True))
                ]
                demands = DemandServer(cache.table, lambda i, chunks: scheduler.boost(handles[i], chunks))
                try:
                    fill(cache_dir / "filler")  # /dev/shm full before the first chunk (the header) lands
                    opened.set()
                    for _ in range(2):  # still full: each read fetches the header again, and fails again
                        with pytest.raises(OutOfMemoryError, match="could not be stored") as caught:
                            handles[0].wait(0, 10, LIVENESS_S)
                        assert "No space left on device" in str(caught.value.__cause__)
                    assert calls[(good.key, 0)] >= 2
                    with pytest.raises(RetriesExhaustedError):  # a genuine failure: not fetched again
                        handles[1].wait(0, 10, LIVENESS_S)
                    with pytest.raises(RetriesExhaustedError):
                        handles[1].wait(0, 10, LIVENESS_S)
                    assert calls[(bad.key, 0)] == 1
                    (cache_dir / "filler").unlink()  # room again
                    assert handles[0].read_bytes(0, 2 * MIB, LIVENESS_S) == data[: 2 * MIB]
                    # A reader in another process (the same code path: the table, its demand ring) too.
                    with AttachedCache.from_manifest(cache.manifest_path, writable=True) as attached:
                        attached.file(0).wait_all(LIVENESS_S)
                        assert bytes(attached.data(0)) == data
                        with pytest.raises(RetriesExhaustedError):
                            attached.file(1).wait(0, 10, LIVENESS_S)
                    assert Path(cache.data_path(0)).read_bytes() == data
                    assert cache.table.file_status(0) == FileStatus.VERIFIED
                finally:
                    demands.close()
        finally:
            cache.close()


# --- chunks stored with pwrite (SharedBacking.file_fetcher), not through the mapping ----------------------


def fill_through_files(
    cache: SharedCache, objects: dict[str, bytes], infos: list[ObjectInfo], connections: int
) -> None:
    with PrefetchScheduler(connections=connections) as scheduler:
        handles = []
        for index, info in enumerate(infos):
            backing = cache.backing(index)
            handles.append(
                scheduler.register(
                    info,
                    backing.file_fetcher(fetcher(objects[info.key])),
                    chunk_size=cache.table.chunk_size,
                    backing=backing,
                    evictable=False,
                )
            )
        for handle in handles:
            handle.wait_all(LIVENESS_S)


def test_chunks_stored_through_the_file_are_seen_by_the_mapping_which_holds_no_page(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    objects = make_objects([5 * CHUNK + 123, CHUNK, 7])
    infos = infos_of(objects)
    cache = SharedCache.create(tmp_path / "m", infos, namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    fill_through_files(cache, objects, infos, connections=4)
    for index, info in enumerate(infos):
        path = cache.data_path(index)
        assert cache.backing(index).path == path
        assert mapping_rss(path) == 0  # no write fault per page through this process's mapping
        assert Path(path).read_bytes() == objects[info.key]
        mapping = cache.backing(index).mapping
        assert mapping is not None and mapping[:] == objects[info.key]  # the same page-cache pages
    assert [entry.status for entry in cache.table.files()] == [FileStatus.VERIFIED] * 3


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=3 * CHUNK + 1), min_size=1, max_size=3),
    chunk=st.sampled_from([CHUNK, CHUNK + 904, 4 * CHUNK]),
    connections=st.integers(min_value=1, max_value=4),
)
def test_any_layout_is_stored_through_the_files_byte_for_byte(
    tmp_path: Path, sizes: list[int], chunk: int, connections: int
) -> None:
    objects = make_objects(sizes)
    infos = infos_of(objects)
    namespace = f"http://127.0.0.1:1/test-{uuid.uuid4().hex}"
    cache = SharedCache.create(tmp_path / uuid.uuid4().hex, infos, namespace=namespace, chunk_size=chunk)
    try:
        fill_through_files(cache, objects, infos, connections)
        for index, info in enumerate(infos):
            assert Path(cache.data_path(index)).read_bytes() == objects[info.key]
    finally:
        cache.close()


def test_a_closed_cache_is_not_written_through_its_file(tmp_path: Path, namespace: str) -> None:
    objects = make_objects([2 * CHUNK])
    infos = infos_of(objects)
    cache = SharedCache.create(tmp_path / "m", infos, namespace=namespace, chunk_size=CHUNK)
    backing = cache.backing(0)
    path = cache.data_path(0)
    cache.close()
    with pytest.raises(ClosedError, match="closed"):
        backing.fetch_through_file(fetcher(objects[infos[0].key]), 0, CHUNK)
    assert not os.path.exists(path)  # not created again by the write


def test_a_file_replaced_under_the_same_name_is_never_written(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    objects = make_objects([2 * CHUNK])
    infos = infos_of(objects)
    cache = SharedCache.create(tmp_path / "m", infos, namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    backing = cache.backing(0)
    path = cache.data_path(0)
    os.unlink(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)  # someone else's file, same name
    try:
        os.ftruncate(fd, 2 * CHUNK)
        with pytest.raises(ClosedError, match="no longer this cache's file"):
            backing.fetch_through_file(fetcher(objects[infos[0].key]), 0, CHUNK)
        assert os.pread(fd, 2 * CHUNK, 0) == bytes(2 * CHUNK)
    finally:
        os.close(fd)
        os.unlink(path)  # the planted file is not the cache's: its close leaves it alone


def test_without_a_path_chunks_go_through_the_mapping(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    objects = make_objects([CHUNK + 1])
    (info,) = infos_of(objects)
    cache = SharedCache.create(tmp_path / "m", [info], namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    plain = SharedBacking(cache.table, 0, cache.backing(0).mapping)
    fetch = fetcher(objects[info.key])
    assert plain.path is None and plain.file_fetcher(fetch) is fetch
    with pytest.raises(ValueError, match="no data file"):
        plain.fetch_through_file(fetch, 0, CHUNK)
    missing = SharedBacking(cache.table, 0, cache.backing(0).mapping, path=str(tmp_path / "gone"))
    assert missing.path is None  # a path that cannot be checked: through the mapping, as before


# --- file times: the object's Last-Modified, kept through every write and release ------------------------

LAST_MODIFIED = 1_620_284_889.0  # 2021-05-06T07:08:09Z
LAST_MODIFIED_NS = 1_620_284_889 * 1_000_000_000


def dated_infos(objects: dict[str, bytes]) -> list[ObjectInfo]:
    return [
        ObjectInfo("bucket", key, len(data), f'"{key}-etag"', LAST_MODIFIED + i, crc64(data))
        for i, (key, data) in enumerate(objects.items())
    ]


def kernel_mtime_ns(path: str) -> int:
    return os.stat(path).st_mtime_ns  # no hooks installed here: what the kernel says


@pytest.mark.parametrize("lazy", [False, True])
def test_data_files_show_last_modified_from_creation_through_every_chunk_stored(
    tmp_path: Path, namespace: str, caches: list[SharedCache], lazy: bool
) -> None:
    objects = make_objects([5 * CHUNK + 123, 3 * CHUNK])
    infos = dated_infos(objects)
    cache = SharedCache.create(tmp_path / "m", infos, namespace=namespace, chunk_size=CHUNK, lazy=lazy)
    caches.append(cache)
    expected = [LAST_MODIFIED_NS + i * 1_000_000_000 for i in range(len(infos))]
    assert [kernel_mtime_ns(cache.data_path(i)) for i in range(len(infos))] == expected  # sized, not written
    fill_through_files(cache, objects, infos, connections=4)
    assert [kernel_mtime_ns(cache.data_path(i)) for i in range(len(infos))] == expected
    assert [os.stat(cache.data_path(i)).st_atime_ns for i in range(len(infos))] == expected
    assert Path(cache.data_path(0)).read_bytes() == objects[infos[0].key]


def test_a_released_chunk_punched_out_of_a_lazy_file_leaves_its_time_alone(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    objects = make_objects([4 * CHUNK])
    (info,) = dated_infos(objects)
    cache = SharedCache.create(tmp_path / "m", [info], namespace=namespace, chunk_size=CHUNK, lazy=True)
    caches.append(cache)
    path = cache.data_path(0)
    backing = cache.backing(0)
    assert backing.punch_holes
    buffer = ChunkBuffer(info, CHUNK, backing=backing)
    fetch = backing.file_fetcher(fetcher(objects[info.key]))
    for index in range(buffer.count):
        buffer.begin_fetch(index)
        buffer.complete(index, fetch(index * CHUNK, (index + 1) * CHUNK, buffer.chunk_view(index)))
    assert os.stat(path).st_blocks * 512 >= 4 * CHUNK
    for index in range(buffer.count):
        buffer.release(index)  # MADV_REMOVE: tmpfs frees the pages, the kernel moves the mtime
        assert kernel_mtime_ns(path) == LAST_MODIFIED_NS
    assert os.stat(path).st_blocks == 0  # the pages really went back
    buffer.begin_fetch(1)  # fetched again after the eviction
    buffer.complete(1, fetch(CHUNK, 2 * CHUNK, buffer.chunk_view(1)))
    assert kernel_mtime_ns(path) == LAST_MODIFIED_NS
    buffer.close()


def test_a_time_of_zero_leaves_the_kernels_times(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    objects = make_objects([2 * CHUNK])
    infos = infos_of(objects)  # last_modified 0.0: the server sent none
    cache = SharedCache.create(tmp_path / "m", infos, namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    assert cache.backing(0).mtime_ns is None
    fill_through_files(cache, objects, infos, connections=2)
    assert kernel_mtime_ns(cache.data_path(0)) > LAST_MODIFIED_NS


def test_the_manifest_tells_readers_elsewhere_each_files_time(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    objects = make_objects([CHUNK, CHUNK])
    infos = dated_infos(objects)
    cache = SharedCache.create(tmp_path / "m", infos, namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    manifest = read_manifest(cache.manifest_path)
    assert sorted(entry.last_modified for entry in manifest.files.values()) == [
        LAST_MODIFIED,
        LAST_MODIFIED + 1,
    ]
    # A manifest written before times were kept has none: read as unknown (0), not refused.
    data = json.loads(cache.manifest_path.read_text())
    for entry in data["files"].values():
        del entry["last_modified"]
    older = tmp_path / "older.json"
    older.write_text(json.dumps(data))
    assert {entry.last_modified for entry in read_manifest(older).files.values()} == {0.0}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another file user")
def test_a_file_system_refusing_times_costs_a_warning_never_a_chunk(
    tmp_path: Path, namespace: str, caches: list[SharedCache], caplog: pytest.LogCaptureFixture
) -> None:
    objects = make_objects([3 * CHUNK, 2 * CHUNK])
    infos = dated_infos(objects)
    cache = SharedCache.create(tmp_path / "m", infos, namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    for index in range(len(infos)):
        give_away(cache.data_path(index))  # writable, but its times are refused (a real EPERM)
    as_other_file_user(lambda: fill_through_files(cache, objects, infos, connections=2))
    for index, info in enumerate(infos):
        assert Path(cache.data_path(index)).read_bytes() == objects[info.key]
        assert cache.table.file_status(index) == FileStatus.VERIFIED
        assert cache.backing(index).mtime_ns is None  # not tried again
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert sum("Last-Modified" in message for message in warnings) == 2  # once per file


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another file user")
def test_restoring_times_that_are_refused_warns_once_and_keeps_the_bytes(
    tmp_path: Path, namespace: str, caches: list[SharedCache], caplog: pytest.LogCaptureFixture
) -> None:
    objects = make_objects([2 * CHUNK])
    infos = dated_infos(objects)
    cache = SharedCache.create(tmp_path / "m", infos, namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    fill_through_files(cache, objects, infos, connections=2)
    backing = cache.backing(0)
    give_away(cache.data_path(0))
    as_other_file_user(backing.restore_times)
    as_other_file_user(backing.restore_times)  # not tried again: no second warning
    assert backing.mtime_ns is None
    assert Path(cache.data_path(0)).read_bytes() == objects[infos[0].key]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert sum("Last-Modified" in message for message in warnings) == 1
