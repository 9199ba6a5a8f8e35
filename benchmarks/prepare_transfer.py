"""How close does ``prepare_directory(wait=True)`` come to the bare client on the loopback, and where does
its CPU go?

Question (issue 6): unthrottled, the connector's transfer must run at >= 70% of the bare ``http.client`` +
``readinto`` figure measured in the same run. ``load_model.py`` measures that inside a whole model load;
this script isolates the transfer, so that a change in the data path shows in a few seconds:

- ``connector wait=True``: ``OssModelConnector.prepare_directory(wait=True)`` of a prefix with
  ``--files`` large files (random bytes) and a ``config.json``, into fresh ``/dev/shm`` segments; each
  worker receives a chunk into a buffer of its own and stores it with ``pwrite``;
- ``connector wait=True with the http.client body (before issue 16)``: the same with ``bodyReceiver``
  "python": each body read through ``http.client``'s ``readinto`` (the receive kernel's A/B);
- ``connector wait=True via the mapping (before)``: the same with chunks received straight
  into the segment's ``MAP_SHARED`` mapping, as before (``SharedBacking.file_fetcher`` disabled), to show
  the change in the same run;
- ``bare (touched buffer)``: the floor load_model.py uses, ``http.client`` + ``readinto`` on the same
  number of keep-alive connections into buffers whose pages were faulted in before the clock;
- ``bare (fresh buffer)``: the same into fresh, untouched anonymous memory (what any loader that does not
  pre-allocate pays: a page fault and a zeroed page per 4 KiB);
- ``store only``: no network, just ``pwrite`` of the same bytes into fresh /dev/shm files from the same
  number of threads: the part of the connector's work that the touched-buffer floor never pays (the
  kernel allocates and zeroes every page of the cache, and copies the bytes once more).

Each repetition runs every contender once in a shuffled order, in this process (the server is a
``localoss`` subprocess on the same cores). Reported per contender: median wall seconds, GB/s, ratio to
the bare touched-buffer figure of the same repetition (median over repetitions), CPU seconds of this
process (user + system) and minor page faults. Freeing the memory (closing the connector, dropping the
buffers) is outside the clock for every contender. Run: ``python benchmarks/prepare_transfer.py [--size-mib
1024] [--reps 5] [--no-write]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import queue
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bare import fetch, run_threads, split
from _results import markdown_table, median, write_section
from localoss_harness import LocalOss, start_localoss

from ossmodelconnector import OssModelConnector
from ossmodelconnector.cache.shared_backing import SharedBacking
from ossmodelconnector.oss.credentials import Credentials

MIB = 1 << 20
BUCKET = "bench-transfer"
PREFIX = "model/"
CONNECTOR = "connector wait=True"
THROUGH_MAPPING = "connector wait=True via the mapping (before)"
PYTHON_BODY = "connector wait=True with the http.client body (before issue 16)"
BARE = "bare (touched buffer)"
FRESH = "bare (fresh buffer)"
STORE = "store only (pwrite into fresh /dev/shm files; no network)"
CONTENDERS = (CONNECTOR, PYTHON_BODY, THROUGH_MAPPING, BARE, FRESH, STORE)

Finish = Callable[[], None]
Sample = tuple[float, float, int]


def make_files(server: LocalOss, size: int, files: int) -> dict[str, int]:
    """Random large files of ``size`` bytes in total plus a small ``config.json``; returns key -> size."""
    rng = np.random.default_rng(6)
    sizes = {}
    each = size // files
    for index in range(files):
        key = f"{PREFIX}model-{index + 1:05d}-of-{files:05d}.safetensors"
        server.put_file(BUCKET, key, rng.bytes(each))
        sizes[key] = each
    server.put_file(BUCKET, PREFIX + "config.json", b'{"model_type": "none"}')
    return sizes


def run_connector(
    server: LocalOss, sizes: dict[str, int], args: argparse.Namespace, work: Path, receiver: str = "kernel"
) -> Finish:
    connector = OssModelConnector(
        server.endpoint,
        cred_provider=Credentials(server.access_key_id, server.access_key_secret),
        prefetch_vcpus=1,
        prefetch_workers=args.connections,
        chunk_size_mb=args.chunk_mib,
        body_receiver=receiver,
    )
    connector.prepare_directory(f"oss://{BUCKET}/{PREFIX}", str(work / "model"), progress=False, wait=True)

    def finish() -> None:
        connector.close()
        shutil.rmtree(work / "model", ignore_errors=True)

    return finish


@contextlib.contextmanager
def through_mapping(enabled: bool) -> Iterator[None]:
    """Store chunks the way the connector did before ``pwrite``: straight into the segment's mapping."""
    if not enabled:
        yield
        return
    real = SharedBacking.file_fetcher
    SharedBacking.file_fetcher = lambda self, fetch_into: fetch_into  # type: ignore[method-assign]
    try:
        yield
    finally:
        SharedBacking.file_fetcher = real  # type: ignore[method-assign]


def touched_buffers(sizes: dict[str, int]) -> dict[str, bytearray]:
    """One buffer per object with every page faulted in (outside the clock, as load_model.py does)."""
    buffers = {key: bytearray(size) for key, size in sizes.items()}
    for buf in buffers.values():
        buf[::4096] = b"\x01" * len(range(0, len(buf), 4096))
    return buffers


def run_bare(server: LocalOss, buffers: dict[str, bytearray], args: argparse.Namespace) -> Finish:
    jobs = [job for key, buf in buffers.items() for job in split(key, len(buf), memoryview(buf))]
    fetch(server.port, (server.access_key_id, server.access_key_secret), BUCKET, jobs, args.connections)
    return buffers.clear


