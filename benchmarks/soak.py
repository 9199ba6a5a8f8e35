"""Soak: does anything grow over many prepare -> load -> close cycles? (fds, threads, RSS, /dev/shm)

::

    localoss (subprocess) serving a tiny Qwen2 in 3 safetensors shards + JSON files
    in-process:    N x [OssModelConnector -> prepare_directory -> from_pretrained -> close]   one process
    fresh process: M x [python soak.py --child: the same cycle once, then its figures as JSON]

For the in-process run it samples open file descriptors (``/proc/self/fd``), threads (``/proc/self/task``),
RSS (``VmRSS``) and this run's ``ossmc-*`` entries in ``/dev/shm`` before the first cycle, after the
first (imports, pools and caches warm), at the middle, and after the last; growth is end minus the
warm sample, and a per-cycle slope over the second half. For the fresh-process run it reports each
child's figures after its cycle (first and last child, and the spread) and the parent's ``/dev/shm``
entries and fds before and after all children. Writes section ``soak`` of RESULTS.md.

Run: ``python benchmarks/soak.py [--cycles 200] [--fresh 50]`` (minutes; not part of the pytest run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import markdown_table, write_section

BUCKET = "soak"
PREFIX = "tiny-qwen2/"
SHM = Path("/dev/shm")
OURS: set[str] = set()
"""The ``/dev/shm`` names a cycle maps (the same every cycle: same endpoint, objects and model_dir)."""


def sample() -> dict[str, int]:
    """Open fds, threads, RSS (KiB); this run's segments in /dev/shm and every ``ossmc-*`` name there."""
    with open("/proc/self/status", encoding="ascii") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    names = set(os.listdir(SHM))
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": len(os.listdir("/proc/self/task")),
        "rss_kib": rss,
        "ours": len(OURS & names),
        "shm": sum(1 for name in names if name.startswith("ossmc-")),
    }


def _mapped_shm_names() -> set[str]:
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        return {line.split("/dev/shm/", 1)[1].split()[0] for line in maps if "/dev/shm/ossmc-" in line}


def save_tiny_model(target: Path) -> None:
    from tiny_models import tiny_qwen2

    model = tiny_qwen2(seed=3, vocab_size=4096, hidden_size=128, intermediate_size=256)
    model.save_pretrained(target, max_shard_size="2MB")


