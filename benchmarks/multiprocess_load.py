"""N worker processes loading one model: through the connector's shared cache vs each its own download.

::

    per N in --workers (1, 2, 4), per rep, both contenders in alternating order:
        connector       prepare_directory (this process owns the download) ─> N spawned workers run vLLM's
                        pattern (glob, index filter, safe_open + get_tensor per key) while it streams
        own download    N spawned workers, each: oss2 resumable_download of every file into its own
                        directory on local disk (--connections threads) ─> the same pattern from disk

Reported per N: median seconds from the start until every worker holds every tensor (min-max), the ratio
own download / connector, bytes fetched from the server, and the memory the copies take: the
connector's data segments (allocated blocks in /dev/shm) vs the N downloaded copies (bytes on disk and
in the page cache), plus the workers' anonymous memory growth (private copies; ~0 for both, as both map
files). Every worker's tensors are checked against the source digests. Writes section
``multiprocess_load`` of RESULTS.md.

    python benchmarks/multiprocess_load.py [--size-mib 1024] [--reps 3] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import markdown_table, median, write_section
from localoss_harness import start_localoss
from multiprocess_workers import smaps_rollup, vllm_pattern, vllm_worker, write_sharded_model

BUCKET = "bench-mp"
PREFIX = "model/"
CONNECTOR = "connector"
DOWNLOAD = "own download"
GIB = 1 << 30


def download_worker(
    endpoint: str, creds: tuple[str, str], target: str, connections: int, results: Any
) -> None:
    """Download every object under PREFIX into ``target`` (oss2, like ossutil), then load it the vLLM way."""
    import oss2
    import torch  # noqa: F401 - imported before the baseline, as in the connector's workers

    before = smaps_rollup()
    bucket = oss2.Bucket(oss2.Auth(*creds), endpoint, BUCKET)
    os.makedirs(target, exist_ok=True)
    for obj in oss2.ObjectIteratorV2(bucket, prefix=PREFIX):
        oss2.resumable_download(
            bucket,
            obj.key,
            os.path.join(target, obj.key[len(PREFIX) :]),
            num_threads=connections,
            part_size=8 << 20,
            multiget_threshold=16 << 20,
        )
    digests, tensors = vllm_pattern(target)
    after = smaps_rollup()
    results.put({"digests": digests, "anon_growth": after.get("Anonymous", 0) - before.get("Anonymous", 0)})
    del tensors


def run_connector(
    endpoint: str, creds: tuple[str, str], workers: int, connections: int, work: Path
) -> dict[str, Any]:
    from ossmodelconnector import OssModelConnector
    from ossmodelconnector.cache.manifest import manifest_path, read_manifest
    from ossmodelconnector.cli import child_environment
    from ossmodelconnector.oss.credentials import Credentials

    saved = dict(os.environ)
    os.environ.update(child_environment(dict(os.environ)))  # the workers' start-up hook, as `run` does
    context = multiprocessing.get_context("spawn")
    results, release = context.Queue(), context.Event()
    model_dir = work / "connector"
    try:
        started = time.perf_counter()
        with OssModelConnector(
            endpoint, cred_provider=Credentials(*creds), prefetch_vcpus=connections, prefetch_workers=1
        ) as connector:
            connector.prepare_directory(f"oss://{BUCKET}/{PREFIX}", model_dir)
            processes = [
                context.Process(target=vllm_worker, args=(str(model_dir), results, release))
                for _ in range(workers)
            ]
            for process in processes:
                process.start()
            reports = [results.get(timeout=1800) for _ in processes]
            seconds = time.perf_counter() - started
            manifest = read_manifest(manifest_path(model_dir))
            memory = sum(os.stat(entry.data_path).st_blocks * 512 for entry in manifest.files.values())
            release.set()
            for process in processes:
                process.join(120)
            fetched = connector.stats()["bytes"]
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {"seconds": seconds, "reports": reports, "memory": memory, "fetched": fetched}


def run_download(
    endpoint: str, creds: tuple[str, str], workers: int, connections: int, work: Path
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    targets = [work / f"download-{index}" for index in range(workers)]
    started = time.perf_counter()
    processes = [
        context.Process(target=download_worker, args=(endpoint, creds, str(target), connections, results))
        for target in targets
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=1800) for _ in processes]
    seconds = time.perf_counter() - started
    for process in processes:
        process.join(120)
    memory = sum(path.stat().st_size for target in targets for path in target.rglob("*") if path.is_file())
    for target in targets:
        shutil.rmtree(target, ignore_errors=True)
    return {"seconds": seconds, "reports": reports, "memory": memory, "fetched": memory}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--connections", type=int, default=8, help="concurrent GETs per downloader")
    parser.add_argument("--bandwidth-mibps", type=float, default=0.0, help="cap the server (0 = none)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mp-bench-", dir="/tmp") as scratch:
        root = Path(scratch) / "root"
        source = root / BUCKET / PREFIX.rstrip("/")
        digests = write_sharded_model(str(source), args.size_mib, 4)
        model_bytes = sum(path.stat().st_size for path in source.iterdir())
        server_args = ["--bandwidth-mibps", str(args.bandwidth_mibps)] if args.bandwidth_mibps else []
        server = start_localoss(root, *server_args)
        creds = (server.access_key_id, server.access_key_secret)
        rows = []
        try:
            for workers in args.workers:
                runs: dict[str, list[dict[str, Any]]] = {CONNECTOR: [], DOWNLOAD: []}
                for rep in range(args.reps):
                    order = [CONNECTOR, DOWNLOAD] if rep % 2 == 0 else [DOWNLOAD, CONNECTOR]
                    for name in order:
                        work = Path(scratch) / f"work-{name.replace(' ', '-')}-{workers}-{rep}"
                        runner = run_connector if name == CONNECTOR else run_download
                        result = runner(server.endpoint, creds, workers, args.connections, work)
                        assert all(report["digests"] == digests for report in result["reports"]), name
                        runs[name].append(result)
                        shutil.rmtree(work, ignore_errors=True)
                        print(f"N={workers} rep={rep} {name}: {result['seconds']:.2f} s", flush=True)
                connector_s = median([run["seconds"] for run in runs[CONNECTOR]])
                for name in (CONNECTOR, DOWNLOAD):
                    seconds = [run["seconds"] for run in runs[name]]
                    last = runs[name][-1]
                    anon = max(report["anon_growth"] for report in last["reports"])
                    rows.append(
                        [
                            str(workers),
                            name,
                            f"{median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f})",
                            f"{median(seconds) / connector_s:.2f}",
                            f"{last['fetched'] / model_bytes:.2f}",
                            f"{last['memory'] / GIB:.2f} ({last['memory'] / model_bytes:.2f}x)",
                            f"{anon / (1 << 20):.0f}",
                        ]
                    )
        finally:
            server.stop()
    header = [
        "N workers",
        "contender",
        "s until all hold all tensors, median (min-max)",
        "/ connector",
        "bytes fetched / model",
        "GiB of copies (x model)",
        "max worker anon growth MiB",
    ]
    table = markdown_table(header, rows)
    print(table)
    cap = f"capped at {args.bandwidth_mibps:g} MiB/s" if args.bandwidth_mibps else "unthrottled loopback"
    write_section(
        "multiprocess_load",
        f"Model: {model_bytes / GIB:.2f} GiB in 4 safetensors shards, {args.reps} reps, {cap}, "
        f"{args.connections} connections per downloader and for the connector. Workers are spawned "
        "processes running vLLM's loading pattern; every tensor checked against the source.\n\n" + table,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
