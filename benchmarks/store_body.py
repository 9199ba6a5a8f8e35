"""Which way of storing a ranged GET's body in a fresh shared-memory segment costs the least CPU per GiB?

Question (issue 16, part 2): the connector receives each chunk and must leave its bytes in the data
segment (a fresh ``/dev/shm`` file that readers map). Every contender below receives the same objects
from a ``localoss`` subprocess on ``--connections`` keep-alive connections in 8 MiB ranged GETs, with
the CRC-64 of every byte computed, and leaves them in fresh ``/dev/shm`` files:

- ``bounce + pwrite``: ``OssClient.get_into`` (the receive kernel) into a reused per-thread buffer,
  then ``pwrite`` of the chunk into the file (what ``SharedBacking.fetch_through_file`` did);
- ``mapping``: ``get_into`` straight into the file's ``MAP_SHARED`` mapping, one page fault per 4 KiB;
- ``mapping + MADV_POPULATE_WRITE``: the chunk's pages populated writable in one ``madvise`` first
  (Linux 5.14), then ``get_into`` into the mapping;
- ``fallocate + mapping``: the whole file allocated with ``fallocate`` first (inside the clock), then
  ``get_into`` into the mapping;
- (measured once, commit c1e9852: ``hot pieces + pwrite``, a kernel variant receiving 256 KiB at a
  time into a cache-resident buffer and ``pwrite``-ing each piece: more CPU than one ``pwrite`` per
  chunk, the writers contending on the file's inode lock per piece; removed);
- ``splice``: the body moved socket -> pipe -> file with ``splice`` (no copy through user space), then
  the CRC-64 read back from the mapping (the only way to check bytes that never pass through us);
- ``bare receive``: ``get_into`` into buffers touched before the clock (receiving alone, nothing stored);
- ``store only``: ``pwrite`` of the same bytes from a hot buffer into fresh files (storing alone).

Reported: median wall seconds, GB/s, CPU seconds of this process (user + system) per GiB, and minor
faults; the server's CPU is not counted (it is another process). Each repetition runs every contender
once, in a shuffled order. Run: ``python benchmarks/store_body.py [--size-mib 1024] [--reps 5]
[--no-write]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.client
import mmap
import os
import queue
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bare import run_threads, sign_v1
from _results import markdown_table, median, write_section
from localoss_harness import LocalOss, start_localoss

from ossmodelconnector._fast import crc64, crc64_combine
from ossmodelconnector.config import load_config
from ossmodelconnector.oss.client import OssClient
from ossmodelconnector.oss.credentials import Credentials, StaticCredentialProvider
from ossmodelconnector.oss.uri import parse_endpoint

MIB = 1 << 20
GIB = 1 << 30
BUCKET = "bench-store"
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14; Python names it from 3.12
BOUNCE = "bounce + pwrite"
MAPPING = "mapping"
POPULATE = "mapping + MADV_POPULATE_WRITE"
FALLOCATE = "fallocate + mapping"
SPLICE = "splice"
BARE = "bare receive (touched buffer; nothing stored)"
STORE = "store only (pwrite; no network)"
CONTENDERS = (BOUNCE, MAPPING, POPULATE, FALLOCATE, SPLICE, BARE, STORE)

Job = tuple[int, int, int]  # (file index, start, end)


class Files:
    """Fresh /dev/shm files of the objects' sizes, each with a writable shared mapping; removed on exit."""

    def __init__(self, sizes: list[int], tag: str) -> None:
        self.paths = [f"/dev/shm/store-body-{os.getpid()}-{tag}-{index}" for index in range(len(sizes))]
        self.fds = [os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600) for path in self.paths]
        for fd, size in zip(self.fds, sizes, strict=True):
            os.ftruncate(fd, size)
        self.maps = [mmap.mmap(fd, size) for fd, size in zip(self.fds, sizes, strict=True)]
        self.views = [memoryview(m) for m in self.maps]

    def close(self) -> None:
        for view in self.views:
            view.release()
        for mapping in self.maps:
            mapping.close()
        for fd, path in zip(self.fds, self.paths, strict=True):
            os.close(fd)
            os.unlink(path)


def jobs_for(sizes: list[int], chunk: int) -> list[Job]:
    return [(i, lo, min(size, lo + chunk)) for i, size in enumerate(sizes) for lo in range(0, size, chunk)]


