"""One contender of ``load_model.py``, run in a process of its own so that its peak RSS is its own.

::

    python benchmarks/_load_child.py SPEC.json RESULT.json
        imports (torch, transformers, the loader's own library)       before the clock
        clock: nothing local -> AutoModelForCausalLM ready -> one forward pass done
        after the clock: stats and memory figures, then teardown (unmount, close, remove)

SPEC is a JSON object: ``contender``, ``endpoint``, ``access_key_id``, ``access_key_secret``, ``bucket``,
``prefix``, ``local_model`` (the floor's copy), ``work`` (a scratch folder), ``connections``, ``chunk_mib``.
RESULT gets ``elapsed_s``, ``loaded_s``, ``logits`` (a hash of the forward pass's logits, the same for
every contender that loaded the same weights), ``peak_rss``, ``end_pss``, ``cpu_s`` and what the
contender adds (the connector's breakdown, a FUSE daemon's peak RSS, the bytes it put in /dev/shm).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _profile
from _bare import fetch, split
from _fuse import mounted
from demo import download_prefix

Spec = dict[str, Any]
After = Callable[[float], dict[str, Any]]
"""Called after the clock stopped with its ``time.time()``; returns figures to add to the result."""
Loader = Callable[[Spec, contextlib.ExitStack], tuple[Any, After]]

SAMPLE_INTERVAL_S = 0.1
INPUT_TOKENS = 1  # one decode step: CPU float16 matmuls over a long prompt would swamp every loader


class MemorySampler:
    """Samples this process's ``VmRSS`` every 100 ms (cheap: /proc/self/status) and keeps the peak.

    PSS (a page mapped twice, as the connector's segment and safetensors' private mapping of it are,
    counted once) is read from ``smaps_rollup`` once, by :meth:`pss`: that walk costs milliseconds per
    GiB mapped, which sampling it would charge to the loaders with the largest mappings.
    """

    def __init__(self) -> None:
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def _sample(self) -> None:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)
                    return

    @staticmethod
    def pss() -> int:
        with open("/proc/self/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self._sample()

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class WaitClock:
    """Time readers spend inside the connector's waits: summed over threads and as wall time (union)."""

    def __init__(self) -> None:
        self.calls = 0
        self.total_s = 0.0
        self.wall_s = 0.0
        self._inside = 0
        self._since = 0.0
        self._lock = threading.Lock()

    def install(self, stack: contextlib.ExitStack) -> None:
        # ObjectHandle.wait is what every hook ends in (wait_all calls it too); patched in this process only.
        from ossmodelconnector.fetch.object_handle import ObjectHandle

        real = ObjectHandle.wait

        def timed(handle: Any, start: int, end: int, timeout_s: float | None = None) -> None:
            began = time.perf_counter()
            with self._lock:
                self.calls += 1
                self._inside += 1
                if self._inside == 1:
                    self._since = began
            try:
                real(handle, start, end, timeout_s)
            finally:
                now = time.perf_counter()
                with self._lock:
                    self.total_s += now - began
                    self._inside -= 1
                    if self._inside == 0:
                        self.wall_s += now - self._since

        ObjectHandle.wait = timed  # type: ignore[method-assign]
        stack.callback(setattr, ObjectHandle, "wait", real)


def from_pretrained(path: str | Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16).eval()


def forward(model: Any) -> str:
    """One forward pass on fixed tokens; returns a hash of the logits' bytes."""
    import torch

    ids = torch.arange(1, INPUT_TOKENS + 1).reshape(1, -1) % model.config.vocab_size
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return hashlib.sha256(logits.contiguous().numpy().tobytes()).hexdigest()[:16]


