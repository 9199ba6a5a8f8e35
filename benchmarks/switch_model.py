"""The Stable Diffusion web UI's model switch: a checkpoint not yet fetched, three ways, timed.

::

    a folder of --models checkpoints (~--size-mib each, diffusers-style tensor names, random fp16) in localoss
    per rep, in shuffled order, each contender on a fresh state (nothing of the model local yet):
        connector (lazy)    prepare_directory(lazy=True) once (timed apart), then the switch:
                            load_file(path) from the lazily prepared folder, weights copied into the model
        rclone mount        the same load_file from an ``rclone mount`` of the bucket (S3 dialect, FUSE,
                            --vfs-cache-mode off; mounted afresh for each rep)
        download-then-load  oss2 resumable_download of that one file (same threads), then load_file
    and the web UI's first hash of another checkpoint not yet fetched: sha256 over open(path, "rb") in
    1 MiB reads (the connector vs the mount vs download-then-hash).

Figures are medians over ``--reps`` with the spread, and ratios to the connector of the same run. Writes
section ``switch_model`` of RESULTS.md. Run: ``python benchmarks/switch_model.py [--size-mib 300]
[--models 6] [--reps 3]``. Needs ``rclone`` and ``fusermount`` (FUSE).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from _results import markdown_table, median, write_section
from localoss_harness import LocalOss, start_localoss
from safetensors.numpy import save_file
from safetensors.torch import load_file

from ossmodelconnector import OssModelConnector

BUCKET = "sd-models"
PREFIX = "models/Stable-diffusion/"
MIB = 1 << 20
CONNECTOR = "connector (lazy)"
RCLONE = "rclone mount (FUSE)"
DOWNLOAD = "download-then-load"
CONTENDERS = (CONNECTOR, RCLONE, DOWNLOAD)
MOUNT_TIMEOUT_S = 30.0


def make_checkpoint(path: Path, size_mib: int, seed: int) -> None:
    """A checkpoint in the SD layout: UNet, VAE and text-encoder tensors, fp16, random bytes."""
    rng = np.random.default_rng(seed)
    total = size_mib * MIB // 2  # fp16 elements
    parts = {
        "model.diffusion_model.input_blocks.{}.0.weight": 0.80,
        "first_stage_model.decoder.up.{}.block.0.conv1.weight": 0.12,
        "cond_stage_model.transformer.text_model.encoder.layers.{}.mlp.fc1.weight": 0.08,
    }
    tensors = {}
    for pattern, share in parts.items():
        rows = int(total * share) // 4 // 64
        for block in range(4):
            raw = rng.bytes(rows * 64 * 2)
            tensors[pattern.format(block)] = np.frombuffer(raw, dtype=np.float16).reshape(rows, 64)
    save_file(tensors, str(path), metadata={"format": "pt"})


def upload(server: LocalOss, source: Path) -> list[str]:
    names = sorted(path.name for path in source.iterdir())
    for name in names:
        target = server.root / BUCKET / PREFIX / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target)
    return names


class Model:
    """What the web UI holds: preallocated weights a checkpoint's tensors are copied into."""

    def __init__(self, sample: Path) -> None:
        self.weights = {name: torch.empty_like(tensor) for name, tensor in load_file(sample).items()}

    def load(self, path: Path) -> int:
        state = load_file(path, device="cpu")
        for name, tensor in state.items():
            self.weights[name].copy_(tensor)
        del state
        return sum(tensor.numel() * tensor.element_size() for tensor in self.weights.values())