def run_jobs(jobs: list[Job], threads: int, work: Callable[[Job], int]) -> dict[Job, int]:
    """Run ``work`` over ``jobs`` on ``threads`` threads; returns each job's CRC-64."""
    pending: queue.SimpleQueue[Job] = queue.SimpleQueue()
    for job in jobs:
        pending.put(job)
    crcs: dict[Job, int] = {}

    def worker() -> None:
        while True:
            try:
                job = pending.get_nowait()
            except queue.Empty:
                return
            crcs[job] = work(job)

    run_threads(worker, threads)
    return crcs


_LOCAL = threading.local()


def via_bounce(client: OssClient, keys: list[str], files: Files, job: Job) -> int:
    index, lo, hi = job
    bounce = getattr(_LOCAL, "bounce", None)
    if bounce is None or len(bounce) < hi - lo:
        bounce = _LOCAL.bounce = bytearray(hi - lo)
    with memoryview(bounce)[: hi - lo] as view:
        crc = client.get_into(BUCKET, keys[index], lo, hi, view)
        done = 0
        while done < len(view):
            done += os.pwrite(files.fds[index], view[done:], lo + done)
    return crc


def via_mapping(client: OssClient, keys: list[str], files: Files, job: Job, populate: bool) -> int:
    index, lo, hi = job
    if populate:
        # madvise needs a page-aligned start; chunks are multiples of the page size here.
        files.maps[index].madvise(MADV_POPULATE_WRITE, lo, hi - lo)
    return client.get_into(BUCKET, keys[index], lo, hi, files.views[index][lo:hi])


def via_splice(server: LocalOss, keys: list[str], files: Files, job: Job) -> int:
    index, lo, hi = job
    conn: http.client.HTTPConnection | None = getattr(_LOCAL, "conn", None)
    if conn is None:
        # A blocking socket (no timeout): splice then waits for data instead of failing with EAGAIN.
        conn = _LOCAL.conn = http.client.HTTPConnection("127.0.0.1", server.port)
        read_end, write_end = os.pipe()
        _LOCAL.pipe = (read_end, write_end)
    read_end, write_end = _LOCAL.pipe
    headers = sign_v1(server.access_key_id, server.access_key_secret, BUCKET, keys[index])
    headers["Range"] = f"bytes={lo}-{hi - 1}"
    conn.request("GET", f"/{BUCKET}/{keys[index]}", headers=headers)
    resp = conn.getresponse()
    assert resp.status == 206, resp.status
    pos = lo
    ahead = resp.fp.peek()  # body bytes http.client already buffered after the headers
    if ahead:
        got = resp.readinto(files.views[index][pos : pos + len(ahead)])
        pos += got
    fd = resp.fileno()
    out = files.fds[index]
    while pos < hi:
        moved = os.splice(fd, write_end, min(hi - pos, 1 << 20))
        assert moved, "short body"
        while moved:
            wrote = os.splice(read_end, out, moved, offset_dst=pos)
            moved -= wrote
            pos += wrote
    resp.length = 0
    resp.read()
    return crc64(files.views[index][lo:hi])


def run(
    name: str, server: LocalOss, keys: list[str], sizes: list[int], args: argparse.Namespace
) -> tuple[float, float, int, Callable[[], None]]:
    jobs = jobs_for(sizes, args.chunk_mib * MIB)
    random.Random(len(jobs)).shuffle(jobs)  # many threads, many files: like the prefetcher's order
    files = Files(sizes, name[:3]) if name not in (BARE,) else None
    touched: list[bytearray] = []
    if name == BARE:
        touched = [bytearray(size) for size in sizes]
        for buf in touched:
            buf[::4096] = b"\x01" * len(range(0, len(buf), 4096))
    config = load_config(None, read_timeout_s=30.0)
    client = OssClient(
        parse_endpoint(server.endpoint),
        StaticCredentialProvider(Credentials(server.access_key_id, server.access_key_secret)),
        config,
    )
    source = bytearray(os.urandom(args.chunk_mib * MIB))
    before = resource.getrusage(resource.RUSAGE_SELF)
    began = time.perf_counter()
    if name == BOUNCE:
        assert files is not None
        crcs = run_jobs(jobs, args.connections, lambda job: via_bounce(client, keys, files, job))
    elif name in (MAPPING, POPULATE):
        assert files is not None
        crcs = run_jobs(
            jobs, args.connections, lambda job: via_mapping(client, keys, files, job, name == POPULATE)
        )
    elif name == FALLOCATE:
        assert files is not None
        for fd, size in zip(files.fds, sizes, strict=True):
            os.posix_fallocate(fd, 0, size)
        crcs = run_jobs(jobs, args.connections, lambda job: via_mapping(client, keys, files, job, False))
    elif name == SPLICE:
        assert files is not None

        def spliced(job: Job) -> int:
            return via_splice(server, keys, files, job)

        crcs = run_jobs(jobs, args.connections, spliced)
    elif name == BARE:
        views = [memoryview(buf) for buf in touched]
        crcs = run_jobs(
            jobs,
            args.connections,
            lambda job: client.get_into(BUCKET, keys[job[0]], job[1], job[2], views[job[0]][job[1] : job[2]]),
        )
    else:
        assert files is not None
        view = memoryview(source)

        def store(job: Job) -> int:
            index, lo, hi = job
            os.pwrite(files.fds[index], view[: hi - lo], lo)
            return 0

        crcs = run_jobs(jobs, args.connections, store)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_SELF)
    client.close()
    if name != STORE:
        # Outside the clock: every byte is the object's (chunk CRCs combined, against the server's).
        for index, size in enumerate(sizes):
            total = 0
            for lo in range(0, size, args.chunk_mib * MIB):
                hi = min(size, lo + args.chunk_mib * MIB)
                total = crc64_combine(total, crcs[(index, lo, hi)], hi - lo)
            assert total == args.crcs[index], f"{name}: file {index} CRC differs"
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    def finish() -> None:
        if files is not None:
            files.close()
        touched.clear()

    return wall, cpu, after.ru_minflt - before.ru_minflt, finish