def tree_bytes(path: Path) -> int:
    """Bytes allocated under ``path`` (st_blocks: what a tmpfs or a disk really holds)."""
    return sum(p.lstat().st_blocks * 512 for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# -- contenders --------------------------------------------------------------------------------------------


def connector_loader(*, wait: bool) -> Loader:
    def load(spec: Spec, stack: contextlib.ExitStack) -> tuple[Any, After]:
        import ossmodelconnector.directory.prepare as directory_module
        from ossmodelconnector import OssModelConnector
        from ossmodelconnector.oss.credentials import Credentials

        waits = WaitClock()
        waits.install(stack)
        listing: list[float] = []
        real_list = directory_module.fast_list

        def timed_list(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return real_list(*args, **kwargs)
            finally:
                listing.append(time.perf_counter() - began)

        directory_module.fast_list = timed_list  # type: ignore[assignment]
        stack.callback(setattr, directory_module, "fast_list", real_list)
        hooks: list[float] = []
        real_install = directory_module._install_hooks

        def timed_install() -> None:
            began = time.perf_counter()
            try:
                real_install()
            finally:
                hooks.append(time.perf_counter() - began)

        directory_module._install_hooks = timed_install
        stack.callback(setattr, directory_module, "_install_hooks", real_install)
        cache_dir = Path(spec["shm_dir"])
        target = Path(spec["work"]) / "model"
        began = time.time()
        connector = OssModelConnector(
            spec["endpoint"],
            cred_provider=Credentials(spec["access_key_id"], spec["access_key_secret"]),
            prefetch_vcpus=1,
            prefetch_workers=spec["connections"],
            chunk_size_mb=spec["chunk_mib"],
            cache_dir=str(cache_dir),
        )
        stack.callback(connector.close)
        connector.prepare_directory(
            f"oss://{spec['bucket']}/{spec['prefix']}", str(target), progress=False, wait=wait
        )
        returned = time.time()
        model = from_pretrained(target)
        loaded = time.time()

        def after(done: float) -> dict[str, Any]:
            stats = connector.stats()
            (summary,) = stats["directories"].values()
            firsts = [f["first_byte_at"] for f in stats["files"].values() if f["first_byte_at"]]
            return {
                "shm_bytes": tree_bytes(cache_dir),
                "breakdown": {
                    "construct_s": summary["started_at"] - began,
                    "listing_s": sum(listing),
                    "hooks_install_s": sum(hooks),
                    "first_byte_s": min(firsts) - began if firsts else None,
                    "prepare_returned_s": returned - began,
                    "small_files_ready_s": (summary["ready_at"] or returned) - began,
                    "last_byte_s": (summary["finished_at"] or done) - began,
                    "transfer_from_first_byte_s": (summary["finished_at"] or done) - min(firsts)
                    if firsts
                    else None,
                    "from_pretrained_done_s": loaded - began,
                    "forward_done_s": done - began,
                    "reader_wait_wall_s": waits.wall_s,
                    "reader_wait_total_s": waits.total_s,
                    "reader_wait_calls": waits.calls,
                    "requests": stats["requests"],
                    "retries": stats["retries"],
                    "bytes": stats["bytes"],
                    "large_bytes": sum(f["size"] for f in stats["files"].values() if f["first_byte_at"]),
                },
            }

        return model, after

    return load


def download_then_load(spec: Spec, stack: contextlib.ExitStack) -> tuple[Any, After]:
    target = Path(spec["work"]) / "download"
    stack.callback(lambda: __import__("shutil").rmtree(target, ignore_errors=True))
    creds = (spec["access_key_id"], spec["access_key_secret"])
    download_prefix(spec["endpoint"], creds, target, spec["connections"])
    model = from_pretrained(target)
    return model, lambda _: {"disk_bytes": tree_bytes(target)}


def fuse_loader(kind: str) -> Loader:
    def load(spec: Spec, stack: contextlib.ExitStack) -> tuple[Any, After]:
        creds = (spec["access_key_id"], spec["access_key_secret"])
        source = f"{spec['bucket']}/{spec['prefix']}"
        work = Path(spec["work"])
        mount = stack.enter_context(mounted(kind, spec["endpoint"], creds, source, work, spec["connections"]))
        model = from_pretrained(mount.mountpoint)

        def after(_: float) -> dict[str, Any]:
            cache = work / "rclone-cache"
            return {
                "helper_rss": mount.peak_rss(),
                "disk_bytes": tree_bytes(cache) if cache.exists() else 0,
                "command": " ".join(mount.command),
            }

        return model, after

    return load


def runai_streamer(spec: Spec, stack: contextlib.ExitStack) -> tuple[Any, After]:
    """Small files with the streamer's own ``pull_files`` (as vLLM does), every shard streamed at once."""
    import torch
    from runai_model_streamer import SafetensorsStreamer
    from runai_model_streamer.safetensors_streamer.safetensors_streamer import list_safetensors, pull_files
    from transformers import AutoConfig, AutoModelForCausalLM

    uri = f"s3://{spec['bucket']}/{spec['prefix']}"
    local = Path(spec["work"]) / "runai-config"
    pull_files(uri, str(local), ignore_pattern=["*.safetensors", "*.bin", "*.pt"])
    config = AutoConfig.from_pretrained(local)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    with SafetensorsStreamer() as streamer:
        streamer.stream_files(sorted(list_safetensors(uri)))
        state = dict(streamer.get_tensors())
    model.load_state_dict(state, assign=True, strict=True)
    # Non-persistent buffers (rotary inv_freq) are not in a checkpoint: build them on the CPU.
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=model.config)
    return model.eval(), lambda _: {}


def floor_local(spec: Spec, stack: contextlib.ExitStack) -> tuple[Any, After]:
    return from_pretrained(spec["local_model"]), lambda _: {}


def bare_transfer(spec: Spec, stack: contextlib.ExitStack) -> tuple[Any, After]:
    """Every object's bytes into buffers touched beforehand (see :func:`prepare_bare`); no model."""
    creds = (spec["access_key_id"], spec["access_key_secret"])
    jobs = [job for key, buf in spec["_buffers"].items() for job in split(key, len(buf), memoryview(buf))]
    port = int(spec["endpoint"].rsplit(":", 1)[1])
    fetch(port, creds, spec["bucket"], jobs, spec["connections"])
    return None, lambda _: {}


def prepare_bare(spec: Spec) -> None:
    """Outside the clock: one touched buffer per object, so the bare client pays no page faults."""
    local = Path(spec["local_model"])
    buffers = {
        spec["prefix"] + path.relative_to(local).as_posix(): bytearray(path.stat().st_size)
        for path in sorted(local.rglob("*"))
        if path.is_file()
    }
    for buf in buffers.values():
        buf[::4096] = b"\x01" * len(range(0, len(buf), 4096))  # fault every page in now
    spec["_buffers"] = buffers


def check_bare(spec: Spec) -> str:
    """Outside the clock: the bytes the bare client got equal the local copy's."""
    local = Path(spec["local_model"])
    for key, buf in spec["_buffers"].items():
        if (local / key[len(spec["prefix"]) :]).read_bytes() != buf:
            raise AssertionError(f"bare: {key} differs from the local copy")
    return "bytes checked"


LOADERS: dict[str, Loader] = {
    "connector": connector_loader(wait=False),
    "connector wait=True": connector_loader(wait=True),
    "download-then-load": download_then_load,
    "rclone mount (cache off)": fuse_loader("rclone-off"),
    "rclone mount (cache full)": fuse_loader("rclone-full"),
    "s3fs mount": fuse_loader("s3fs"),
    "Run:ai streamer": runai_streamer,
    "floor: local (page cache)": floor_local,
    "floor: bare transfer": bare_transfer,
}


def run(spec: Spec) -> dict[str, Any]:
    name = spec["contender"]
    # Imports before the clock: no contender pays for torch, transformers or its own library.
    import oss2  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401
    from transformers.models.qwen2 import modeling_qwen2  # noqa: F401

    import ossmodelconnector  # noqa: F401

    if name == "Run:ai streamer":
        import runai_model_streamer  # noqa: F401
    if name == "floor: bare transfer":
        prepare_bare(spec)
    if "shm_dir" in spec:
        Path(spec["shm_dir"]).mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"contender": name}
    profiler = _profile.start(Path(spec["profile"]), os.getpid()) if spec.get("profile") else None
    with contextlib.ExitStack() as stack, MemorySampler() as memory:
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        began = time.perf_counter()
        model, after = LOADERS[name](spec, stack)
        result["loaded_s"] = time.perf_counter() - began
        if model is not None:
            result["logits"] = forward(model)
        result["elapsed_s"] = time.perf_counter() - began
        ended_at = time.time()
        used = resource.getrusage(resource.RUSAGE_SELF)
        result["cpu_s"] = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
        if profiler is not None:
            _profile.stop(profiler)
        result["end_pss"] = memory.pss()  # the model still loaded, the loader not torn down yet
        if model is None:
            result["logits"] = check_bare(spec)  # outside the clock
        result.update(after(ended_at))
    result["peak_rss"] = max(memory.peak_rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return result


def main() -> int:
    spec_path, result_path = sys.argv[1:3]
    spec = json.loads(Path(spec_path).read_text())
    result = run(spec)
    Path(result_path).write_text(json.dumps(result))
    # Teardown of torch and the connector at exit is not part of any figure; leave without it.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
