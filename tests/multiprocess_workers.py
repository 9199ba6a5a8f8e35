"""Functions run in spawned worker processes by the multiprocess tests and the benchmark.

They import nothing of ossmodelconnector: what reaches them is the start-up hook (the environment a
prepared directory exports), exactly as in a vLLM tensor-parallel worker.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from typing import Any


def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup`` in bytes (``Rss``, ``Pss``, ``Pss_Shmem``, ``Anonymous``...)."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return fields


def mapping_rss(path: str) -> int:
    """Resident bytes of this process's mappings of ``path`` (from /proc/self/smaps), in bytes."""
    total, inside = 0, False
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5:
                inside = len(fields) >= 6 and fields[5] == path
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


def vllm_pattern(model_dir: str) -> tuple[dict[str, str], list[Any]]:
    """vLLM's default loader: glob, filter by the index, then ``safe_open`` + ``get_tensor`` per key.

    Returns:
        ``{tensor name: sha256 of its bytes}`` and the tensors (kept alive by the caller).
    """
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as index:
            wanted = set(json.load(index)["weight_map"].values())
        files = [file for file in files if os.path.basename(file) in wanted]
    digests: dict[str, str] = {}
    tensors: list[Any] = []
    for file in files:
        with safe_open(file, framework="pt") as shard:
            for name in shard.keys():  # noqa: SIM118 - safe_open has keys(), it is not a dict
                tensor = shard.get_tensor(name)
                digests[name] = hashlib.sha256(tensor.view(-1).view(dtype=_uint8()).numpy()).hexdigest()
                tensors.append(tensor)
    return digests, tensors


def _uint8() -> Any:
    import torch

    return torch.uint8


def vllm_worker(model_dir: str, results: Any, release: Any) -> None:
    """Load every tensor the vLLM way, report digests and memory, hold the tensors until ``release``."""
    hooked = "ossmodelconnector.hooks" in __import__("sys").modules
    import torch  # noqa: F401 - imported before the baseline, as in a real worker

    before = smaps_rollup()
    started = time.monotonic()
    digests, tensors = vllm_pattern(model_dir)
    seconds = time.monotonic() - started
    after = smaps_rollup()
    results.put(
        {
            "pid": os.getpid(),
            "hooked": hooked,
            "digests": digests,
            "seconds": seconds,
            "anon_growth": after.get("Anonymous", 0) - before.get("Anonymous", 0),
            "bytes": sum(t.numel() * t.element_size() for t in tensors),
        }
    )
    release.wait(120)
    del tensors


def transformers_worker(model_dir: str, results: Any) -> None:
    """Load the model with transformers and report a digest of its state dict."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    hooked = "ossmodelconnector.hooks" in __import__("sys").modules
    results.put({"pid": os.getpid(), "digest": state_digest(model), "hooked": hooked})


def write_sharded_model(target: str, total_mib: int, shards: int, *, seed: int = 0) -> dict[str, str]:
    """Write ~``total_mib`` MiB of random float16 tensors as ``shards`` safetensors files + an index.

    Returns:
        ``{tensor name: sha256 of its bytes}`` of what was written.
    """
    import torch
    from safetensors.torch import save_file

    os.makedirs(target, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    per_shard = (total_mib << 20) // shards
    tensor_bytes = 4 << 20  # 4 MiB tensors, as a model's layers are several MiB each
    weight_map: dict[str, str] = {}
    digests: dict[str, str] = {}
    for shard in range(shards):
        name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        for number in range(max(1, per_shard // tensor_bytes)):
            key = f"layers.{shard}.{number}.weight"
            tensor = torch.randn(tensor_bytes // 2 // 1024, 1024, generator=generator).to(torch.float16)
            tensors[key] = tensor
            weight_map[key] = name
            digests[key] = hashlib.sha256(tensor.view(-1).view(dtype=torch.uint8).numpy()).hexdigest()
        save_file(tensors, os.path.join(target, name), metadata={"format": "pt"})
    with open(os.path.join(target, "model.safetensors.index.json"), "w", encoding="utf-8") as index:
        json.dump({"metadata": {}, "weight_map": weight_map}, index)
    with open(os.path.join(target, "config.json"), "w", encoding="utf-8") as config:
        json.dump({"model_type": "test"}, config)
    return digests


def state_digest(model: Any) -> str:
    """sha256 over a model's state dict (names and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().view(-1).view(dtype=_uint8()).numpy())
    return digest.hexdigest()


def header_allowance(source: Any) -> int:
    """Bytes ``prepare_directory`` may read twice: each safetensors header, read once to plan the fetch
    order (``read_order.fetch_tensor_ranges``, when present) and again as part of its first chunk."""
    from ossmodelconnector.directory import read_order

    probe = read_order._HEADER_PROBE
    allowance = 0
    for path in source.glob("*.safetensors"):
        with path.open("rb") as file:
            length = int.from_bytes(file.read(8), "little")
        allowance += max(min(probe, path.stat().st_size), 8 + length)
    return allowance


def read_first_bytes(path: str, results: Any) -> None:
    """Open ``path``, read its first 4 KiB and report them (hex), or the error's class and message."""
    try:
        with open(path, "rb") as file:
            results.put(("bytes", file.read(4096).hex()))
    except Exception as exc:
        results.put((type(exc).__name__, str(exc)))
