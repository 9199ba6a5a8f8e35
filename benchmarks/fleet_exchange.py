"""How the fleet's nodes should pass chunks: one broadcast per chunk from its owner, or rounds of all-gather.

Fleet mode passes every chunk of the plan from the node that fetched it to all the others, straight from
and into the shared segments. Two ways to do that over a gloo group:

- ``broadcast``: one broadcast per chunk, from its owner, in the plan's order (what fleet mode does);
- ``allgather``: rounds in which every node contributes one chunk (an all-gather of N chunks).

On a simulated fleet (``tests/fleet_net.py``: each node in its own network namespace with a ``tc``-capped
link; loopback where namespaces cannot be made), every node holds the same ``--size-mib`` of pseudo-random
chunks, already "fetched"; the benchmark times moving all of them to every node both ways, in one run, and
checks that every node ends with every byte (sha256). The figure is each way's time to the broadcast's,
and the per-node receive rate against the link cap.

    python benchmarks/fleet_exchange.py --nodes 4 --size-mib 256 --link-mibps 400 --reps 3
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import markdown_table, median, write_section
from fleet_net import SimulatedFleet

MIB = 1 << 20
PORT = 29811


def _node(rank: int, nodes: int, master: str, port: int, size_mib: int, chunk_mib: int) -> None:
    """One node: form a gloo group, then move every chunk to every node both ways; print the times."""
    import numpy as np
    import torch
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=60)
    store = dist.TCPStore(master, port, nodes, rank == 0, timeout, wait_for_workers=False)
    options = dist.ProcessGroupGloo._Options()
    options._timeout = timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((master, 9))
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=probe.getsockname()[0])]
    group = dist.ProcessGroupGloo(store, rank, nodes, options)
    chunk = chunk_mib * MIB
    count = size_mib // chunk_mib
    source = np.random.default_rng(5).integers(0, 256, count * chunk, dtype=np.uint8)
    expected = hashlib.sha256(source.tobytes()).hexdigest()
    results: dict[str, object] = {}
    for mode in ("broadcast", "allgather", "broadcast", "allgather"):
        segment = np.zeros(count * chunk, dtype=np.uint8)  # this node's "segment": only its own chunks filled
        for k in range(count):
            if k % nodes == rank:
                segment[k * chunk : (k + 1) * chunk] = source[k * chunk : (k + 1) * chunk]
        views = [torch.from_numpy(segment[k * chunk : (k + 1) * chunk]) for k in range(count)]
        group.barrier().wait()
        began = time.monotonic()
        if mode == "broadcast":
            for k in range(count):
                options_b = dist.BroadcastOptions()
                options_b.rootRank = k % nodes
                group.broadcast([views[k]], options_b).wait()
        else:
            for first in range(0, count, nodes):
                outputs = [views[first + r] for r in range(nodes)]
                group.allgather([outputs], [views[first + rank]]).wait()
        results[f"{mode}_s"] = time.monotonic() - began
        if hashlib.sha256(segment.tobytes()).hexdigest() != expected:
            raise SystemExit(f"node {rank}: {mode} left other bytes than the source")
    group.barrier().wait()
    print(json.dumps(results), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=256, help="bytes every node ends with")
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--link-mibps", type=float, default=400, help="each node's link (0: uncapped)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--node", nargs=4, metavar=("RANK", "NODES", "MASTER", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.node:
        rank, nodes, master, port = args.node
        _node(int(rank), int(nodes), master, int(port), args.size_mib, args.chunk_mib)
        return 0
    times: dict[str, list[float]] = {"broadcast": [], "allgather": []}
    with (
        tempfile.TemporaryDirectory() as tmp,
        SimulatedFleet(args.nodes, Path(tmp), node_link_mibps=args.link_mibps) as fleet,
    ):
        where = "network namespaces" if fleet.isolated else f"loopback ({fleet.fallback_reason})"
        for rep in range(args.reps):
            argv = [
                sys.executable,
                __file__,
                "--size-mib",
                str(args.size_mib),
                "--chunk-mib",
                str(args.chunk_mib),
            ]
            procs = [
                fleet.popen(
                    rank,
                    [*argv, "--node", str(rank), str(args.nodes), fleet.master_addr, str(PORT + rep)],
                    stdout=subprocess.PIPE,
                )
                for rank in range(args.nodes)
            ]
            outs = [proc.communicate(timeout=600)[0] for proc in procs]
            if any(proc.returncode for proc in procs):
                raise SystemExit("a node failed")
            reports = [json.loads(out.decode().strip().splitlines()[-1]) for out in outs]
            for mode in times:
                # Each mode ran twice per node process (a warm-up first): the second, slowest node.
                times[mode].append(max(report[f"{mode}_s"] for report in reports))
            print(f"rep {rep}: " + ", ".join(f"{mode} {times[mode][-1]:.2f} s" for mode in times), flush=True)
    received = args.size_mib * (args.nodes - 1) / args.nodes  # MiB each node takes from the others
    rows = []
    broadcast = median(times["broadcast"])
    for mode, values in times.items():
        seconds = median(values)
        rows.append([mode, f"{seconds:.2f}", f"{received / seconds:.0f}", f"{seconds / broadcast:.2f}"])
    table = markdown_table(["exchange", "seconds", "MiB/s received per node", "time / broadcast's"], rows)
    print(table)
    if not args.no_write:
        write_section(
            "fleet_exchange",
            f"{args.nodes} nodes in {where}, each link capped at {args.link_mibps:g} MiB/s; every node ends "
            f"with {args.size_mib} MiB in {args.chunk_mib} MiB chunks (each node fetched 1/{args.nodes}); "
            f"median of {args.reps} of the slowest node's time, every node's bytes checked (sha256).\n\n"
            f"{table}\n",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
