"""How fast does OssClient read one large object, compared with a bare client and with oss2?

Question: does the client's hot path (signing, pooling, retries, per-piece CRC-64) cost anything against
a bare ``http.client`` + ``readinto`` loop on the same 16 connections, and how much faster is it than
what oss2 users do today? Measured in one run, against a fresh ``localoss`` serving a random object:

- ``ours``: ``OssClient.get_into`` of 8 MiB chunks from 16 threads into one preallocated buffer (CRC-64
  per piece, the chunks' CRCs combined and checked against ``x-oss-hash-crc64ecma``);
- ``bare``: the baseline, ``http.client`` with ``readinto`` on 16 keep-alive connections, same chunks and
  buffer, a hand-rolled V1 signature, no CRC, no retries;
- ``oss2-read``: ``oss2.Bucket.get_object(key).read()``, one stream (oss2's defaults: CRC check on);
- ``oss2-resumable``: ``oss2.resumable_download`` with 16 threads and 8 MiB parts to ``/dev/shm``.

Each mode (unthrottled; ``--conn-bandwidth-mibps 100`` per connection) runs every contender ``--reps``
times in a shuffled order per repetition and reports the median. Every result is checked (CRC-64 of the
bytes against the server's) outside the timed region.

Adding a contender (for example the stream's ``open().readinto``): write ``def run_x(ctx: Context) ->
None`` that fills or checks ``ctx.buf`` and register it in ``CONTENDERS``; select with ``--contenders``.

Run: ``.venv/bin/python benchmarks/read_object.py`` (``--size-mib 256 --reps 2 --no-write`` for a quick look).
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import oss2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bare import fetch, run_threads, split
from _results import markdown_table, median, write_section
from localoss_harness import LocalOss, start_localoss

from ossmodelconnector._fast import crc64, crc64_combine
from ossmodelconnector.config import load_config
from ossmodelconnector.objects import ObjectInfo
from ossmodelconnector.oss.client import OssClient
from ossmodelconnector.oss.credentials import Credentials, StaticCredentialProvider
from ossmodelconnector.oss.uri import parse_endpoint

MIB = 1 << 20
BUCKET = "bench-read"
KEY = "weights/model-00001-of-00001.safetensors"


@dataclass
class Context:
    """What a contender gets: the server, the object, the destination buffer and the knobs."""

    server: LocalOss
    info: ObjectInfo
    buf: bytearray
    threads: int
    chunk: int
    scratch: Path
    results: dict[str, object] = field(default_factory=dict)

    def chunks(self) -> list[tuple[int, int]]:
        return [(lo, min(lo + self.chunk, self.info.size)) for lo in range(0, self.info.size, self.chunk)]


# -- contenders ------------------------------------------------------------------------------------------


def run_ours(ctx: Context) -> None:
    provider = StaticCredentialProvider(Credentials(ctx.server.access_key_id, ctx.server.access_key_secret))
    config = load_config(None, prefetch_vcpus=1, prefetch_workers=ctx.threads)
    chunks = ctx.chunks()
    crcs = [0] * len(chunks)
    view = memoryview(ctx.buf)
    with OssClient(parse_endpoint(ctx.server.endpoint), provider, config) as client:
        fetch = client.make_fetch_into(ctx.info)
        work: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(chunks)):
            work.put(index)

        def worker() -> None:
            while True:
                try:
                    index = work.get_nowait()
                except queue.Empty:
                    return
                lo, hi = chunks[index]
                crcs[index] = fetch(lo, hi, view[lo:hi])

        run_threads(worker, ctx.threads)
        ctx.results["ours_stats"] = client.stats()
    total = 0
    for (lo, hi), crc in zip(chunks, crcs, strict=True):
        total = crc64_combine(total, crc, hi - lo)
    ctx.results["ours_crc"] = total


def run_bare(ctx: Context) -> None:
    creds = (ctx.server.access_key_id, ctx.server.access_key_secret)
    jobs = split(KEY, ctx.info.size, memoryview(ctx.buf), ctx.chunk)
    fetch(ctx.server.port, creds, BUCKET, jobs, ctx.threads)


def _oss2_bucket(ctx: Context) -> oss2.Bucket:
    auth = oss2.Auth(ctx.server.access_key_id, ctx.server.access_key_secret)
    return oss2.Bucket(auth, ctx.server.endpoint, BUCKET, session=oss2.Session(pool_size=ctx.threads))


def run_oss2_read(ctx: Context) -> None:
    data = _oss2_bucket(ctx).get_object(KEY).read()
    assert len(data) == ctx.info.size
    ctx.results["oss2_read_crc"] = crc64(data)


def run_oss2_resumable(ctx: Context) -> None:
    target = Path("/dev/shm") / f"read_object-{os.getpid()}.bin"
    store_dir = ctx.scratch / "oss2-store"
    store_dir.mkdir(exist_ok=True)
    try:
        oss2.resumable_download(
            _oss2_bucket(ctx),
            KEY,
            str(target),
            multiget_threshold=1,
            part_size=ctx.chunk,
            num_threads=ctx.threads,
            store=oss2.ResumableDownloadStore(root=str(store_dir)),
        )
        assert target.stat().st_size == ctx.info.size
    finally:
        target.unlink(missing_ok=True)


def run_stream(ctx: Context) -> None:
    """The public API: ``OssModelConnector.open(uri).readinto`` of the whole object, one call."""
    from ossmodelconnector import OssModelConnector

    creds = Credentials(ctx.server.access_key_id, ctx.server.access_key_secret)
    with (
        OssModelConnector(
            ctx.server.endpoint,
            cred_provider=creds,
            prefetch_vcpus=1,
            prefetch_workers=ctx.threads,
            chunk_size_mb=ctx.chunk // MIB,
        ) as connector,
        connector.open(f"oss://{BUCKET}/{KEY}") as stream,
    ):
        # readinto of the whole object: the stream verifies the CRC-64 once the last chunk is in.
        assert stream.readinto(ctx.buf) == ctx.info.size
        ctx.results["stream_stats"] = connector.stats()


CONTENDERS: dict[str, Callable[[Context], None]] = {
    "stream": run_stream,
    "ours": run_ours,
    "bare": run_bare,
    "oss2-read": run_oss2_read,
    "oss2-resumable": run_oss2_resumable,
}


def check(name: str, ctx: Context) -> None:
    """Check the bytes a contender produced (outside the timed region)."""
    expected = ctx.info.crc64
    if name == "ours":
        got = ctx.results.pop("ours_crc")
        assert got == crc64(ctx.buf) == expected, f"ours: CRC {got} != {expected}"
    elif name in ("bare", "stream"):
        assert crc64(ctx.buf) == expected, f"{name}: wrong bytes"
    elif name == "oss2-read":
        assert ctx.results.pop("oss2_read_crc") == expected, "oss2-read: wrong bytes"
    # oss2-resumable checks its own CRC (enable_crc) and the size is asserted in the run.


# -- driver ----------------------------------------------------------------------------------------------


def make_object(root: Path, size: int) -> None:
    path = root / BUCKET / KEY
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261125)
    with open(path, "wb") as out:
        left = size
        while left:
            step = min(left, 64 * MIB)
            out.write(rng.bytes(step))
            left -= step


def measure_mode(
    root: Path, scratch: Path, args: argparse.Namespace, flags: tuple[str, ...], names: list[str]
) -> dict[str, list[float]]:
    server = start_localoss(root, *flags)
    try:
        provider = StaticCredentialProvider(Credentials(server.access_key_id, server.access_key_secret))
        with OssClient(parse_endpoint(server.endpoint), provider, load_config()) as client:
            info = client.head_object(BUCKET, KEY)
        buf = bytearray(info.size)  # touched once here: no contender pays for page faults
        ctx = Context(server, info, buf, args.threads, args.chunk_mib * MIB, scratch)
        run_ours(ctx)  # warm-up: page cache, server threads
        ctx.results.clear()
        times: dict[str, list[float]] = {name: [] for name in names}
        order = list(names)
        shuffler = random.Random(args.seed)
        for rep in range(args.reps):
            shuffler.shuffle(order)
            for name in order:
                ctx.buf[:: 1 << 20] = bytes(len(ctx.buf[:: 1 << 20]))  # cheap poison: stale bytes fail checks
                started = time.perf_counter()
                CONTENDERS[name](ctx)
                elapsed = time.perf_counter() - started
                check(name, ctx)
                times[name].append(elapsed)
                label = " ".join(flags) or "unthrottled"
                print(f"  {label} rep {rep + 1} {name}: {info.size / elapsed / 1e9:.2f} GB/s")
        return times
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--conn-mibps", type=float, default=100.0)
    parser.add_argument(
        "--contenders", default=",".join(CONTENDERS), help="comma-separated: " + ", ".join(CONTENDERS)
    )
    parser.add_argument("--modes", default="unthrottled,throttled", help="unthrottled and/or throttled")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    names = [name for name in args.contenders.split(",") if name]
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}; known: {', '.join(CONTENDERS)}")
    size = args.size_mib * MIB
    scratch = Path(tempfile.mkdtemp(prefix="read_object-"))
    try:
        root = scratch / "root"
        make_object(root, size)
        modes = {
            "unthrottled": (),
            "throttled": ("--conn-bandwidth-mibps", f"{args.conn_mibps:g}"),
        }
        rows = []
        capped_rows = []
        for mode in args.modes.split(","):
            load_before = os.getloadavg()[0]
            times = measure_mode(root, scratch, args, modes[mode], names)
            load_after = os.getloadavg()[0]
            rates = {name: size / median(t) / 1e9 for name, t in times.items()}
            for name in names:
                spread = f"{size / max(times[name]) / 1e9:.2f}-{size / min(times[name]) / 1e9:.2f}"
                row = [mode, name, f"{rates[name]:.2f}", spread]
                row.append(f"{rates[name] / rates['bare']:.2f}" if "bare" in rates else "")
                row.append(f"{rates[name] / rates['oss2-read']:.1f}" if "oss2-read" in rates else "")
                rows.append(row)
                if mode == "throttled":
                    cap = args.threads * args.conn_mibps * MIB / 1e9
                    capped_rows.append([name, f"{cap:.3f}", f"{rates[name]:.3f}", f"{rates[name] / cap:.2f}"])
            print(f"{mode}: load average {load_before:.1f} -> {load_after:.1f}")
        table = markdown_table(
            ["mode", "contender", "GB/s (median)", "min-max GB/s", "x bare", "x oss2-read"], rows
        )
        body = (
            f"A {args.size_mib} MiB object of random bytes in a fresh localoss (subprocess, same 2 cores); "
            f"{args.threads} threads x {args.chunk_mib} MiB ranged GETs into one preallocated buffer for "
            f"`ours` (OssClient.get_into, CRC-64 per piece) and `bare` (http.client + readinto, same "
            "connections and chunks, no CRC); `oss2-read` = `get_object().read()` (one stream, oss2's CRC "
            f"on); `oss2-resumable` = `resumable_download`, {args.threads} threads, {args.chunk_mib} MiB "
            f"parts to /dev/shm. Median of {args.reps} repetitions, contenders shuffled per repetition, "
            "every result CRC-checked outside the timing. `stream` = the public API, "
            "`OssModelConnector.open(uri).readinto(buffer)` of the whole object (same connections and "
            "chunk size; the stream checks the object's CRC-64 itself).\n\n" + table
        )
        if capped_rows:
            body += (
                f"\n\nPer-connection cap {args.conn_mibps:g} MiB/s (`--conn-bandwidth-mibps`): achieved / "
                f"({args.threads} x cap); oss2-read uses one connection, so its ceiling is "
                f"1/{args.threads}.\n\n"
                + markdown_table(["contender", "cap GB/s", "achieved GB/s", "achieved / cap"], capped_rows)
            )
        print(body)
        if not args.no_write:
            write_section("read_object", body)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
