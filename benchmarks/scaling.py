"""Does the data path scale with cores? CPU per GiB, GIL hold, Python calls per GiB, a 32-vCPU projection.

Question (issue 16): 2 cores cannot show 100 Gbit/s, so this script measures what decides the rate on a
big node, for the receive kernel (``bodyReceiver`` "kernel", the default) and for the ``http.client``
path it replaced (``bodyReceiver`` "python"), in one run against a ``localoss`` subprocess:

1. **CPU-seconds per GiB** (this process, user + system) of ``prepare_directory(wait=True)`` of
   ``--size-mib`` in ``--files`` files on the loopback, against the same run's baselines: ``bare
   receive`` (``http.client`` + ``readinto`` into buffers touched before the clock, no CRC, nothing
   stored) and ``store only`` (``pwrite`` of the same bytes into fresh /dev/shm files, no network).
   Target: connector <= 1.1 x (bare + store).
2. **GIL hold**: the rate of the same ``prepare_directory(wait=True)`` over a link capped at
   ``--cap-mibps`` (localoss ``--bandwidth-mibps``), with a pure-Python thread spinning in this process
   (holding the GIL as a framework does) over the rate without it. On 2 cores the cap leaves the spinner
   its own core, so the ratio measures waiting for the GIL, not CPU sharing. Target >= 0.85. The same
   for the client alone (``OssClient.get_into`` of every chunk into touched buffers from as many
   threads: no scheduler, no shared cache, no store), to tell the receive path from the rest.
3. **Python-level calls per GiB** on the data path: ``sys.setprofile``/``threading.setprofile`` count
   every Python call and every call of a C function on the prefetch workers' threads during one
   ``prepare_directory`` on the loopback and one on the capped link; the socket
   reads among them (``socket.recv_into``, or the kernel's ``recv_into``) are where a worker gives the GIL
   back and must take it again.
4. **Projection to a 32-vCPU node**: the GIL-held CPU per GiB (process CPU minus the CPU spent inside
   the calls that release the GIL: the receive kernel or the socket reads, and the chunk-store kernel)
   bounds the rate at 1 / held GiB/s however many cores there are; the whole CPU per GiB bounds it at
   32 / cpu GiB/s. The projection is the smaller of the two, shown with its arithmetic next to the
   reference product's 15-20 GB/s claim.

Each measurement alternates the two paths in every repetition (medians). Run: ``python
benchmarks/scaling.py [--size-mib 1024] [--reps 3] [--cap-mibps 400] [--no-write]``.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import queue
import resource
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bare import run_threads
from _results import markdown_table, median, write_section
from localoss_harness import LocalOss, start_localoss
from prepare_transfer import BUCKET, PREFIX, make_files, run_bare, run_store, touched_buffers

import ossmodelconnector.cache.shared_backing as backing_module
import ossmodelconnector.oss.body as body_module
from ossmodelconnector import OssModelConnector
from ossmodelconnector.config import load_config
from ossmodelconnector.oss.client import OssClient
from ossmodelconnector.oss.credentials import Credentials, StaticCredentialProvider
from ossmodelconnector.oss.uri import parse_endpoint

MIB = 1 << 20
GIB = 1 << 30
PATHS = ("kernel", "python")
CLIENT_PATHS = ("kernel, client only", "python, client only")
NODE_VCPUS = 32
REFERENCE_CLAIM = "15-20 GB/s"
WORKER_THREADS = "ossmodelconnector-prefetch"


def prepare(server: LocalOss, receiver: str, args: argparse.Namespace, work: Path) -> Callable[[], None]:
    """``prepare_directory(wait=True)`` of the prefix; returns what frees it (outside any clock)."""
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


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_cpu_seconds(server: LocalOss) -> float:
    """User + system CPU of the localoss process so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class NogilMeter:
    """CPU seconds spent inside the calls of the data path that release the GIL, summed over threads.

    Wraps the receive kernel as ``oss/body.py`` calls it, ``socket.socket.recv_into`` (the python
    path's reads: ``SocketIO.readinto`` calls it) and the chunk-store kernel as ``cache/shared_backing.py``
    calls it (open, write lock, ``pwrite``, times, close of one chunk), timing each call with
    ``time.thread_time`` (this thread's CPU).
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    def _timed(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **kw: Any) -> Any:
            began = time.thread_time()
            try:
                return real(*a, **kw)
            finally:
                spent = time.thread_time() - began
                with self._lock:
                    self.seconds += spent

        return timed

    @contextmanager
    def installed(self) -> Iterator[None]:
        kernel, store = body_module.recv_into, backing_module.store_chunk
        body_module.recv_into = self._timed(kernel)  # type: ignore[assignment]
        backing_module.store_chunk = self._timed(store)  # type: ignore[assignment]
        real_sock_recv_into = socket.socket.recv_into

        timed_recv = self._timed(real_sock_recv_into)
        socket.socket.recv_into = timed_recv  # type: ignore[method-assign]
        try:
            yield
        finally:
            body_module.recv_into = kernel
            backing_module.store_chunk = store
            socket.socket.recv_into = real_sock_recv_into  # type: ignore[method-assign]


class CallCounter:
    """Counts Python calls and C calls (by name) on the prefetch workers' threads while installed.

    Only the workers (``ossmodelconnector-prefetch-*``): they carry the data path; listing, hooks and
    the caller's thread cost the same per directory whatever the body path.
    """

    def __init__(self) -> None:
        self.python_calls = 0
        self.c_calls: collections.Counter[str] = collections.Counter()

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event not in ("call", "c_call"):
            return
        if not threading.current_thread().name.startswith(WORKER_THREADS):
            return
        if event == "call":
            self.python_calls += 1
            return
        owner = getattr(arg, "__self__", None)
        module = getattr(arg, "__module__", None) or (type(owner).__name__ if owner is not None else "")
        self.c_calls[f"{module}.{getattr(arg, '__name__', '?')}"] += 1

    @contextmanager
    def installed(self) -> Iterator[None]:
        threading.setprofile(self._profile)
        try:
            yield
        finally:
            threading.setprofile(None)  # type: ignore[arg-type]


@contextmanager
def spinning(enabled: bool) -> Iterator[list[int]]:
    """A thread that runs pure Python (holding the GIL but for the switch interval) while enabled."""
    count = [0]
    if not enabled:
        yield count
        return
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            for _ in range(1000):
                n += 1
        count[0] = n

    thread = threading.Thread(target=spin, name="spinner", daemon=True)
    thread.start()
    try:
        yield count
    finally:
        stop.set()
        thread.join()


def localoss(scratch: Path, *extra: str) -> LocalOss:
    return start_localoss(scratch, *extra)


def stop(server: LocalOss) -> None:
    server.proc.terminate()
    server.proc.wait()


def measure_cpu(
    server: LocalOss, sizes: dict[str, int], args: argparse.Namespace, work: Path
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """CPU-seconds of each contender, ``--reps`` times, contenders alternated: this process's, and the
    server's during the same run (loopback TCP work is charged to whichever side is on the CPU)."""
    samples: dict[str, list[float]] = collections.defaultdict(list)
    served: dict[str, list[float]] = collections.defaultdict(list)
    contenders = [f"connector ({path})" for path in PATHS] + ["bare receive", "store only"]
    for rep in range(args.reps):
        order = contenders[rep % 2 :] + contenders[: rep % 2]
        for name in order:
            gc.collect()
            buffers = touched_buffers(sizes) if name == "bare receive" else {}
            before, server_before = cpu_seconds(), server_cpu_seconds(server)
            if name == "bare receive":
                finish = run_bare(server, buffers, args)
            elif name == "store only":
                finish = run_store(sizes, args)
            else:
                finish = prepare(server, name.split("(")[1].rstrip(")"), args, work)
            spent, server_spent = cpu_seconds() - before, server_cpu_seconds(server) - server_before
            finish()
            samples[name].append(spent)
            served[name].append(server_spent)
            print(f"  cpu: {name}: {spent:.2f} s (server {server_spent:.2f} s)", flush=True)
    return samples, served


