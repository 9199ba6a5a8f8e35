"""From nothing to a model ready for inference: the connector against every other way to load from OSS.

::

    model: a Qwen2-style causal LM, random fp16 weights, --size MiB in --shards shards (cached by params)
    per link (loopback unthrottled; emulated cloud link), a fresh localoss with the model in a bucket:
        per repetition, every contender in a shuffled order, each in a process of its own (peak RSS):
            connector                 prepare_directory -> from_pretrained while weights stream -> forward
            connector wait=True       prepare_directory(wait=True) -> from_pretrained -> forward
            download-then-load        oss2 resumable_download, same threads -> from_pretrained -> forward
            rclone mount (cache off)   rclone mount (S3 dialect) -> from_pretrained(mountpoint) -> forward
            rclone mount (cache full)  the same with --vfs-cache-mode full
            s3fs mount                s3fs (S3 dialect, parallel_count = connections) -> ... -> forward
            Run:ai streamer           pull config, stream every shard (concurrency = connections) into a
                                      state dict -> load_state_dict(assign=True) on a meta model -> forward
            floor: local (page cache)  from_pretrained of a local copy already in the page cache -> forward
            floor: bare transfer      http.client + readinto of every byte (same connections), no model
        one more connector run under py-spy: benchmarks/profiles/connector-<link>.txt (+ .md summary)
    tables (median, min-max, GB/s, ratios to the connector and to both floors, peak RSS, /dev/shm), the
    connector's breakdown, the issue's targets, a bar chart (benchmarks/load_model.png), RESULTS.md section.

Each clock starts after the process imported torch, transformers and its own library, and stops when the
forward pass returned; every forward pass must produce the same logits (checked). A contender whose
system package is missing is skipped with the command that installs it.

Run: ``python benchmarks/load_model.py`` (default 2 GiB, 3 reps, both links; about 20-25 minutes here);
``--size 256 --reps 1`` for a quick look; ``--no-write`` to leave RESULTS.md and the chart alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _profile
from _fuse import missing_fuse_tool
from _load_child import LOADERS
from _load_report import Report, chart, report_link, targets
from _model import generated_model
from _results import write_section
from demo import BUCKET, PREFIX
from localoss_harness import LocalOss, start_localoss

CHILD = Path(__file__).with_name("_load_child.py")
PROFILES = Path(__file__).with_name("profiles")
CHART = Path(__file__).with_name("load_model.png")
CHILD_TIMEOUT_S = 900.0
TORCH_THREADS = 1
MIB = 1 << 20

LINKS: dict[str, tuple[str, ...]] = {
    "loopback": (),
    "cloud": ("--conn-bandwidth-mibps", "100", "--bandwidth-mibps", "1000", "--latency-ms", "5"),
}
LINK_TITLES = {
    "loopback": "loopback, unthrottled",
    "cloud": "emulated cloud link (--conn-bandwidth-mibps 100 --bandwidth-mibps 1000 --latency-ms 5)",
}
RUNAI_INSTALL = "pip install 'runai-model-streamer[s3]' (the [bench] extra)"


def missing(contender: str) -> str | None:
    """Why ``contender`` cannot run on this machine, with the install command; None when it can."""
    if contender.startswith("rclone"):
        return missing_fuse_tool("rclone")
    if contender.startswith("s3fs"):
        return missing_fuse_tool("s3fs")
    if contender.startswith("Run:ai") and importlib.util.find_spec("runai_model_streamer") is None:
        return f"runai_model_streamer is not installed; {RUNAI_INSTALL}"
    return None


def place_model(server: LocalOss, model: Path) -> int:
    """Hard-link (or copy) the model into the server's bucket and make it index every object now."""
    import oss2

    total = 0
    for path in sorted(model.rglob("*")):
        if path.is_file():
            target = server.root / BUCKET / PREFIX / path.relative_to(model)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
            total += path.stat().st_size
    bucket = oss2.Bucket(oss2.Auth(server.access_key_id, server.access_key_secret), server.endpoint, BUCKET)
    for obj in oss2.ObjectIteratorV2(bucket, prefix=PREFIX):
        bucket.head_object(obj.key)  # the server hashes (ETag, CRC-64) on first access: not in any clock
    return total