@contextlib.contextmanager
def localoss(scratch: Path) -> Iterator[LocalOss]:
    server = start_localoss(scratch / "root")
    try:
        yield server
    finally:
        server.proc.terminate()
        server.proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="total bytes of the objects (MiB)")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    chosen = [name for name in CONTENDERS if name in args.contenders.split(",")]
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="store-body-"))
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in chosen}
    try:
        with localoss(scratch) as server:
            rng = np.random.default_rng(16)
            each = args.size_mib * MIB // args.files
            keys = [f"model/part-{index}.bin" for index in range(args.files)]
            args.crcs = []
            for key in keys:
                data = rng.bytes(each)
                server.put_file(BUCKET, key, data)
                args.crcs.append(crc64(data))
            sizes = [each] * args.files
            run(BARE, server, keys, sizes, args)[3]()  # warm-up: the server indexes and caches the files
            order = random.Random(2)
            for _ in range(args.reps):
                names = list(chosen)
                order.shuffle(names)
                for name in names:
                    gc.collect()
                    wall, cpu, faults, finish = run(name, server, keys, sizes, args)
                    finish()
                    samples[name].append((wall, cpu, faults))
                    print(f"  {name}: {wall:.3f} s, cpu {cpu:.2f} s, {faults} minor faults", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load_after = os.getloadavg()
    total = args.size_mib * MIB
    rows = []
    per_gib = {name: median([s[1] for s in samples[name]]) / (total / GIB) for name in chosen}
    for name in chosen:
        walls = [s[0] for s in samples[name]]
        rows.append(
            [
                name,
                f"{median(walls):.3f}",
                f"{min(walls):.3f}-{max(walls):.3f}",
                f"{total / median(walls) / 1e9:.2f}",
                f"{per_gib[name]:.2f}",
                f"{median([float(s[2]) for s in samples[name]]):.0f}",
            ]
        )
    table = markdown_table(
        ["contender", "median s", "min-max s", "GB/s", "CPU-s per GiB", "minor faults"], rows
    )
    stored = [name for name in chosen if name not in (BARE, STORE)]
    notes = ""
    if stored:
        best = min(stored, key=per_gib.__getitem__)
        notes = f"- Cheapest per GiB: **{best}** ({per_gib[best]:.2f} CPU-s/GiB)"
        if BARE in per_gib and STORE in per_gib:
            floor = per_gib[BARE] + per_gib[STORE]
            notes += f"; bare receive + store alone: {floor:.2f} ({per_gib[best] / floor:.2f}x)"
        notes += ".\n"
    body = (
        f"- {args.files} objects, {args.size_mib} MiB in total, {args.connections} connections, "
        f"{args.chunk_mib} MiB ranged GETs in a shuffled order, {args.reps} repetitions (contenders shuffled "
        "in each), medians; CPU of this process only (the server is a subprocess).\n"
        f"- Load average (1/5/15) before {'/'.join(f'{v:.2f}' for v in load_before)}, after "
        f"{'/'.join(f'{v:.2f}' for v in load_after)}.\n{notes}\n{table}\n"
    )
    print(body)
    if not args.no_write:
        write_section("store_body", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