def client_only(
    server: LocalOss, buffers: dict[str, bytearray], receiver: str, args: argparse.Namespace
) -> Callable[[], None]:
    """``OssClient.get_into`` of every chunk into touched buffers from ``--connections`` threads: the
    receive path alone, without the scheduler, the shared cache and the store."""
    client = OssClient(
        parse_endpoint(server.endpoint),
        StaticCredentialProvider(Credentials(server.access_key_id, server.access_key_secret)),
        load_config(None, body_receiver=receiver),
    )
    step = args.chunk_mib * MIB
    jobs = [
        (key, lo, min(len(buf), lo + step)) for key, buf in buffers.items() for lo in range(0, len(buf), step)
    ]
    pending: queue.SimpleQueue[tuple[str, int, int]] = queue.SimpleQueue()
    for job in jobs:
        pending.put(job)

    def worker() -> None:
        while True:
            try:
                key, lo, hi = pending.get_nowait()
            except queue.Empty:
                return
            client.get_into(BUCKET, key, lo, hi, memoryview(buffers[key])[lo:hi])

    run_threads(worker, args.connections)
    return client.close


def measure_gil(
    server: LocalOss, sizes: dict[str, int], args: argparse.Namespace, work: Path
) -> dict[tuple[str, bool], list[float]]:
    """Rates (bytes/s) of each path alone and with a spinning thread, on the capped server: the whole
    ``prepare_directory`` and the client alone."""
    total = sum(sizes.values())
    rates: dict[tuple[str, bool], list[float]] = collections.defaultdict(list)
    cases = [(path, spin) for path in PATHS + CLIENT_PATHS for spin in (False, True)]
    for rep in range(args.reps):
        for path, spin in cases[rep % 2 :] + cases[: rep % 2]:
            gc.collect()
            buffers = touched_buffers(sizes) if path in CLIENT_PATHS else {}
            with spinning(spin):
                began = time.perf_counter()
                if path in CLIENT_PATHS:
                    finish = client_only(server, buffers, path.split(",")[0], args)
                else:
                    finish = prepare(server, path, args, work)
                wall = time.perf_counter() - began
            finish()
            rates[(path, spin)].append(total / wall)
            print(
                f"  gil: {path} {'with spinner' if spin else 'alone'}: {total / wall / MIB:.0f} MiB/s",
                flush=True,
            )
    return rates


