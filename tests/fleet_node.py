"""One node of a simulated fleet: prepare a model directory through the connector, load it, report.

Run by the fleet tests and ``benchmarks/fleet_load.py`` as ``python tests/fleet_node.py ARGS`` in each
node's namespaces (``tests/fleet_net.py``), with the fleet's ``OSSMC_FLEET_*`` variables (or
``MASTER_ADDR``...) and the OSS credentials in the environment. It writes one JSON report: the sha256 of
every tensor as safetensors loaded it from the prepared directory, when the load ended, the connector's
figures (bytes from OSS, the fleet's share), and what is left in the cache directory after ``close()``.

``make_model`` writes the model the nodes load: random safetensors shards, deterministic for a seed;
``node_env`` and ``node_argv`` are how the tests and the benchmark start a node.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fleet_net import SimulatedFleet

NODE_SCRIPT = Path(__file__).resolve()


def node_env(fleet: SimulatedFleet, rank: int, work: Path, *, timeout_s: float | None) -> dict[str, str]:
    """Node ``rank``'s environment: the OSS credentials, its own cache directory, a log and an audit file
    in ``work``; in fleet mode (``timeout_s`` given) the switch and the exchange's timeout, nothing that
    names the group (see ``fleet_keys`` and the scheduler's ``MASTER_ADDR``...)."""
    env = {
        "OSS_ACCESS_KEY_ID": fleet.localoss.access_key_id,
        "OSS_ACCESS_KEY_SECRET": fleet.localoss.access_key_secret,
        "OSSMC_CACHE_DIR": fleet.cache_dir(rank),
        "OSSMC_LOG_PATH": str(work / f"node{rank}.log"),
        "OSSMC_AUDIT_PATH": str(work / f"node{rank}.audit"),
    }
    if timeout_s is not None:
        env |= {"OSSMC_FLEET_ENABLED": "1", "OSSMC_FLEET_TIMEOUT_S": str(timeout_s)}
    return env


def fleet_keys(fleet: SimulatedFleet, rank: int, *, nodes: int, port: int) -> dict[str, str]:
    """The ``OSSMC_FLEET_*`` variables that name node ``rank``'s group of ``nodes`` on ``port``."""
    return {
        "OSSMC_FLEET_NODES": str(nodes),
        "OSSMC_FLEET_RANK": str(rank),
        "OSSMC_FLEET_MASTER_ADDR": fleet.master_addr,
        "OSSMC_FLEET_PORT": str(port),
    }


def node_argv(
    fleet: SimulatedFleet, rank: int, work: Path, uri: str, *, check_after: Path | None = None
) -> list[str]:
    """The command of this program for node ``rank``: its model directory and report in ``work``."""
    argv = [sys.executable, str(NODE_SCRIPT), "--endpoint", fleet.endpoint, "--uri", uri]
    argv += ["--model-dir", str(work / f"model{rank}"), "--report", str(work / f"report{rank}.json")]
    argv += ["--cache-dir", fleet.cache_dir(rank)]
    if check_after is not None:
        argv += ["--check-after", str(check_after)]
    return argv


def make_model(folder: Path, *, shards: int, shard_mib: int, seed: int = 0) -> dict[str, str]:
    """Write ``shards`` safetensors files of about ``shard_mib`` MiB (and a config) into ``folder``.

    Returns:
        ``{tensor name: sha256 of its bytes}``.
    """
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    digests: dict[str, str] = {}
    per_tensor = 4 << 20
    for shard in range(shards):
        tensors = {}
        for index in range(max(1, (shard_mib << 20) // per_tensor)):
            name = f"layers.{shard}.w{index}"
            tensors[name] = rng.integers(0, 256, per_tensor, dtype=np.uint8).view(np.float32).reshape(-1, 256)
            digests[name] = hashlib.sha256(tensors[name].tobytes()).hexdigest()
        save_file(tensors, str(folder / f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architectures": ["Fleet"], "shards": shards}))
    return digests


def load_tensors(model_dir: str) -> dict[str, Any]:
    """Every tensor of the directory's shards, loaded as frameworks do (``safe_open`` + ``get_tensor``)."""
    from safetensors import safe_open

    tensors: dict[str, Any] = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))):
        with safe_open(path, framework="pt") as shard:
            for name in shard.keys():  # noqa: SIM118 - safe_open has keys(), it is not a dict
                tensors[name] = shard.get_tensor(name)
    return tensors


def digests_of(tensors: dict[str, Any]) -> dict[str, str]:
    return {name: hashlib.sha256(tensor.numpy().tobytes()).hexdigest() for name, tensor in tensors.items()}


def load_digests(model_dir: str) -> dict[str, str]:
    """The sha256 of every tensor of the directory, loaded as frameworks do."""
    return digests_of(load_tensors(model_dir))


def _wait_for_file(path: Path, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--uri", required=True, help="oss://bucket/prefix/")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--report", required=True, help="where to write the JSON report")
    parser.add_argument("--cache-dir", default="/dev/shm")
    parser.add_argument("--stay", type=float, default=0.0, help="seconds to keep the model after loading")
    parser.add_argument(
        "--check-after",
        default="",
        help="write REPORT.loaded once loaded, then wait for this file before hashing the tensors (so that "
        "a node's check does not take CPU from nodes still loading)",
    )
    args = parser.parse_args(argv)

    from ossmodelconnector import OssModelConnector

    began = time.monotonic()
    report: dict[str, Any] = {"pid": os.getpid()}
    connector = OssModelConnector(args.endpoint, config_path="")
    try:
        directory = connector.prepare_directory(args.uri, args.model_dir, progress=False)
        report["prepared_s"] = time.monotonic() - began
        tensors = load_tensors(args.model_dir)
        report["loaded_s"] = time.monotonic() - began
        report["loaded_at"] = time.time()  # the model is in memory, usable: what "loaded" means here
        usage = resource.getrusage(resource.RUSAGE_SELF)
        report["cpu_s_at_loaded"] = usage.ru_utime + usage.ru_stime
        if args.check_after:
            Path(args.report + ".loaded").write_text(json.dumps(report["loaded_at"]))
            _wait_for_file(Path(args.check_after), timeout_s=600)
        report["digests"] = digests_of(tensors)
        del tensors
        directory.wait()
        report["fetched_s"] = time.monotonic() - began
        time.sleep(args.stay)
    finally:
        connector.close()  # a node with every chunk lets the exchange end before leaving the fleet
    report["oss_bytes"] = connector.stats()["bytes"]
    report["fleet"] = directory.stats().get("fleet")
    report["left_in_cache_dir"] = sorted(
        name for name in os.listdir(args.cache_dir) if name.startswith("ossmc-")
    )
    Path(args.report).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
