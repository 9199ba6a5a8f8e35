"""How much faster is a fast list than paging through a listing, when each request has a round trip?

Question: ``fast_list`` splits the key space along the prefix tree and keeps ``requests`` listings in
flight; ``list_objects`` pages through ListObjectsV2 one page (1000 keys) after the other. With a real
round-trip time per request (``localoss --latency-ms 20``), how do they compare on 20,000 keys spread
over nested prefixes (40 folders x 10 sub-folders x 50 files, as a folder of checkpoints)?

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

from ossmodelconnector.client import OssClient
from ossmodelconnector.config import load_config
from ossmodelconnector.credentials import Credentials, StaticCredentialProvider
from ossmodelconnector.listing import fast_list, list_objects
from ossmodelconnector.objects import ObjectInfo
from ossmodelconnector.uri import parse_endpoint

BUCKET = "bench-list"
PREFIX = "checkpoints/"


def layout(tops: int, subs: int, leaves: int) -> list[str]:
    return [
        f"{PREFIX}run-{top:03d}/step-{sub:04d}/shard-{leaf:05d}.safetensors"
        for top in range(tops)
        for sub in range(subs)
        for leaf in range(leaves)
    ]


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
        server = start_localoss(root, "--latency-ms", f"{args.latency_ms:g}")
        try:
            provider = StaticCredentialProvider(Credentials(server.access_key_id, server.access_key_secret))
            concurrencies = [int(n) for n in args.requests.split(",")]
            config = load_config(None, fast_list_vcpus=1, fast_list_workers=max(concurrencies))
            contenders: dict[str, Callable[[OssClient], list[ObjectInfo]]] = {
                "list_objects (pages of 1000)": lambda c: list_objects(c, BUCKET, PREFIX),
            }
            for n in concurrencies:
                contenders[f"fast_list, {n} requests"] = lambda c, n=n: fast_list(c, BUCKET, PREFIX, n)
            expected = sorted(keys)
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
                    print(f"  rep {rep + 1} {name}: {elapsed:.3f} s, {requests[name]} requests")
        finally:
            server.stop()
        base = median(times["list_objects (pages of 1000)"])
        rows = [
            [
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
            f"localoss with `--latency-ms {args.latency_ms:g}` (a round trip per request); median of "
            f"{args.reps} repetitions in shuffled order, each listing checked against the files.\n\n"
            + markdown_table(["contender", "seconds (median)", "min-max s", "requests", "speed-up"], rows)
        )
        print(body)
        if not args.no_write:
            write_section("fast_list", body)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
