"""What the ``os.stat`` hook (``hooks/file_times.py``) costs per call, and what it saves a reader from.

Part 1, the cost. One process, hooks installed, a data file registered with its Last-Modified (as
``prepare_directory`` registers every large file). States are switched between short batches so that the
machine's noise hits them alike; each batch is timed in this thread's CPU time and each state's median
over the batches is reported with its ratio to the baseline measured in the same run:

- ``os.stat`` / ``os.lstat`` / ``os.fstat`` of an unrelated file: the original (baseline), the hooked
  one with nothing registered, and the hooked one with one file registered (one dictionary lookup);
- ``os.stat`` of the registered file: the original, the hooked one when the kernel's time already is
  Last-Modified (the usual case: a lookup, no rewrite), and when it is not (in the instant after a write:
  the result is rebuilt with Last-Modified);
- ``os.path.getmtime`` of an unrelated file: the original and hooked.

Part 2, the window. A real ``prepare_directory(wait=True)`` over ``localoss`` (loopback, no bandwidth
cap: the most writes per second this machine makes) while a thread in the same process samples the
kernel's time of the large files with the original ``os.stat`` (what a process *without* the hooks
sees) and with the hooked one: the fraction of samples that showed a time other than Last-Modified.

    python benchmarks/stat_hook_cost.py [--batches 41] [--number 5000] [--size-mib 512]
"""

from __future__ import annotations

import argparse
import json
import os
import posix
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import markdown_table, median, write_section
from localoss_harness import start_localoss

from ossmodelconnector import OssModelConnector, hooks
from ossmodelconnector.cache import registry
from ossmodelconnector.oss.credentials import Credentials

LAST_MODIFIED = 1_620_284_889  # 2021-05-06T07:08:09Z
LAST_MODIFIED_NS = LAST_MODIFIED * 1_000_000_000
MIB = 1 << 20


class _ReadyFile:
    size = 1

    def wait(self, start: int, end: int, timeout_s: float | None = None) -> None:
        pass

    def wait_all(self, timeout_s: float | None = None) -> None:
        pass


def _batch_ns(function: Callable[[], object], number: int) -> float:
    # This thread's CPU time (user + system), not wall time: waiting for a core is noise, not cost.
    start = time.thread_time_ns()
    for _ in range(number):
        function()
    return (time.thread_time_ns() - start) / number


def cost(batches: int, number: int) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="stat-bench-"))
    plain = str(workdir / "plain.bin")
    Path(plain).write_bytes(b"x" * 4096)
    segment = workdir / "data" / "segment"
    segment.parent.mkdir()
    segment.write_bytes(b"x")
    entry = workdir / "model" / "weights.safetensors"
    entry.parent.mkdir()
    entry.symlink_to(segment)
    fd = os.open(plain, os.O_RDONLY)

    hooks.install()
    hooked_stat, hooked_lstat, hooked_fstat = os.stat, os.lstat, os.fstat

    def registered(present: bool, function: Callable[[], object]) -> Callable[[], float]:
        def run() -> float:
            if present:
                registry.register_file(str(entry), _ReadyFile(), mtime_ns=LAST_MODIFIED_NS)
            else:
                registry.unregister_file(str(entry))
            return _batch_ns(function, number)

        return run

    def with_kernel_time(moved: bool) -> Callable[[], float]:
        def run() -> float:
            registry.register_file(str(entry), _ReadyFile(), mtime_ns=LAST_MODIFIED_NS)
            os.utime(segment, ns=(LAST_MODIFIED_NS, LAST_MODIFIED_NS + (1 if moved else 0)))
            return _batch_ns(lambda: hooked_stat(entry), number)

        return run

    def original(function: Callable[[], object]) -> Callable[[], float]:
        return lambda: _batch_ns(function, number)

    groups: dict[str, dict[str, Callable[[], float]]] = {
        "`os.stat` (unrelated file)": {
            "baseline": original(lambda: posix.stat(plain)),
            "hooked, nothing registered": registered(False, lambda: hooked_stat(plain)),
            "hooked, one file registered": registered(True, lambda: hooked_stat(plain)),
        },
        "`os.lstat` (unrelated file)": {
            "baseline": original(lambda: posix.lstat(plain)),
            "hooked, one file registered": registered(True, lambda: hooked_lstat(plain)),
        },
        "`os.fstat` (unrelated file)": {
            "baseline": original(lambda: posix.fstat(fd)),
            "hooked, one file registered": registered(True, lambda: hooked_fstat(fd)),
        },
        "`os.path.getmtime` (unrelated file)": {
            "baseline": original(lambda: posix.stat(plain).st_mtime),
            "hooked, one file registered": registered(True, lambda: os.path.getmtime(plain)),
        },
        "`os.stat` (the registered file)": {
            "baseline": original(lambda: posix.stat(entry)),
            "hooked, kernel time = Last-Modified": with_kernel_time(False),
            "hooked, kernel time moved (rewritten)": with_kernel_time(True),
        },
    }
    samples: dict[str, dict[str, list[float]]] = {
        name: {state: [] for state in states} for name, states in groups.items()
    }
    try:
        for batch in range(batches):
            for name, states in groups.items():
                order = list(states.items())
                if batch % 2:
                    order.reverse()
                for state, run in order:
                    samples[name][state].append(run())
    finally:
        registry.unregister_file(str(entry))
        hooks.uninstall()
        os.close(fd)
        shutil.rmtree(workdir)

    rows = []
    for name, by_state in samples.items():
        base = median(by_state["baseline"])
        for state, values in by_state.items():
            value = median(values)
            extra = "" if state == "baseline" else f" ({value / base:.2f}x, {value - base:+.0f} ns)"
            rows.append([name, state, f"{value:.0f}{extra}"])
    table = markdown_table(["call", "state", "ns per call (vs baseline)"], rows)
    print(table)
    return (
        f"{table}\n\nThread CPU time per call, median over {batches} interleaved batches of {number} "
        "calls. The hook is installed only while a directory is prepared in the process; the import "
        "system calls `posix.stat` itself and never pays for it."
    )


