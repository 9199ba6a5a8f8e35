"""A shared cache's chunks stored with ``pwrite`` (``SharedBacking.file_fetcher``), not through its mapping.

Real segments in /dev/shm, a real scheduler; the fetchers copy from in-memory objects. Asserts the bytes
in the file and in the mapping, that this process's own mapping of the file holds none of the written
pages (the point of writing through the file: no write fault per 4 KiB page), and that a closed or
replaced file is never written.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ossmodelconnector._fast import crc64
from ossmodelconnector.cache.shared_backing import SharedBacking
from ossmodelconnector.cache.shared_cache import SharedCache
from ossmodelconnector.cache.state_table import FileStatus
from ossmodelconnector.errors import ClosedError
from ossmodelconnector.objects import ObjectInfo
from ossmodelconnector.prefetch import PrefetchScheduler

LIVENESS_S = 60.0
CHUNK = 64 * 1024


def objects_of(sizes: list[int], seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"models/m/shard-{i:02d}.bin": rng.randbytes(size) for i, size in enumerate(sizes)}


def infos_of(objects: dict[str, bytes]) -> list[ObjectInfo]:
    return [
        ObjectInfo("bucket", key, len(data), f'"{key}-etag"', 0.0, crc64(data))
        for key, data in objects.items()
    ]


def copier(data: bytes) -> Callable[[int, int, memoryview], int]:
    def fetch_into(start: int, end: int, dest: memoryview) -> int:
        dest[:] = data[start:end]
        return crc64(dest)

    return fetch_into


def mapping_rss(path: str) -> int:
    """Resident bytes of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5:
                inside = len(fields) >= 6 and fields[5] == path
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


@pytest.fixture
def namespace() -> str:
    return f"http://127.0.0.1:1/test-{uuid.uuid4().hex}"


@pytest.fixture
def caches() -> Iterator[list[SharedCache]]:
    made: list[SharedCache] = []
    yield made
    for cache in made:
        cache.close()


def fill(cache: SharedCache, objects: dict[str, bytes], infos: list[ObjectInfo], connections: int) -> None:
    with PrefetchScheduler(connections=connections) as scheduler:
        handles = []
        for index, info in enumerate(infos):
            backing = cache.backing(index)
            handles.append(
                scheduler.register(
                    info,
                    backing.file_fetcher(copier(objects[info.key])),
                    chunk_size=cache.table.chunk_size,
                    backing=backing,
                    evictable=False,
                )
            )
        for handle in handles:
            handle.wait_all(LIVENESS_S)


def test_chunks_land_in_the_file_and_the_mapping_sees_them_without_holding_pages(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    objects = objects_of([5 * CHUNK + 123, CHUNK, 7])
    infos = infos_of(objects)
    cache = SharedCache.create(tmp_path / "m", infos, namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    fill(cache, objects, infos, connections=4)
    for index, info in enumerate(infos):
        path = cache.data_path(index)
        assert cache.backing(index).path == path
        assert mapping_rss(path) == 0  # nothing was written through this process's mapping
        assert Path(path).read_bytes() == objects[info.key]
        mapping = cache.backing(index).mapping
        assert mapping is not None and mapping[:] == objects[info.key]  # same page-cache pages
    assert [entry.status for entry in cache.table.files()] == [FileStatus.VERIFIED] * 3


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=3 * CHUNK + 1), min_size=1, max_size=3),
    chunk=st.sampled_from([4096, 5000, CHUNK]),
    connections=st.integers(min_value=1, max_value=4),
)
def test_any_layout_is_stored_byte_for_byte(
    tmp_path: Path, sizes: list[int], chunk: int, connections: int
) -> None:
    objects = objects_of(sizes, seed=len(sizes) * chunk)
    infos = infos_of(objects)
    cache = SharedCache.create(
        tmp_path / uuid.uuid4().hex,
        infos,
        namespace=f"http://127.0.0.1:1/{uuid.uuid4().hex}",
        chunk_size=chunk,
    )
    try:
        fill(cache, objects, infos, connections)
        for index, info in enumerate(infos):
            assert Path(cache.data_path(index)).read_bytes() == objects[info.key]
    finally:
        cache.close()


def test_a_closed_cache_is_not_written_again(tmp_path: Path, namespace: str) -> None:
    objects = objects_of([2 * CHUNK])
    infos = infos_of(objects)
    cache = SharedCache.create(tmp_path / "m", infos, namespace=namespace, chunk_size=CHUNK)
    backing = cache.backing(0)
    path = cache.data_path(0)
    cache.close()
    with pytest.raises(ClosedError, match="closed"):
        backing.fetch_through_file(copier(objects[infos[0].key]), 0, CHUNK)
    assert not os.path.exists(path)  # not created again by the write


def test_a_file_replaced_under_the_same_name_is_never_written(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    objects = objects_of([2 * CHUNK])
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
            backing.fetch_through_file(copier(objects[infos[0].key]), 0, CHUNK)
        assert os.pread(fd, 2 * CHUNK, 0) == bytes(2 * CHUNK)
    finally:
        os.close(fd)
        os.unlink(path)  # the planted file is not the cache's: its close leaves it alone


def test_without_a_path_chunks_go_through_the_mapping(
    tmp_path: Path, namespace: str, caches: list[SharedCache]
) -> None:
    objects = objects_of([CHUNK + 1])
    (info,) = infos_of(objects)
    cache = SharedCache.create(tmp_path / "m", [info], namespace=namespace, chunk_size=CHUNK)
    caches.append(cache)
    plain = SharedBacking(cache.table, 0, cache.backing(0).mapping)
    fetch = copier(objects[info.key])
    assert plain.path is None and plain.file_fetcher(fetch) is fetch
    with pytest.raises(ValueError, match="no data file"):
        plain.fetch_through_file(fetch, 0, CHUNK)
    missing = SharedBacking(cache.table, 0, cache.backing(0).mapping, path=str(tmp_path / "gone"))
    assert missing.path is None  # a path that cannot be checked: the mapping, as before