def run_store(sizes: dict[str, int], args: argparse.Namespace) -> Finish:
    """What storing the bytes alone costs: ``pwrite`` of 8 MiB pieces into fresh /dev/shm files, in file
    order, from ``--connections`` threads (the connector's writes without the network)."""
    source = bytearray(os.urandom(args.chunk_mib * MIB))
    paths = [f"/dev/shm/prepare-transfer-{os.getpid()}-{index}" for index in range(len(sizes))]
    fds = [os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600) for path in paths]
    jobs = [
        (fd, lo, min(size, lo + len(source)))
        for fd, size in zip(fds, sizes.values(), strict=True)
        for lo in range(0, size, len(source))
    ]
    work: queue.SimpleQueue[tuple[int, int, int]] = queue.SimpleQueue()
    for job in jobs:
        work.put(job)

    def worker() -> None:
        view = memoryview(source)
        while True:
            try:
                fd, lo, hi = work.get_nowait()
            except queue.Empty:
                return
            os.pwrite(fd, view[: hi - lo], lo)

    run_threads(worker, args.connections)

    def finish() -> None:
        for fd, path in zip(fds, paths, strict=True):
            os.close(fd)
            os.unlink(path)

    return finish


def timed(name: str, server: LocalOss, sizes: dict[str, int], args: argparse.Namespace, work: Path) -> Sample:
    """(wall s, CPU s, minor faults) from the start to the last byte local; freeing is outside the clock."""
    buffers = touched_buffers(sizes) if name == BARE else {}
    before = resource.getrusage(resource.RUSAGE_SELF)
    began = time.perf_counter()
    if name in (CONNECTOR, THROUGH_MAPPING, PYTHON_BODY):
        with through_mapping(name == THROUGH_MAPPING):
            finish = run_connector(server, sizes, args, work, "python" if name == PYTHON_BODY else "kernel")
    elif name == STORE:
        finish = run_store(sizes, args)
    else:
        finish = run_bare(server, buffers or {key: bytearray(size) for key, size in sizes.items()}, args)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_SELF)
    finish()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, after.ru_minflt - before.ru_minflt


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="total bytes of the large files (MiB)")
    parser.add_argument("--files", type=int, default=4, help="large files (default 4)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    chosen = [name for name in CONTENDERS if name in args.contenders.split(",")]
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="prepare-transfer-"))
    server = start_localoss(scratch / "root")
    results: dict[str, list[Sample]] = {name: [] for name in chosen}
    ratios: dict[str, list[float]] = {name: [] for name in chosen}
    try:
        sizes = make_files(server, args.size_mib * MIB, args.files)
        total = sum(sizes.values())
        order = random.Random(1)
        timed(BARE, server, sizes, args, scratch)  # the server indexes (CRC-64) and caches the files
        for _ in range(args.reps):
            names = list(chosen)
            order.shuffle(names)
            rep: dict[str, float] = {}
            for name in names:
                gc.collect()
                result = timed(name, server, sizes, args, scratch)
                results[name].append(result)
                rep[name] = result[0]
                print(
                    f"  {name}: {result[0]:.3f} s, {total / result[0] / 1e9:.2f} GB/s, "
                    f"cpu {result[1]:.2f} s, {result[2]} minor faults",
                    flush=True,
                )
            if BARE in rep:
                for name in chosen:
                    ratios[name].append(rep[BARE] / rep[name])
    finally:
        server.proc.terminate()
        server.proc.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    load_after = os.getloadavg()
    rows = []
    for name in chosen:
        walls = [r[0] for r in results[name]]
        rows.append(
            [
                name,
                f"{median(walls):.3f}",
                f"{min(walls):.3f}-{max(walls):.3f}",
                f"{total / median(walls) / 1e9:.2f}",
                f"{median(ratios[name]):.2f}x" if ratios[name] else "-",
                f"{median([r[1] for r in results[name]]):.2f}",
                f"{median([float(r[2]) for r in results[name]]):.0f}",
            ]
        )
    header = ["contender", "median s", "min-max s", "GB/s", "rate vs bare (touched)", "CPU s", "minor faults"]
    table = markdown_table(header, rows)
    notes = ""
    if CONNECTOR in chosen and BARE in chosen and STORE in chosen:
        cpu = {name: median([r[1] for r in results[name]]) for name in (CONNECTOR, BARE, STORE)}
        rest = cpu[CONNECTOR] - cpu[BARE] - cpu[STORE]
        notes = (
            f"- Where the connector's CPU goes beyond the floor's: storing the bytes alone takes "
            f"{cpu[STORE]:.2f} CPU-s ({cpu[STORE] / cpu[BARE]:.1f}x the bare client's whole transfer, "
            f"{cpu[BARE]:.2f}); the connector's {cpu[CONNECTOR]:.2f} CPU-s are those two "
            + (f"plus {rest:.2f} s (CRC-64, Python, thread hand-offs)" if rest > 0.05 else "within the noise")
            + ". The touched-buffer floor pays no page allocation and no second copy; a loader that keeps "
            "the bytes in memory it has not touched before cannot avoid the first.\n"
        )
    body = (
        f"- {args.files} files, {total / MIB:.0f} MiB in total, {args.connections} connections, "
        f"{args.chunk_mib} MiB chunks, {args.reps} repetitions in a shuffled order, median and min-max; "
        "`rate vs bare` is the median over repetitions of (bare touched-buffer seconds / contender "
        "seconds).\n"
        f"- Load average (1/5/15) before {'/'.join(f'{v:.2f}' for v in load_before)}, after "
        f"{'/'.join(f'{v:.2f}' for v in load_after)}.\n{notes}\n{table}\n"
    )
    print(body)
    if not args.no_write:
        write_section("prepare_transfer", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
