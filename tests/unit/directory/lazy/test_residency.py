"""Lazy files and their budget: start on first use, LRU eviction of whole files, readers, mappings.

No sockets: each object is an in-memory ``bytes`` served by a ``fetch_into`` that records its calls, and
the real :class:`PrefetchScheduler` fetches it. Tests assert bytes, states and calls, never durations.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ossmodelconnector._fast import crc64
from ossmodelconnector.directory.lazy.residency import LazyFile, Residency, in_use_by_readers
from ossmodelconnector.errors import ClosedError
from ossmodelconnector.fetch.prefetch import ObjectHandle, PrefetchScheduler
from ossmodelconnector.objects import ObjectInfo

CHUNK = 64
SIZE = 3 * CHUNK  # three chunks per file; a limit of 2 * SIZE holds two files


class Source:
    """One object in memory and the fetches made of it."""

    def __init__(self, seed: int) -> None:
        self.data = bytes((seed * 31 + i * 7) % 251 for i in range(SIZE))
        self.info = ObjectInfo("bucket", f"model-{seed}.safetensors", SIZE, '"e"', 0.0, crc64(self.data))
        self.fetched = 0
        self._lock = threading.Lock()

    def fetch_into(self, start: int, end: int, dest: memoryview) -> int:
        with self._lock:
            self.fetched += end - start
        dest[:] = self.data[start:end]
        return crc64(dest)


@pytest.fixture
def scheduler() -> Iterator[PrefetchScheduler]:
    with PrefetchScheduler(connections=2) as made:
        yield made


def _files(
    residency: Residency, scheduler: PrefetchScheduler, count: int
) -> tuple[list[LazyFile], list[Source]]:
    sources = [Source(seed) for seed in range(count)]
    files = []
    for number, source in enumerate(sources):

        def start(source: Source = source) -> ObjectHandle:
            return scheduler.register(source.info, source.fetch_into, chunk_size=CHUNK, evictable=False)

        lazy_file = LazyFile(residency, f"/models/{number}", f"/dev/shm/none-{number}", source.info, start)
        residency.add(lazy_file)
        files.append(lazy_file)
    return files, sources


def _read(lazy_file: LazyFile) -> bytes:
    lazy_file.wait_all(10)
    assert lazy_file.handle is not None
    return lazy_file.handle.read_bytes(0, lazy_file.size)


def test_nothing_is_fetched_until_first_use_then_the_whole_file_is(scheduler: PrefetchScheduler) -> None:
    residency = Residency(scheduler, None)
    (first, second), (source, other) = _files(residency, scheduler, 2)
    assert first.status()["state"] == "not fetched" and source.fetched == 0
    first.add_reader()  # an open: the whole file is queued, not only what a read asks for
    first.wait(0, 1, 10)
    first.wait_all(10)
    assert first.status() | {"last_used_at": None} == {
        "size": SIZE,
        "state": "cached",
        "percent": 100.0,
        "held_bytes": SIZE,
        "readers": 1,
        "evictions": 0,
        "last_used_at": None,
    }
    assert _read(first) == source.data and source.fetched == SIZE
    assert other.fetched == 0 and second.status()["state"] == "not fetched"
    first.remove_reader()
    assert first.status()["readers"] == 0


def test_a_peek_fetches_only_its_chunks_and_reading_through_fetches_the_whole_file(
    scheduler: PrefetchScheduler,
) -> None:
    residency = Residency(scheduler, None)
    (peeked,), (source,) = _files(residency, scheduler, 1)
    peeked.add_reader()  # an open() alone fetches nothing
    assert source.fetched == 0 and peeked.status()["state"] == "not fetched"
    peeked.wait_read(CHUNK + 1, CHUNK + 9, 10, sequential=8)
    assert source.fetched == CHUNK and peeked.status()["state"] == "not fetched"
    assert peeked.status()["percent"] == round(100 / 3, 2)
    peeked.wait_read(0, SIZE // 2, 10, sequential=SIZE // 2)  # reading it through: the whole file
    peeked.wait_all(10)
    assert source.fetched == SIZE and peeked.status()["state"] == "cached"
    peeked.remove_reader()


def test_least_recently_used_file_is_evicted_and_fetched_again(scheduler: PrefetchScheduler) -> None:
    residency = Residency(scheduler, 2 * SIZE)
    (a, b, c), (source_a, _, _) = _files(residency, scheduler, 3)
    _read(a)
    _read(b)
    _read(a)  # A used last: B is now the least recently used
    _read(c)
    assert [file.status()["state"] for file in (a, b, c)] == ["cached", "evicted", "cached"]
    assert b.held_bytes == 0 and residency.held_bytes == 2 * SIZE
    _read(b)  # B back: A is now the least recently used of the two others
    assert [file.status()["state"] for file in (a, b, c)] == ["evicted", "cached", "cached"]
    assert _read(a) == source_a.data and source_a.fetched == 2 * SIZE
    assert a.status()["evictions"] == 1


def test_a_file_with_a_reader_is_never_evicted_and_the_budget_is_exceeded_instead(
    scheduler: PrefetchScheduler, caplog: pytest.LogCaptureFixture
) -> None:
    residency = Residency(scheduler, SIZE)
    (a, b), _ = _files(residency, scheduler, 2)
    a.add_reader()
    _read(a)
    _read(b)
    assert a.status()["state"] == "cached" and b.status()["state"] == "cached"
    assert any("exceeds memoryLimitMB" in record.getMessage() for record in caplog.records)
    a.remove_reader()
    assert residency.collect(0, why="test") and a.status()["state"] == "evicted"


def test_collect_releases_only_files_idle_long_enough(scheduler: PrefetchScheduler) -> None:
    residency = Residency(scheduler, None)
    (a, b), _ = _files(residency, scheduler, 2)
    _read(a)
    _read(b)
    assert residency.collect(3600, why="test") == []
    b.add_reader()
    released = residency.collect(0, why="gc.idleSeconds=0")
    assert [(item.path, item.nbytes) for item in released] == [(a.path, SIZE)]
    assert "gc.idleSeconds=0" in released[0].reason
    assert b.status()["state"] == "cached"


def test_a_closed_file_refuses_to_start(scheduler: PrefetchScheduler) -> None:
    residency = Residency(scheduler, None)
    (a,), _ = _files(residency, scheduler, 1)
    _read(a)
    a.close()
    assert a.handle is None and residency.files() == []
    with pytest.raises(ClosedError, match="prepare it again"):
        a.wait(0, 1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(opens=st.lists(st.integers(0, 3), min_size=1, max_size=12), holding=st.integers(1, 3))
def test_any_switching_sequence_reads_correct_bytes_within_the_limit(
    scheduler: PrefetchScheduler, opens: list[int], holding: int
) -> None:
    residency = Residency(scheduler, holding * SIZE)
    files, sources = _files(residency, scheduler, 4)
    try:
        for number in opens:
            assert _read(files[number]) == sources[number].data
            assert residency.held_bytes <= holding * SIZE
        fetches = sum(source.fetched for source in sources) // SIZE
        assert fetches >= len(set(opens))  # each file at least once; more only after an eviction
    finally:
        for lazy_file in files:
            lazy_file.close()


def test_in_use_by_readers_tells_a_readers_mapping_from_the_caches_own(tmp_path: Path) -> None:
    path = tmp_path / "segment"
    path.write_bytes(b"x" * mmap.PAGESIZE)
    with open(path, "r+b") as file:  # the cache writes through a writable descriptor: not a reader
        own = mmap.mmap(file.fileno(), 0, flags=mmap.MAP_SHARED)  # the cache's writable shared mapping
        assert in_use_by_readers([str(path)]) == set()
        reader = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        assert in_use_by_readers([str(path), "/elsewhere"]) == {str(path)}
        reader.close()
        assert in_use_by_readers([str(path)]) == set()
        own.close()
    assert in_use_by_readers([]) == set()


def test_in_use_by_readers_sees_raw_descriptors_but_not_the_caches_holds(tmp_path: Path) -> None:
    path = tmp_path / "segment"
    path.write_bytes(b"x" * mmap.PAGESIZE)
    hold = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # what segment_hold.py keeps: a shared flock
    fcntl.flock(hold, fcntl.LOCK_SH)
    try:
        assert in_use_by_readers([str(path)]) == set()
        reader = os.open(path, os.O_RDONLY)  # os.open + os.pread: no mapping, no hook, still a reader
        try:
            assert in_use_by_readers([str(path)]) == {str(path)}
        finally:
            os.close(reader)
        assert in_use_by_readers([str(path)]) == set()
    finally:
        os.close(hold)


def test_in_use_by_readers_knows_a_file_by_what_it_is_not_by_its_spelling(tmp_path: Path) -> None:
    """The kernel lists a mapping under the resolved path; the cache may know it through a symlink."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    (real / "segment").write_bytes(b"x" * mmap.PAGESIZE)
    spelled = str(tmp_path / "link" / "segment")
    with open(real / "segment", "rb") as file:
        reader = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        assert in_use_by_readers([spelled]) == {spelled}
    finally:
        reader.close()
    assert in_use_by_readers([spelled]) == set()