def measure_calls(
    server: LocalOss, total: int, args: argparse.Namespace, work: Path, link: str
) -> dict[str, dict[str, float]]:
    """Per path: Python calls, C calls and socket reads per GiB on the workers, over ``link``."""
    out: dict[str, dict[str, float]] = {}
    for path in PATHS:
        counter = CallCounter()
        gc.collect()
        with counter.installed():
            prepare(server, path, args, work)()
        reads = sum(n for name, n in counter.c_calls.items() if name.endswith(".recv_into"))
        gib = total / GIB
        out[f"{path}, {link}"] = {
            "python calls": counter.python_calls / gib,
            "C calls": sum(counter.c_calls.values()) / gib,
            "socket reads (recv_into calls)": reads / gib,
        }
        top = ", ".join(f"{name} {n / gib:.0f}" for name, n in counter.c_calls.most_common(4))
        print(f"  calls: {path}, {link}: {top}", flush=True)
    return out


def measure_held(
    server: LocalOss, total: int, args: argparse.Namespace, work: Path
) -> dict[str, list[tuple[float, float]]]:
    """Per path and repetition: (process CPU s, CPU s inside the GIL-releasing calls) of a loopback run."""
    held: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for rep in range(args.reps):
        for path in PATHS[rep % 2 :] + PATHS[: rep % 2]:
            meter = NogilMeter()
            gc.collect()
            with meter.installed():
                before = cpu_seconds()
                finish = prepare(server, path, args, work)
                spent = cpu_seconds() - before
            finish()
            held[path].append((spent, meter.seconds))
            print(
                f"  held: {path}: cpu {spent:.2f} s, of which {meter.seconds:.2f} s without the GIL",
                flush=True,
            )
    return held


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="total bytes of the large files (MiB)")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument(
        "--cap-mibps", type=float, default=400.0, help="localoss bandwidth cap of the GIL test"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="scaling-"))
    started = time.monotonic()
    try:
        server = localoss(scratch / "root")
        try:
            sizes = make_files(server, args.size_mib * MIB, args.files)
            total = sum(sizes.values())
            run_bare(server, touched_buffers(sizes), args)()  # warm-up: the server indexes and caches
            cpu, server_cpu = measure_cpu(server, sizes, args, scratch)
            calls = measure_calls(server, total, args, scratch, "loopback")
            held = measure_held(server, total, args, scratch)
        finally:
            stop(server)
        capped = localoss(scratch / "root", "--bandwidth-mibps", str(args.cap_mibps))
        try:
            rates = measure_gil(capped, sizes, args, scratch)
            calls |= measure_calls(capped, total, args, scratch, f"capped {args.cap_mibps:.0f} MiB/s")
        finally:
            stop(capped)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load_after = os.getloadavg()
    gib = total / GIB
    per_gib = {name: median(values) / gib for name, values in cpu.items()}
    floor = per_gib["bare receive"] + per_gib["store only"]

    served_per_gib = {name: median(values) / gib for name, values in server_cpu.items()}
    both = {
        name: median([a + b for a, b in zip(cpu[name], server_cpu[name], strict=True)]) / gib for name in cpu
    }
    floor_both = both["bare receive"] + both["store only"]
    cpu_rows = [
        [
            name,
            f"{per_gib[name]:.2f}",
            f"{per_gib[name] / floor:.2f}x",
            f"{served_per_gib[name]:.2f}",
            f"{both[name]:.2f}",
            f"{both[name] / floor_both:.2f}x",
        ]
        for name in per_gib
    ]
    cpu_table = markdown_table(
        [
            "contender",
            "CPU-s per GiB",
            "x (bare receive + store only)",
            "server CPU-s per GiB",
            "client + server",
            "x (same, bare + store)",
        ],
        cpu_rows,
    )

    gil_rows = []
    ratio: dict[str, float] = {}
    for path in PATHS + CLIENT_PATHS:
        alone = median(rates[(path, False)])
        spun = median(rates[(path, True)])
        ratio[path] = median([s / a for s, a in zip(rates[(path, True)], rates[(path, False)], strict=True)])
        gil_rows.append([path, f"{alone / MIB:.0f}", f"{spun / MIB:.0f}", f"{ratio[path]:.2f}"])
    gil_table = markdown_table(
        ["body path", "alone MiB/s", "with a spinning thread MiB/s", "ratio (median of per-rep ratios)"],
        gil_rows,
    )

    columns = list(calls)
    call_rows = [[name] + [f"{calls[c][name]:,.0f}" for c in columns] for name in next(iter(calls.values()))]
    call_table = markdown_table(["per GiB", *columns], call_rows)

    projection_rows = []
    lines = []
    for path in PATHS:
        process = median([c for c, _ in held[path]]) / gib
        released = median([n for _, n in held[path]]) / gib
        gil_held = max(process - released, 1e-9)
        by_cores = NODE_VCPUS / process * GIB / 1e9
        by_gil = 1 / gil_held * GIB / 1e9
        projected = min(by_cores, by_gil)
        projection_rows.append(
            [
                path,
                f"{process:.2f}",
                f"{released:.2f}",
                f"{gil_held:.2f}",
                f"{by_cores:.1f}",
                f"{by_gil:.1f}",
                f"**{projected:.1f}**",
            ]
        )
        lines.append(
            f"- {path}: min({NODE_VCPUS} vCPUs / {process:.2f} CPU-s per GiB, 1 / {gil_held:.2f} GIL-held "
            f"s per GiB) = min({by_cores:.1f}, {by_gil:.1f}) GB/s = **{projected:.1f} GB/s** "
            f"(reference product's claim: {REFERENCE_CLAIM})"
        )
    projection_table = markdown_table(
        [
            "body path",
            "CPU-s per GiB",
            "of which without the GIL",
            "GIL-held s per GiB",
            f"{NODE_VCPUS} vCPUs / CPU GB/s",
            "1 / GIL-held GB/s",
            "projected GB/s",
        ],
        projection_rows,
    )
    connector = per_gib["connector (kernel)"]
    load = f"{'/'.join(f'{v:.2f}' for v in load_before)}, after {'/'.join(f'{v:.2f}' for v in load_after)}"
    cpu_verdict = "met" if connector <= 1.1 * floor else "MISSED"
    gil_verdict = "met" if ratio["kernel"] >= 0.85 else "MISSED"
    body = (
        f"- {args.files} files, {args.size_mib} MiB in total, {args.connections} connections, "
        f"{args.chunk_mib} MiB chunks, {args.reps} repetitions per measurement (the two paths alternated), "
        f"medians. Whole run {time.monotonic() - started:.0f} s; load average (1/5/15) before {load}.\n"
        '- `kernel`: `bodyReceiver` "kernel" (the default: the receive kernel, GIL released per span); '
        '`python`: `bodyReceiver` "python" (the `http.client` `readinto` path, as before issue 16).\n\n'
        "### CPU per GiB, loopback (process user + system)\n\n"
        f"Target: connector (kernel) <= 1.1x (bare receive + store only): {connector:.2f} / {floor:.2f} "
        f"= **{connector / floor:.2f}x** ({cpu_verdict}); with the server's CPU of the same runs (on the "
        "loopback the TCP stack's softirq work is charged to whichever process is on the CPU when it runs, "
        "and a receiver that sleeps less absorbs more of it): "
        f"{both['connector (kernel)']:.2f} / {floor_both:.2f} = "
        f"**{both['connector (kernel)'] / floor_both:.2f}x**.\n\n{cpu_table}\n\n"
        "### GIL hold: rate with a pure-Python spinning thread / rate alone, link capped at "
        f"{args.cap_mibps:.0f} MiB/s\n\n"
        f"Target >= 0.85: kernel **{ratio['kernel']:.2f}** ({gil_verdict}), python (before) "
        f"{ratio['python']:.2f}.\n\n{gil_table}\n\n"
        "### Python-level calls per GiB on the data path (prefetch workers; one run each, "
        "threading.setprofile)\n\n"
        "On the capped link bytes arrive as the link delivers them: a Python read loop makes one GIL "
        "round trip per socket read, the kernel one per chunk.\n\n"
        f"{call_table}\n\n"
        f"### Projection to a {NODE_VCPUS}-vCPU node\n\n"
        "GIL-held CPU per GiB = process CPU per GiB minus the CPU spent inside the calls that release the "
        "GIL (the receive kernel or the socket reads, and the chunk-store kernel), from loopback runs with "
        "those calls timed by `time.thread_time`; an upper bound (it also counts the other threads' Python "
        "work, the page faults of Python code and the timing itself). Threads can overlap everything but the "
        "GIL-held part, so the rate is bounded by 1 / (GIL-held s per GiB) on any number of cores, and by "
        f"{NODE_VCPUS} / (CPU-s per GiB) on this many vCPUs. Loopback CPU includes the TCP receive work a "
        "NIC would share, and none of the server's.\n\n"
        f"{projection_table}\n\n" + "\n".join(lines) + "\n"
    )
    print(body)
    if not args.no_write:
        write_section("scaling", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