def window(size_mib: int) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="stat-window-"))
    server = start_localoss(workdir / "oss")
    names = [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)]
    try:
        for name in names:
            path = server.put_file("bench", f"m/{name}", random.Random(name).randbytes(size_mib * MIB // 4))
            os.utime(path, (LAST_MODIFIED, LAST_MODIFIED))
        config = workdir / "config.json"
        config.write_text(json.dumps({"chunkSizeMB": 8}))
        creds = Credentials(server.access_key_id, server.access_key_secret)
        model_dir = workdir / "model"
        counts = {"unhooked": [0, 0], "hooked": [0, 0]}  # samples, samples with another time
        with OssModelConnector(server.endpoint, cred_provider=creds, config_path=str(config)) as connector:
            stop = threading.Event()
            prepared = connector.prepare_directory("oss://bench/m/", model_dir)
            paths = [str(model_dir / name) for name in names]

            def sample() -> None:
                while not stop.is_set():
                    for path in paths:
                        for kind, stat in (("unhooked", posix.stat), ("hooked", os.stat)):
                            counts[kind][0] += 1
                            counts[kind][1] += stat(path).st_mtime_ns != LAST_MODIFIED_NS

            sampler = threading.Thread(target=sample, daemon=True)
            started = time.monotonic()
            sampler.start()
            prepared.wait()
            seconds = time.monotonic() - started
            stop.set()
            sampler.join()
    finally:
        server.stop()
        shutil.rmtree(workdir)
    rows = [
        [kind, f"{total}", f"{moved}", f"{100 * moved / max(total, 1):.2f}%"]
        for kind, (total, moved) in counts.items()
    ]
    table = markdown_table(["reader", "stat samples", "another time seen", "fraction"], rows)
    print(table)
    return (
        f"{table}\n\n`prepare_directory(wait=True)` of {size_mib} MiB in 4 files (chunks of 8 MiB) from "
        f"localoss on loopback, {seconds:.1f} s, no bandwidth cap (the most writes per second), while a "
        "thread of the same process stats the four entries in a loop with the original `os.stat` (what "
        "a process without the hooks sees: the kernel's time, moved by each chunk's `pwrite` until the "
        "`futimens` right after it) and with the hooked one."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batches", type=int, default=41)
    parser.add_argument("--number", type=int, default=5000)
    parser.add_argument("--size-mib", type=int, default=512)
    args = parser.parse_args()
    body = cost(args.batches, args.number)
    body += "\n\n" + window(args.size_mib)
    write_section("stat_hook_cost", body)


if __name__ == "__main__":
    main()
