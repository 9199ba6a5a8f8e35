"""N nodes load one model behind one OSS cap: fleet mode against one node alone and N independent nodes.

The account-wide OSS cap is what fleet mode is for: N independent nodes pull N models through it, a fleet
pulls one. On a simulated fleet (``tests/fleet_net.py``: each node in its own network and mount
namespace with a ``tc``-limited link, localoss behind the total cap; N loopback processes where namespaces
cannot be made), for each N in ``--nodes`` and each repetition, in one run:

- ``alone``: node 0 loads the model by itself (no fleet) behind the cap: the baseline;
- ``independent``: all N nodes load it at once without fleet mode;
- ``fleet``: all N nodes load it in fleet mode.

A node's "loaded" is the moment every tensor is in its memory (``safe_open`` + ``get_tensor`` over the
prepared directory, through the connector, while it streams in); the time of a run is from launching its
node processes to the last node loaded. Every node's tensors are checked against the source (sha256)
after that moment; a mismatch aborts the benchmark. Reported as ratios within the same run: fleet time /
alone time, independent time / fleet time, and bytes pulled from OSS / model bytes.

    python benchmarks/fleet_load.py --size-mib 512 --nodes 2 4 --oss-cap-mibps 50 100 --link-mibps 400
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import markdown_table, median, write_section
from fleet_net import SimulatedFleet
from fleet_node import fleet_keys, make_model, node_argv, node_env

BUCKET = "fleet-bench"
PREFIX = "model/"
FLEET_PORT = 29711


def run_nodes(
    fleet: SimulatedFleet, ranks: list[int], work: Path, *, fleet_mode: bool, timeout_s: float
) -> dict[str, Any]:
    """Launch ``ranks`` at once; return the time to the last node loaded, the OSS bytes and the reports."""
    procs = []
    launched = time.time()
    for rank in ranks:
        env = node_env(fleet, rank, work, timeout_s=timeout_s if fleet_mode else None)
        if fleet_mode:
            env |= fleet_keys(fleet, rank, nodes=len(ranks), port=FLEET_PORT)
        argv = node_argv(fleet, rank, work, f"oss://{BUCKET}/{PREFIX}", check_after=work / "check")
        procs.append(fleet.popen(rank, argv, env=env))
    # Every node hashes its tensors only once all are loaded: a check must not slow a node still loading.
    deadline = time.monotonic() + 600
    while not all((work / f"report{rank}.json.loaded").exists() for rank in ranks):
        if any(proc.poll() not in (None, 0) for proc in procs) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    (work / "check").touch()
    for rank, proc in zip(ranks, procs, strict=True):
        if proc.wait(600) != 0:
            raise SystemExit(f"node {rank} failed with exit code {proc.returncode}")
    reports = [json.loads((work / f"report{rank}.json").read_text()) for rank in ranks]
    return {
        "seconds": max(report["loaded_at"] for report in reports) - launched,
        "oss_bytes": sum(report["oss_bytes"] for report in reports),
        "cpu_s": sum(report["cpu_s_at_loaded"] for report in reports),
        "reports": reports,
        "launched": launched,
    }


def describe_node(rank: int, report: dict[str, Any], launched: float) -> str:
    """One node's timeline from the launch of the run (where its time went), for the log."""
    started = report["loaded_at"] - report["loaded_s"] - launched  # the interpreter and imports
    line = (
        f"  node {rank}: started {started:.2f} s, prepared +{report['prepared_s']:.2f}, "
        f"loaded +{report['loaded_s']:.2f}, CPU {report['cpu_s_at_loaded']:.2f} s"
    )
    fleet = report.get("fleet")
    if fleet:
        formed, ended = fleet["formed_after_s"] or 0.0, fleet["finished_after_s"] or 0.0
        line += (
            f"; group formed +{formed:.2f}, exchange ended +{ended:.2f} (in its steps "
            f"{fleet['exchange_s']:.2f} s), from peers {fleet['bytes_from_peers'] >> 20} MiB, "
            f"fell back {fleet['fallback_chunks']} chunks"
        )
    return line


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=512, help="model size (default %(default)s)")
    parser.add_argument("--nodes", type=int, nargs="+", default=[2, 4], help="fleet sizes (default 2 4)")
    parser.add_argument(
        "--oss-cap-mibps",
        type=float,
        nargs="+",
        default=[100],
        help="total OSS caps, each a run of its own (default %(default)s)",
    )
    parser.add_argument(
        "--link-mibps", type=float, default=400, help="each node's link (default %(default)s)"
    )
    parser.add_argument("--reps", type=int, default=1, help="repetitions; the median is reported")
    parser.add_argument("--timeout-s", type=float, default=30, help="fleet.timeoutSeconds (default 30)")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()

    rows: list[list[str]] = []
    summary: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ossmc-fleet-bench-") as tmp:
        root = Path(tmp) / "oss"
        shards = max(1, args.size_mib // 128)
        digests = make_model(
            root / BUCKET / PREFIX.rstrip("/"), shards=shards, shard_mib=args.size_mib // shards
        )
        model_bytes = sum(p.stat().st_size for p in (root / BUCKET).rglob("*") if p.is_file())
        isolation = ""
        for cap, nodes in itertools.product(args.oss_cap_mibps, args.nodes):
            figures: dict[str, list[dict[str, Any]]] = {"alone": [], "independent": [], "fleet": []}
            with SimulatedFleet(nodes, root, node_link_mibps=args.link_mibps, oss_cap_mibps=cap) as fleet:
                isolation = "network namespaces" if fleet.isolated else f"loopback ({fleet.fallback_reason})"
                for rep in range(args.reps):
                    for name, ranks, fleet_mode in (
                        ("alone", [0], False),
                        ("independent", list(range(nodes)), False),
                        ("fleet", list(range(nodes)), True),
                    ):
                        work = Path(tmp) / f"c{cap:g}-n{nodes}-{name}-{rep}"
                        work.mkdir()
                        result = run_nodes(
                            fleet, ranks, work, fleet_mode=fleet_mode, timeout_s=args.timeout_s
                        )
                        for report in result["reports"]:
                            if report["digests"] != digests:
                                raise SystemExit(
                                    f"{name}, {nodes} nodes: a node loaded other bytes than the source"
                                )
                            if fleet_mode and report["fleet"]["state"] != "done":
                                print(f"warning: {name} node not done: {report['fleet']}", file=sys.stderr)
                        figures[name].append(result)
                        for rank, report in zip(ranks, result["reports"], strict=True):
                            print(describe_node(rank, report, result["launched"]), flush=True)
                        print(
                            f"cap {cap:g}, {nodes} nodes, {name:11s} rep {rep}: {result['seconds']:.2f} s, "
                            f"{result['oss_bytes'] / model_bytes:.3f} x the model from OSS",
                            flush=True,
                        )
            alone = median([r["seconds"] for r in figures["alone"]])
            independent = median([r["seconds"] for r in figures["independent"]])
            fleet_s = median([r["seconds"] for r in figures["fleet"]])
            pulled = median([r["oss_bytes"] / model_bytes for r in figures["fleet"]])
            pulled_independent = median([r["oss_bytes"] / model_bytes for r in figures["independent"]])
            # The nodes' CPU time until loaded over the run's time: near the core count, the machine's
            # cores, not the links, set the pace (every simulated node shares them).
            busy = median([r["cpu_s"] / r["seconds"] for r in figures["fleet"]])
            rows.append(
                [
                    f"{cap:g}",
                    str(nodes),
                    f"{alone:.2f}",
                    f"{independent:.2f}",
                    f"{fleet_s:.2f}",
                    f"{fleet_s / alone:.2f}",
                    f"{independent / fleet_s:.2f}",
                    f"{pulled:.3f}",
                    f"{pulled_independent:.2f}",
                    f"{busy:.2f}",
                ]
            )
            summary.append(
                f"OSS cap {cap:g} MiB/s, {nodes} nodes: fleet / alone {fleet_s / alone:.2f}, "
                f"independent / fleet {independent / fleet_s:.2f}, OSS bytes / model {pulled:.3f}"
            )
    header = [
        "OSS cap MiB/s",
        "nodes",
        "alone s",
        "independent s",
        "fleet s",
        "fleet / alone (<= 1.3)",
        "independent / fleet (>= 3 at 4)",
        "fleet OSS bytes / model (<= 1.05)",
        "independent OSS bytes / model",
        f"fleet nodes' CPU-s / s (of {os.cpu_count()} cores)",
    ]
    table = markdown_table(header, rows)
    print(table)
    if not args.no_write:
        caps = " and ".join(f"{cap:g}" for cap in args.oss_cap_mibps)
        body = (
            f"A {model_bytes / (1 << 20):.0f} MiB model ({shards} safetensors shards), OSS capped at "
            f"{caps} MiB/s for all nodes together, each node's link at "
            f"{args.link_mibps:g} MiB/s; "
            f"nodes in {isolation}. Times are from launching the node processes to the last node with every "
            f"tensor in memory (median of {args.reps}); every node's tensors equal the source's (sha256).\n\n"
            f"{table}\n\n" + "\n".join(f"- {line}" for line in summary) + "\n"
        )
        write_section("fleet_load", body)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
