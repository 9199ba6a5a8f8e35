"""How fast does a reader in another process notice that the owner published a chunk?

A child process waits and the parent wakes it, N times per method; the child records, per wake, the time
from just before the parent's publish to just after its own wait returned (``CLOCK_MONOTONIC`` is the
same clock in both processes). Between wakes the parent leaves the child asleep for ``--gap-ms``, as a
reader waiting for a chunk would be. Methods:

- ``futex``: the Cython kernel: the child in ``futex_wait`` on the shared generation word, the parent bumps
  it and ``futex_wake``s (what ``state_table.publish`` does).
- ``poll``: the pure-Python twin: the child polls the word with its growing sleep (50 us to 2 ms).
- ``pipe``: the baseline: the child blocked in ``os.read`` on a pipe, the parent writes one byte.

Reported per method: median and p99 latency (the median over repetitions of each repetition's figure),
the child's CPU time per wait, and the ratio of the median to the pipe's, measured in the same run.

Usage: python benchmarks/futex_wakeup.py [--wakes 300] [--repetitions 3] [--gap-ms 5]
"""

from __future__ import annotations

import argparse
import importlib
import mmap
import os
import struct
import subprocess
import sys
import time
import uuid
from types import ModuleType

import posix_ipc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _results import markdown_table, median, write_section

from ossmodelconnector._fast import _reference

METHODS = ["futex", "poll", "pipe"]
GENERATION = 0  # the word the owner bumps
READY = 4  # the child's "I am about to wait for wake i" counter
T0 = 8  # u64: monotonic_ns just before the parent's publish
CPU = 16  # u64: the child's CPU time over all waits, ns
RESULTS = 64  # u64 per wake: latency in ns


def cython_kernel() -> ModuleType:
    return importlib.import_module("ossmodelconnector._fast.futex")


def child(method: str, name: str, wakes: int, read_fd: int) -> None:
    kernel = _reference if method == "poll" else cython_kernel()
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
    buffer = mmap.mmap(fd, os.fstat(fd).st_size)
    os.close(fd)
    cpu_start = time.process_time_ns()
    for index in range(wakes):
        seen = kernel.atomic_load_u32(buffer, GENERATION)
        cython_kernel().atomic_store_u32(buffer, READY, index + 1)
        cython_kernel().futex_wake(buffer, READY)
        if method == "pipe":
            os.read(read_fd, 1)
        else:
            while not kernel.futex_wait(buffer, GENERATION, seen, 10.0):
                pass
        woke = time.monotonic_ns()
        struct.pack_into("<Q", buffer, RESULTS + 8 * index, woke - struct.unpack_from("<Q", buffer, T0)[0])
    struct.pack_into("<Q", buffer, CPU, time.process_time_ns() - cpu_start)
    buffer.close()


def run(method: str, wakes: int, gap_s: float) -> tuple[list[float], float]:
    """One repetition: per-wake latencies in microseconds, and the child's CPU microseconds per wait."""
    kernel = cython_kernel()
    name = f"ossmc-bench-{uuid.uuid4().hex[:12]}"
    size = -(-(RESULTS + 8 * wakes) // 4096) * 4096
    memory = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=0o600, size=size)
    buffer = mmap.mmap(memory.fd, size)
    memory.close_fd()
    read_fd, write_fd = os.pipe()
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", method, name, str(wakes), str(read_fd)], pass_fds=(read_fd,)
    )
    try:
        for index in range(wakes):
            while kernel.atomic_load_u32(buffer, READY) != index + 1:
                kernel.futex_wait(buffer, READY, kernel.atomic_load_u32(buffer, READY), 10.0)
            time.sleep(gap_s)  # the child is asleep in its wait by now
            struct.pack_into("<Q", buffer, T0, time.monotonic_ns())
            if method == "pipe":
                os.write(write_fd, b"x")
            else:
                kernel.atomic_increment_u32(buffer, GENERATION)
                kernel.futex_wake(buffer, GENERATION)  # the poll child never sleeps in the kernel: a no-op
        if process.wait(60) != 0:
            raise SystemExit(f"the {method} child failed")
        latencies = [struct.unpack_from("<Q", buffer, RESULTS + 8 * i)[0] / 1000 for i in range(wakes)]
        cpu_per_wait = struct.unpack_from("<Q", buffer, CPU)[0] / 1000 / wakes
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(read_fd)
        os.close(write_fd)
        buffer.close()
        memory.unlink()
    return latencies, cpu_per_wait


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wakes", type=int, default=300, help="wakes per method per repetition")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--gap-ms", type=float, default=5.0, help="how long the child sleeps before a wake")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, name, wakes, read_fd = args.child
        child(method, name, int(wakes), int(read_fd))
        return
    medians: dict[str, list[float]] = {method: [] for method in METHODS}
    p99s: dict[str, list[float]] = {method: [] for method in METHODS}
    cpus: dict[str, list[float]] = {method: [] for method in METHODS}
    for repetition in range(args.repetitions):
        for method in METHODS:  # interleaved, so that drifting load hits every method alike
            latencies, cpu = run(method, args.wakes, args.gap_ms / 1000)
            medians[method].append(median(latencies))
            p99s[method].append(percentile(latencies, 0.99))
            cpus[method].append(cpu)
            print(
                f"repetition {repetition + 1} {method:5s}: median {medians[method][-1]:8.1f} us, "
                f"p99 {p99s[method][-1]:8.1f} us, child CPU {cpu:6.1f} us/wait",
                flush=True,
            )
    pipe = median(medians["pipe"])
    rows = [
        [
            method,
            f"{median(medians[method]):.1f}",
            f"{median(p99s[method]):.1f}",
            f"{median(cpus[method]):.1f}",
            f"{median(medians[method]) / pipe:.2f}",
        ]
        for method in METHODS
    ]
    header = ["method", "median wake-up (us)", "p99 (us)", "child CPU per wait (us)", "median / pipe"]
    table = markdown_table(header, rows)
    print()
    print(table)
    write_section(
        "futex_wakeup",
        f"Wake-up latency parent -> child process: {args.wakes} wakes x {args.repetitions} repetitions per "
        f"method, the child asleep {args.gap_ms:g} ms before each wake; median over repetitions.\n\n"
        f"{table}\n\n"
        "`futex`: the Cython kernel (shared futex on the state table's generation word); `poll`: the "
        "pure-Python twin (sleeps of 50 us growing to 2 ms); `pipe`: a blocking `os.read` baseline.",
    )


if __name__ == "__main__":
    main()