def one_cycle(endpoint: str, key_id: str, secret: str, model_dir: Path) -> int:
    """prepare_directory -> from_pretrained -> close; returns the number of parameters loaded."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    from ossmodelconnector import OssModelConnector
    from ossmodelconnector.oss.credentials import Credentials

    with OssModelConnector(
        endpoint, cred_provider=Credentials(key_id, secret), chunk_size_mb=1, small_file_mb=1
    ) as connector:
        connector.prepare_directory(f"oss://{BUCKET}/{PREFIX}", model_dir)
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
        OURS.update(_mapped_shm_names())
        count = sum(p.numel() for p in model.parameters())
        del model
    return count


def child(args: argparse.Namespace) -> int:
    count = one_cycle(args.endpoint, args.key_id, args.secret, Path(args.model_dir))
    gc.collect()
    print(json.dumps({**sample(), "params": count, "names": sorted(OURS)}), flush=True)
    return 0


def in_process(
    endpoint: str, creds: tuple[str, str], workdir: Path, cycles: int
) -> list[tuple[str, dict[str, int]]]:
    import transformers  # noqa: F401 - imported before the first sample, like any server would

    samples = [("before cycle 1", sample())]
    params = None
    for cycle in range(1, cycles + 1):
        count = one_cycle(endpoint, *creds, workdir / "model")
        assert params is None or count == params, "a cycle loaded a different model"
        params = count
        if cycle in (1, 10, cycles // 2, cycles):
            gc.collect()
            samples.append((f"after cycle {cycle}", sample()))
        if cycle % 20 == 0:
            print(f"  in-process cycle {cycle}/{cycles}: {sample()}")
    return samples


def fresh_processes(endpoint: str, creds: tuple[str, str], workdir: Path, count: int) -> dict[str, Any]:
    before = sample()
    children = []
    for number in range(count):
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--endpoint",
                endpoint,
                "--key-id",
                creds[0],
                "--secret",
                creds[1],
                "--model-dir",
                str(workdir / "model"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"child {number} failed ({done.returncode}): {done.stderr[-2000:]}")
        children.append(json.loads(done.stdout.strip().splitlines()[-1]))
        OURS.update(children[-1].pop("names"))
        if (number + 1) % 10 == 0:
            print(f"  fresh process {number + 1}/{count}: {children[-1]}")
    return {"before": before, "after": sample(), "children": children}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=200, help="in-process cycles (default 200)")
    parser.add_argument("--fresh", type=int, default=50, help="fresh-process cycles (default 50)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--key-id", help=argparse.SUPPRESS)
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from localoss_harness import start_localoss

    workdir = Path(tempfile.mkdtemp(prefix="ossmc-soak-"))
    server = start_localoss(workdir / "oss-root")
    try:
        save_tiny_model(workdir / "source")
        for path in sorted((workdir / "source").iterdir()):
            server.put_file(BUCKET, PREFIX + path.name, path.read_bytes())
        creds = (server.access_key_id, server.access_key_secret)
        started = time.monotonic()
        print(f"{args.cycles} in-process cycles...")
        samples = in_process(server.endpoint, creds, workdir, args.cycles)
        in_s = time.monotonic() - started
        started = time.monotonic()
        print(f"{args.fresh} fresh-process cycles...")
        fresh = fresh_processes(server.endpoint, creds, workdir, args.fresh)
        fresh_s = time.monotonic() - started
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    header = ["sample", "open fds", "threads", "RSS (MiB)", "this run's /dev/shm entries", "all ossmc-*"]

    def row(label: str, s: dict[str, int]) -> list[str]:
        figures = [
            str(s["fds"]),
            str(s["threads"]),
            f"{s['rss_kib'] / 1024:.1f}",
            str(s["ours"]),
            str(s["shm"]),
        ]
        return [label, *figures]

    warm = dict(samples)["after cycle 1"]
    mid = dict(samples)[f"after cycle {args.cycles // 2}"]
    end = samples[-1][1]
    slope = (end["rss_kib"] - mid["rss_kib"]) / max(1, args.cycles - args.cycles // 2)
    in_table = markdown_table(header, [row(label, s) for label, s in samples])
    growth = (
        f"Growth from after cycle 1 to after cycle {args.cycles}: fds {end['fds'] - warm['fds']:+d}, threads "
        f"{end['threads'] - warm['threads']:+d}, RSS {(end['rss_kib'] - warm['rss_kib']) / 1024:+.1f} MiB "
        f"(second half: {slope:+.1f} KiB per cycle), this run's /dev/shm entries "
        f"{end['ours'] - warm['ours']:+d} "
        f"({len(OURS)} names per cycle while it runs, {end['ours']} left). "
        f"{args.cycles} cycles took {in_s:.0f} s."
    )
    kids = fresh["children"]
    kid_rows = [
        row("child 1 (after its cycle)", kids[0]),
        row(f"child {len(kids)} (after its cycle)", kids[-1]),
    ]
    for name in ("fds", "threads"):
        values = sorted(k[name] for k in kids)
        cells = [f"{values[0]}..{values[-1]}", ""] if name == "fds" else ["", f"{values[0]}..{values[-1]}"]
        kid_rows.append([f"children: {name} min..max", *cells, "", "", ""])
    rss = sorted(k["rss_kib"] for k in kids)
    kid_rows.append(
        ["children: RSS min..max (MiB)", "", "", f"{rss[0] / 1024:.1f}..{rss[-1] / 1024:.1f}", "", ""]
    )
    kid_rows += [
        row("parent before the children", fresh["before"]),
        row("parent after the children", fresh["after"]),
    ]
    fresh_table = markdown_table(header, kid_rows)
    fresh_note = (
        f"{len(kids)} fresh processes took {fresh_s:.0f} s; this run's /dev/shm entries left after all of "
        f"them: {sample()['ours']}; every child loaded the same "
        f"{kids[0]['params']} parameters."
    )
    print()
    print(in_table)
    print(growth)
    print()
    print(fresh_table)
    print(fresh_note)
    body = (
        "Each cycle: `OssModelConnector` -> `prepare_directory` (tiny Qwen2, 3 safetensors shards of "
        "1-2 MiB streamed in 1 MiB chunks, JSON files on disk) -> `AutoModelForCausalLM.from_pretrained` -> "
        "`close()`. "
        '"This run\'s /dev/shm entries" counts the segment and state-table names a cycle maps (the same '
        'names every cycle); "all ossmc-*" counts every such name on the machine, other runs\' included.\n\n'
        f"### {args.cycles} cycles in one process\n\n{in_table}\n\n{growth}\n\n"
        f"### {args.fresh} cycles in fresh processes\n\n{fresh_table}\n\n{fresh_note}\n"
    )
    write_section("soak", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
