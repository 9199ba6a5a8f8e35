"""How much faster is a fast list than paging through a listing, when each request has a round trip?

Question: ``fast_list`` splits the key space along the prefix tree and keeps ``requests`` listings in
flight; ``list_objects`` pages through ListObjectsV2 one page (1000 keys) after the other. With a real
round-trip time per request (``localoss --latency-ms 20``), how do they compare on 20,000 keys spread
over nested prefixes (40 folders x 10 sub-folders x 50 files, as a folder of checkpoints)? The same
runs without latency give the floor that the CPU cost of the pages sets.

Each contender runs ``--reps`` times in a shuffled order per repetition; the median is reported, and
every result is checked against the set of files written into the server's folder.

Run: ``.venv/bin/python benchmarks/fast_list.py`` (``--no-write`` to leave RESULTS.md alone).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import markdown_table, median, write_section
from localoss_harness import start_localoss

from ossmodelconnector.config import load_config
from ossmodelconnector.objects import ObjectInfo
from ossmodelconnector.oss.client import OssClient
from ossmodelconnector.oss.credentials import Credentials, StaticCredentialProvider
from ossmodelconnector.oss.listing import fast_list, list_objects
from ossmodelconnector.oss.uri import parse_endpoint

BUCKET = "bench-list"
PREFIX = "checkpoints/"


def layout(tops: int, subs: int, leaves: int) -> list[str]:
    return [
        f"{PREFIX}run-{top:03d}/step-{sub:04d}/shard-{leaf:05d}.safetensors"
        for top in range(tops)
        for sub in range(subs)
        for leaf in range(leaves)
    ]


LIST = "list_objects (pages of 1000)"


def measure(
    root: Path, expected: list[str], latency_ms: float, concurrencies: list[int], args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds per run of each contender against a localoss with ``latency_ms``, and its request count."""
    server = start_localoss(root, "--latency-ms", f"{latency_ms:g}")
    try:
        provider = StaticCredentialProvider(Credentials(server.access_key_id, server.access_key_secret))
        config = load_config(None, fast_list_vcpus=1, fast_list_workers=max(concurrencies))
        contenders: dict[str, Callable[[OssClient], list[ObjectInfo]]] = {
            LIST: lambda c: list_objects(c, BUCKET, PREFIX),
        }
        for n in concurrencies:
            contenders[f"fast_list, {n} requests"] = lambda c, n=n: fast_list(c, BUCKET, PREFIX, n)
        with OssClient(parse_endpoint(server.endpoint), provider, config) as client:
            assert [o.key for o in list_objects(client, BUCKET, PREFIX)] == expected  # warm: ETags, CRCs
        times: dict[str, list[float]] = {name: [] for name in contenders}
        requests: dict[str, int] = {}
        order = list(contenders)
        shuffler = random.Random(args.seed)
        for rep in range(args.reps):
            shuffler.shuffle(order)
            for name in order:
                with OssClient(parse_endpoint(server.endpoint), provider, config) as client:
                    started = time.perf_counter()
                    found = contenders[name](client)
                    elapsed = time.perf_counter() - started
                    requests[name] = client.stats()["requests"]
                assert [o.key for o in found] == expected, f"{name}: wrong listing"
                times[name].append(elapsed)
                label = f"latency {latency_ms:g} ms, rep {rep + 1} {name}"
                print(f"  {label}: {elapsed:.3f} s, {requests[name]} requests")
        return times, requests
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--requests", default="16,4", help="comma-separated fast-list concurrencies")
    parser.add_argument("--shape", default="40,10,50", help="folders, sub-folders, files per sub-folder")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    tops, subs, leaves = (int(n) for n in args.shape.split(","))
    keys = layout(tops, subs, leaves)
    scratch = Path(tempfile.mkdtemp(prefix="fast_list-"))
    try:
        root = scratch / "root"
        for key in keys:
            path = root / BUCKET / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        concurrencies = [int(n) for n in args.requests.split(",")]
        rows = []
        for latency_ms in (args.latency_ms, 0.0):
            times, requests = measure(root, sorted(keys), latency_ms, concurrencies, args)
            base = median(times[LIST])
            rows += [
                [
                    f"{latency_ms:g}",
                    name,
                    f"{median(t):.3f}",
                    f"{min(t):.3f}-{max(t):.3f}",
                    str(requests[name]),
                    f"{base / median(t):.1f}",
                ]
                for name, t in times.items()
            ]
        body = (
            f"{len(keys)} keys under `{PREFIX}` ({tops} folders x {subs} sub-folders x {leaves} files), "
            f"localoss with `--latency-ms {args.latency_ms:g}` (a round trip per request), and again with "
            "no latency: that second run is the floor set by the CPU cost of producing and parsing the "
            "pages (localoss builds them in one Python process, on the same 2 cores), which no "
            f"concurrency can beat. Median of {args.reps} repetitions in shuffled order, each listing "
            "checked against the files.\n\n"
            + markdown_table(
                ["latency ms", "contender", "seconds (median)", "min-max s", "requests", "speed-up"], rows
            )
        )
        print(body)
        if not args.no_write:
            write_section("fast_list", body)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