def sha256_in_blocks(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(MIB):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def rclone_mount(server: LocalOss, mountpoint: Path) -> Iterator[Path]:
    """Mount the bucket with rclone's S3 backend (path style, SigV4), read-only, no VFS cache."""
    env = {key: value for key, value in os.environ.items() if key != "AWS_CA_BUNDLE"}
    env.update(
        RCLONE_CONFIG_LOCALOSS_TYPE="s3",
        RCLONE_CONFIG_LOCALOSS_PROVIDER="Other",
        RCLONE_CONFIG_LOCALOSS_ENDPOINT=server.endpoint,
        RCLONE_CONFIG_LOCALOSS_ACCESS_KEY_ID=server.access_key_id,
        RCLONE_CONFIG_LOCALOSS_SECRET_ACCESS_KEY=server.access_key_secret,
        RCLONE_CONFIG_LOCALOSS_FORCE_PATH_STYLE="true",
        RCLONE_CONFIG_LOCALOSS_REGION="us-east-1",
    )
    mountpoint.mkdir(parents=True, exist_ok=True)
    command = ["rclone", "mount", f"localoss:{BUCKET}", str(mountpoint), "--read-only"]
    command += ["--vfs-cache-mode", "off", "--log-level", "ERROR"]
    process = subprocess.Popen(command, env=env)
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not os.path.ismount(mountpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rclone mount did not come up (exit {process.poll()})")
            time.sleep(0.05)
        yield mountpoint / PREFIX
    finally:
        subprocess.run(["fusermount", "-u", str(mountpoint)], check=False)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def download(server: LocalOss, name: str, *, target: Path, connections: int) -> Path:
    import oss2

    bucket = oss2.Bucket(oss2.Auth(server.access_key_id, server.access_key_secret), server.endpoint, BUCKET)
    path = target / name
    oss2.resumable_download(
        bucket,
        PREFIX + name,
        str(path),
        num_threads=connections,
        part_size=8 << 20,
        multiget_threshold=16 << 20,
    )
    return path


def timed(run: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def one_rep(
    server: LocalOss, names: list[str], model: Model, work: Path, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    switch_to, hash_of = names[2], names[3]  # neither fetched by anyone in this rep before its turn
    expected_hash = hashlib.sha256((server.root / BUCKET / PREFIX / hash_of).read_bytes()).hexdigest()
    connections = args.vcpus * args.workers
    results: dict[str, dict[str, float]] = {}
    order = list(CONTENDERS)
    random.shuffle(order)
    for contender in order:
        scratch = Path(tempfile.mkdtemp(dir=work))
        try:
            if contender == CONNECTOR:
                with OssModelConnector(
                    server.endpoint,
                    cred_provider=_creds(server),
                    memory_limit_mb=2 * args.size_mib + 64,
                    prefetch_vcpus=args.vcpus,
                    prefetch_workers=args.workers,
                ) as connector:
                    folder = scratch / "Stable-diffusion"
                    uri = f"oss://{BUCKET}/{PREFIX}"
                    prepare_s, prepared = timed(partial(connector.prepare_directory, uri, folder, lazy=True))
                    switch_s, _ = timed(partial(model.load, folder / switch_to))
                    hash_s, digest = timed(partial(sha256_in_blocks, folder / hash_of))
                    # The floors of that hash: hashing the bytes once local, and fetching a file with no
                    # reader at all (a fifth checkpoint, whole, as fast as the prefetcher goes).
                    cached_s, _ = timed(partial(sha256_in_blocks, folder / hash_of))
                    lazy_files = prepared.lazy_files
                    alone = next(f for f in lazy_files.files() if f.path == str(folder / names[4]))
                    fetch_s, _ = timed(alone.wait_all)
                    results[contender] = {
                        "prepare": prepare_s,
                        "switch": switch_s,
                        "hash": hash_s,
                        "hash_cached": cached_s,
                        "fetch_alone": fetch_s,
                    }
            elif contender == RCLONE:
                with rclone_mount(server, scratch / "mnt") as folder:
                    switch_s, _ = timed(partial(model.load, folder / switch_to))
                    hash_s, digest = timed(partial(sha256_in_blocks, folder / hash_of))
                results[contender] = {"switch": switch_s, "hash": hash_s}
            else:
                fetch = partial(download, server, target=scratch, connections=connections)
                switch_s, _ = timed(lambda: model.load(fetch(switch_to)))  # noqa: B023 - called at once
                hash_s, digest = timed(lambda: sha256_in_blocks(fetch(hash_of)))  # noqa: B023
                results[contender] = {"switch": switch_s, "hash": hash_s}
            if digest != expected_hash:
                raise AssertionError(f"{contender}: sha256 of {hash_of} differs from the source")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


def switching(
    server: LocalOss, names: list[str], model: Model, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """A -> B -> C -> A with ``memoryLimitMB`` holding two: requests at prepare, memory held, re-fetches."""
    limit_mb = 2 * args.size_mib + args.size_mib // 2
    scratch = Path(tempfile.mkdtemp(dir=work))
    try:
        with OssModelConnector(
            server.endpoint,
            cred_provider=_creds(server),
            memory_limit_mb=limit_mb,
            prefetch_vcpus=args.vcpus,
            prefetch_workers=args.workers,
        ) as connector:
            folder = scratch / "Stable-diffusion"
            prepare_s, _ = timed(
                partial(connector.prepare_directory, f"oss://{BUCKET}/{PREFIX}", folder, lazy=True)
            )
            at_prepare = connector.stats()
            large = [folder / name for name in names]
            peak = {"held": 0, "shm": 0}
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.005):
                    peak["held"] = max(peak["held"], connector.stats()["lazy_held_bytes"])
                    peak["shm"] = max(peak["shm"], sum(os.stat(path).st_blocks * 512 for path in large))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            times = []
            try:
                for name in (names[0], names[1], names[2], names[0]):
                    elapsed, _ = timed(partial(model.load, folder / name))
                    times.append(elapsed)
            finally:
                stop.set()
                sampler.join()
            final = connector.stats()
            states = [connector.status(path)["state"] for path in large[:3]]
            evictions = connector.status(large[0])["evictions"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "prepare_s": prepare_s,
        "prepare_requests": at_prepare["requests"],
        "prepare_bytes": at_prepare["bytes"],
        "limit": limit_mb * MIB,
        "peak_held": peak["held"],
        "peak_shm": peak["shm"],
        "fetched": final["bytes"] - at_prepare["bytes"],
        "times": times,
        "states": states,
        "evictions_a": evictions,
    }


def _creds(server: LocalOss) -> object:
    from ossmodelconnector.oss.credentials import Credentials

    return Credentials(server.access_key_id, server.access_key_secret)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=300, help="checkpoint size in MiB (default 300)")
    parser.add_argument("--models", type=int, default=6, help="checkpoints in the folder (default 6, >= 5)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--vcpus", type=int, default=8, help="prefetch.vcpus (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="prefetch.workers (default 2)")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    if args.models < 5:
        parser.error("--models must be at least 5")
    if shutil.which("rclone") is None or shutil.which("fusermount") is None:
        parser.error("needs rclone and fusermount (apt-get install rclone fuse3)")
    work = Path(tempfile.mkdtemp(prefix="switch-model-"))
    server = None
    try:
        source = work / "source"
        source.mkdir()
        for number in range(args.models):
            make_checkpoint(source / f"sd-{chr(ord('a') + number)}.safetensors", args.size_mib, number)
        server = start_localoss(work / "root", stderr=subprocess.DEVNULL)
        names = upload(server, source)
        model = Model(source / names[0])
        shutil.rmtree(source)
        reps = [one_rep(server, names, model, work, args) for _ in range(args.reps)]
        switched = switching(server, names, model, work, args)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(reps, switched, args)
    return 0


def _figure(reps: list[dict[str, dict[str, float]]], contender: str, what: str) -> tuple[float, str]:
    values = [rep[contender][what] for rep in reps]
    return median(values), f"{median(values):.3f} s ({min(values):.3f}-{max(values):.3f})"


def report(
    reps: list[dict[str, dict[str, float]]], switched: dict[str, Any], args: argparse.Namespace
) -> None:
    size = args.size_mib * MIB
    rows = []
    base_switch, _ = _figure(reps, CONNECTOR, "switch")
    base_hash, _ = _figure(reps, CONNECTOR, "hash")
    for contender in CONTENDERS:
        switch, switch_text = _figure(reps, contender, "switch")
        digest, hash_text = _figure(reps, contender, "hash")
        rows.append(
            [
                contender,
                switch_text,
                f"{size / switch / 1e9:.2f}",
                f"{switch / base_switch:.2f}",
                hash_text,
                f"{size / digest / 1e9:.2f}",
                f"{digest / base_hash:.2f}",
            ]
        )
    header = [
        "contender",
        "switch: load_file + copy (median, min-max)",
        "GB/s",
        "x connector",
        "first sha256, 1 MiB reads",
        "GB/s",
        "x connector",
    ]
    _, prepare_text = _figure(reps, CONNECTOR, "prepare")
    _, cached_text = _figure(reps, CONNECTOR, "hash_cached")
    fetch_alone, fetch_text = _figure(reps, CONNECTOR, "fetch_alone")
    table = markdown_table(header, rows)
    body = (
        f"A folder of {args.models} checkpoints of {args.size_mib} MiB in localoss (loopback, unthrottled); "
        f"each figure switches to a checkpoint no contender state has fetched yet, {args.reps} reps, "
        f"shuffled order. Connector: `prefetch.vcpus={args.vcpus}`, `prefetch.workers={args.workers}`, "
        f"`memoryLimitMB` = 2 checkpoints; its `prepare_directory(lazy=True)` of the folder took "
        f"{prepare_text} (nothing large fetched), not counted in the switch.\n\n{table}\n\n"
        "rclone: `rclone mount` of the bucket through localoss's S3 dialect, `--vfs-cache-mode off`, mounted "
        "afresh per rep. download-then-load: oss2 `resumable_download` with the same number of threads to "
        "local disk, then the same load.\n\n"
        f"Floors of the connector's first sha256 ({base_hash:.3f} s): the same sha256 of the bytes once "
        f"cached, {cached_text}; fetching a checkpoint whole with no reader at all, {fetch_text} "
        f"({size / fetch_alone / 1e9:.2f} GB/s). The first sha256 through the hooks takes "
        f"{base_hash / fetch_alone:.2f}x the fetch alone on this 2-core machine, where the hash, the "
        "server and the fetching workers share the cores.\n\n"
        f"Switching A -> B -> C -> A through one lazy connector with `memoryLimitMB` = "
        f"{switched['limit'] // MIB} (two checkpoints fit, three do not): `prepare_directory(lazy=True)` "
        f"took {switched['prepare_s']:.3f} s with {switched['prepare_requests']} requests and "
        f"{switched['prepare_bytes']} bytes fetched (list, HEADs; no small files here); the four loads took "
        f"{', '.join(f'{t:.2f}' for t in switched['times'])} s; {switched['fetched'] / size:.2f} checkpoints "
        f"fetched in all (A twice: evicted when C came, {switched['evictions_a']} eviction); memory held, "
        f"sampled every 5 ms: peak {switched['peak_held'] / MIB:.0f} MiB by the connector's count and "
        f"{switched['peak_shm'] / MIB:.0f} MiB of /dev/shm blocks, limit {switched['limit'] // MIB} MiB; "
        f"final states A, B, C: {', '.join(switched['states'])}."
    )
    print(body)
    if not args.no_write:
        write_section("switch_model", body)


if __name__ == "__main__":
    raise SystemExit(main())