def warm(model: Path) -> None:
    """Read every file of ``model`` so that the local floor and the server read from the page cache."""
    for path in model.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                while f.read(16 * MIB):
                    pass


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_env(contender: str, server: LocalOss, connections: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    # One intra-op thread for every contender: on an oversubscribed 2-core machine OpenMP's spinning
    # barriers made the same one-token forward pass take 0.4 s or 15 s depending on other jobs.
    env["OMP_NUM_THREADS"] = str(TORCH_THREADS)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    if contender.startswith("Run:ai"):
        env.update(
            AWS_ENDPOINT_URL=server.endpoint,
            AWS_ACCESS_KEY_ID=server.access_key_id,
            AWS_SECRET_ACCESS_KEY=server.access_key_secret,
            AWS_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING="0",
            RUNAI_STREAMER_CONCURRENCY=str(connections),
            RUNAI_STREAMER_S3_REQUEST_TIMEOUT_MS="60000",  # the default 1 s trips on a loaded 2-core box
        )
    return env


def run_child(
    contender: str, server: LocalOss, args: argparse.Namespace, model: Path, work: Path, profile: Path | None
) -> dict[str, Any]:
    """Run one contender in its own process; returns its result plus the server's CPU seconds."""
    work.mkdir(parents=True)
    spec = {
        "contender": contender,
        "endpoint": server.endpoint,
        "access_key_id": server.access_key_id,
        "access_key_secret": server.access_key_secret,
        "bucket": BUCKET,
        "prefix": PREFIX,
        "local_model": str(model),
        "work": str(work),
        "connections": args.connections,
        "chunk_mib": args.chunk_mib,
    }
    if contender.startswith("connector"):
        spec["shm_dir"] = f"/dev/shm/ossmc-load-model-{os.getpid()}-{work.name}"
    if profile is not None:
        spec["profile"] = str(profile)
    (work / "spec.json").write_text(json.dumps(spec))
    command = [sys.executable, str(CHILD), str(work / "spec.json"), str(work / "result.json")]
    server_cpu = cpu_seconds(server.proc.pid)
    try:
        with (work / "child.log").open("wb") as log:
            proc = subprocess.run(
                command,
                env=child_env(contender, server, args.connections),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=CHILD_TIMEOUT_S,
                check=False,
            )
        if proc.returncode != 0 or not (work / "result.json").exists():
            tail = (work / "child.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{contender}: the child exited with {proc.returncode}:\n{tail}")
        result: dict[str, Any] = json.loads((work / "result.json").read_text())
        result["server_cpu_s"] = cpu_seconds(server.proc.pid) - server_cpu
        return result
    finally:
        if "shm_dir" in spec:
            shutil.rmtree(spec["shm_dir"], ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def too_slow(results: dict[str, list[dict[str, Any]]], name: str, factor: float) -> bool:
    """Whether ``name``'s first run took more than ``factor`` x the connector's: it is not repeated then.

    Its ratio is far past every target either way, and repeating a 100 s FUSE run would blow the budget.
    """
    first, base = results[name], results.get("connector")
    return bool(
        factor
        and first
        and base
        and name != "connector"
        and first[0]["elapsed_s"] > factor * base[0]["elapsed_s"]
    )


def measure_link(
    link: str, model: Path, names: list[str], args: argparse.Namespace, scratch: Path
) -> tuple[dict[str, list[dict[str, Any]]], str, int]:
    """Every contender ``args.reps`` times in a shuffled order on a fresh server; plus the profile."""
    server = start_localoss(scratch / f"root-{link}", *LINKS[link], stderr=subprocess.DEVNULL)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    summary = ""
    try:
        size = place_model(server, model)
        print(f"{link}: {size / MIB:.0f} MiB at {server.endpoint} {' '.join(LINKS[link])}", flush=True)
        rng = random.Random(f"{args.seed}-{link}")
        for rep in range(args.reps):
            order = [name for name in names if rep == 0 or not too_slow(results, name, args.slow_factor)]
            rng.shuffle(order)
            for index, name in enumerate(order):
                os.sync()
                warm(model)  # the same page-cache state for everyone: the server reads these inodes too
                result = run_child(name, server, args, model, scratch / f"{link}-{rep}-{index}", None)
                results[name].append(result)
                rate = size / result["elapsed_s"] / 1e9
                print(
                    f"  {link} rep {rep + 1}: {name:<26} {result['elapsed_s']:7.2f} s {rate:5.2f} GB/s "
                    f"(model ready {result['loaded_s']:.2f} s)",
                    flush=True,
                )
        if args.profile and "connector" in names:
            why = _profile.missing_profiler()
            if why:
                summary = f"No profile: {why}."
            else:
                # --no-write keeps the committed profiles too: a quick look profiles into the scratch folder.
                folder = scratch if args.no_write else PROFILES
                folder.mkdir(exist_ok=True)
                raw = folder / f"connector-{link}.txt"
                result = run_child("connector", server, args, model, scratch / f"{link}-profile", raw)
                summary = (
                    f"py-spy ({_profile.DEFAULT_RATE_HZ} Hz, on-CPU threads) of one more connector run, "
                    f"{result['elapsed_s']:.2f} s under the profiler; raw stacks: "
                    f"`benchmarks/profiles/{raw.name}`.\n\n" + _profile.summarize(raw.read_text())
                )
                (folder / f"connector-{link}.md").write_text(
                    f"# connector, {LINK_TITLES[link]}\n\n{summary}\n"
                )
        return results, summary, size
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=2048, help="model size in MiB (default 2048)")
    parser.add_argument("--shards", type=int, default=4, help="safetensors shards (default 4)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per contender and link (default 3)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent GETs for every loader")
    parser.add_argument("--chunk-mib", type=int, default=8, help="the connector's chunk size (default 8)")
    parser.add_argument("--links", default="loopback,cloud", help="comma-separated: loopback, cloud")
    parser.add_argument("--contenders", default=",".join(LOADERS), help="comma-separated subset")
    parser.add_argument("--seed", type=int, default=6, help="seed of the shuffled orders")
    parser.add_argument(
        "--slow-factor",
        type=float,
        default=5.0,
        help="run once only a contender whose first run took more than this x the connector's (0: never)",
    )
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the py-spy run")
    parser.add_argument("--no-write", action="store_true", help="print only: leave RESULTS.md and the chart")
    args = parser.parse_args()
    # A SIGTERM unwinds like Ctrl-C: children killed, servers stopped, scratch and /dev/shm removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    wanted = [name.strip() for name in args.contenders.split(",") if name.strip()]
    links = [link.strip() for link in args.links.split(",") if link.strip()]
    unknown = sorted(set(wanted) - set(LOADERS)) + sorted(set(links) - set(LINKS))
    if unknown:
        parser.error(
            f"unknown contenders or links {unknown}; contenders: {', '.join(LOADERS)}; links: loopback, cloud"
        )
    skipped = {name: why for name in wanted if (why := missing(name))}
    for name, why in skipped.items():
        print(f"SKIPPED {name}: {why}", flush=True)
    names = [name for name in wanted if name not in skipped]

    print(f"Model: ~{args.size} MiB in {args.shards} shards (generated once, cached in benchmarks/.cache)")
    model = generated_model(args.size, args.shards)
    warm(model)
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="ossmc-load-model-"))
    report = Report(args=vars(args), names=names, skipped=skipped)
    started = time.monotonic()
    try:
        for link in links:
            results, profile, size = measure_link(link, model, names, args, scratch)
            report.links[link] = (LINK_TITLES[link], results, profile)
            report.size = size
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.load = (load_before, os.getloadavg())
    report.minutes = (time.monotonic() - started) / 60
    body = "\n\n".join(
        [report.preamble(), *(report_link(report, link) for link in report.links), targets(report)]
    )
    print("\n" + body)
    if not args.no_write:
        chart(report, CHART)
        write_section("load_model", body + f"\n\n![load_model chart]({CHART.name})")
    return 0 if report.same_logits() else 1


if __name__ == "__main__":
    sys.exit(main())
