"""No-code mode and the owner's lifecycle across processes, each side a real process.

- ``ossmodelconnector run URI DIR -- python -c PROGRAM``: PROGRAM starts 2 ``spawn`` children that load
  the model with transformers; the exit code comes back; nothing is left in ``/dev/shm``.
- ``ENABLE_CONNECTOR=1`` + ``OSS_ENDPOINT``/``OSS_PATH``/``MODEL_DIR``: the same program, no wrapper,
  through the .pth the install put in site-packages (skipped in an environment installed before it
  existed), and through the start-up folder on ``PYTHONPATH`` that stands in for it.
- The owner killed with SIGKILL mid-download: every waiting reader gets ``OwnerDiedError`` (long before
  its wait timeout), and the next ``prepare_directory`` recovers, leaving no orphan.
- Two processes preparing the same prefix into the same directory at once: one fetches, the other
  attaches; the bytes fetched by both together are the objects' bytes once.
"""

from __future__ import annotations

import json
import os
import signal
import site
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from localoss_harness import LocalOss
from multiprocess_workers import header_allowance, state_digest, vllm_pattern, write_sharded_model
from tiny_models import tiny_qwen2

from ossmodelconnector import OssModelConnector
from ossmodelconnector.cache.manifest import manifest_path, read_manifest
from ossmodelconnector.cli import child_environment
from ossmodelconnector.oss.credentials import Credentials

TESTS = str(Path(__file__).parent.parent)
REPO = str(Path(__file__).parent.parent.parent)
PROCESS_TIMEOUT_S = 300

# Starts 2 spawn children that load MODEL_DIR with transformers; prints what they saw; exits with 7.
PROGRAM = textwrap.dedent(
    """
    import json, multiprocessing, os, sys
    sys.path.insert(0, {tests!r})
    from multiprocess_workers import transformers_worker

    if __name__ == "__main__":
        model_dir = os.environ["TEST_MODEL_DIR"]
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        children = [context.Process(target=transformers_worker, args=(model_dir, results)) for _ in range(2)]
        for child in children:
            child.start()
        reports = [results.get(timeout=300) for _ in children]
        for child in children:
            child.join()
        manifest = json.load(open(os.path.join(model_dir, ".ossmodelconnector", "manifest.json")))
        segments = [entry["data_path"] for entry in manifest["files"].values()]
        print(json.dumps({{
            "reports": reports,
            "exit_codes": [child.exitcode for child in children],
            "segments": segments + ["/dev/shm/" + manifest["state_table"]],
        }}))
        sys.exit(7)
    """
).format(tests=TESTS)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    source = tmp_path_factory.mktemp("nocode") / "qwen2"
    model = tiny_qwen2(seed=11, vocab_size=4096, hidden_size=256, intermediate_size=512)
    model.save_pretrained(source, max_shard_size="3MB")
    return source, state_digest(model)


def _upload(server: LocalOss, bucket: str, prefix: str, source: Path) -> int:
    server.make_bucket(bucket)
    total = 0
    for path in sorted(source.iterdir()):
        data = path.read_bytes()
        server.put_file(bucket, prefix + path.name, data)
        total += len(data)
    return total


def _base_env(server: LocalOss, model_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OSS_ACCESS_KEY_ID=server.access_key_id,
        OSS_ACCESS_KEY_SECRET=server.access_key_secret,
        OSSMC_SMALL_FILE_MB="1",
        OSSMC_CHUNK_SIZE_MB="1",
        TEST_MODEL_DIR=str(model_dir),
        PYTHONPATH=os.pathsep.join([REPO, TESTS]),
    )
    return env


def _check_program_output(
    completed: subprocess.CompletedProcess[str], digest: str, owner_pid: int | None = None
) -> None:
    assert completed.returncode == 7, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["exit_codes"] == [0, 0]
    for report in result["reports"]:
        assert report["hooked"], "the start-up hook did not run in the spawned child"
        assert report["digest"] == digest  # the state dict is bit-identical to the saved model
    if owner_pid is not None:
        _wait_for_exit(owner_pid)  # the owner process leaves once its last user (the program) is gone
    leftovers = [path for path in result["segments"] if os.path.exists(path)]
    assert not leftovers, f"left in /dev/shm after the program exited: {leftovers}"


def _owner_pid(model_dir: Path) -> int:
    with open(model_dir / ".ossmodelconnector" / "owner.json", encoding="utf-8") as record:
        pid = json.load(record)["pid"]
    assert isinstance(pid, int)
    return pid


def _wait_for_exit(pid: int) -> None:
    """Until process ``pid`` is gone (a liveness bound, not a measurement)."""
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while os.path.exists(f"/proc/{pid}") and _state(pid) != "Z":
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return text[text.rfind(")") + 2 :].split()[0]


def test_run_wrapper(localoss: LocalOss, tiny_model: tuple[Path, str], tmp_path: Path) -> None:
    source, digest = tiny_model
    _upload(localoss, "nocode-run", "qwen/", source)
    model_dir = tmp_path / "model"
    command = [sys.executable, "-m", "ossmodelconnector.cli", "run", "--endpoint", localoss.endpoint]
    command += ["oss://nocode-run/qwen/", str(model_dir), "--", sys.executable, "-c", PROGRAM]
    completed = subprocess.run(
        command,
        env=_base_env(localoss, model_dir),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    _check_program_output(completed, digest)


def _installed_pth() -> str | None:
    """The package's start-up .pth in this interpreter's site-packages, if the install put one there."""
    for folder in [*site.getsitepackages(), site.getusersitepackages()]:
        path = os.path.join(folder, "ossmodelconnector.pth")
        if os.path.isfile(path):
            return path
    return None


@pytest.mark.parametrize("route", ["installed .pth", "start-up folder on PYTHONPATH"])
def test_enable_connector_without_wrapper(
    localoss: LocalOss, tiny_model: tuple[Path, str], tmp_path: Path, route: str
) -> None:
    source, digest = tiny_model
    bucket = "nocode-env-pth" if route == "installed .pth" else "nocode-env-folder"
    _upload(localoss, bucket, "qwen/", source)
    model_dir = tmp_path / "model"
    if route == "installed .pth":
        if _installed_pth() is None:
            pytest.skip(
                "this environment was installed before the package shipped its .pth: reinstall it "
                "(pip install -e .) to test the installed route; CI's fresh install does"
            )
        env = _base_env(localoss, model_dir)  # nothing but the environment variables below
    else:
        env = child_environment(_base_env(localoss, model_dir))  # the .pth's stand-in
    env.update(
        ENABLE_CONNECTOR="1",
        OSS_ENDPOINT=localoss.endpoint,
        OSS_PATH=f"oss://{bucket}/qwen/",
        MODEL_DIR=str(model_dir),
    )
    completed = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        env=env,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    _check_program_output(completed, digest, _owner_pid(model_dir))


# A process started with ENABLE_CONNECTOR=1: says "up" once its start-up hook is done; with "load", reads
# every tensor of MODEL_DIR the vLLM way and prints their digests; ends at end of input.
USER = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {tests!r})
    print("up", flush=True)
    for line in sys.stdin:
        if line.strip() == "load":
            from multiprocess_workers import vllm_pattern
            digests, _ = vllm_pattern(os.environ["MODEL_DIR"])
            print(json.dumps(digests), flush=True)
    """
).format(tests=TESTS)


def test_enable_connector_outlives_a_probe_that_started_first(localoss_factory: Any, tmp_path: Path) -> None:
    source = tmp_path / "source"
    digests = write_sharded_model(str(source), 16, 4)
    server = localoss_factory("--bandwidth-mibps", "8")  # still arriving when the probe exits
    _upload(server, "probe", "m/", source)
    model_dir = tmp_path / "model"
    env = child_environment(_base_env(server, model_dir))
    env.update(
        ENABLE_CONNECTOR="1",
        OSS_ENDPOINT=server.endpoint,
        OSS_PATH="oss://probe/m/",
        MODEL_DIR=str(model_dir),
        OSSMC_OWNER_CHECK_S="0.2",
    )
    env.pop("OSSMC_PREPARED_DIRS", None)
    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", USER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        started.append(process)
        assert process.stdout is not None and process.stdout.readline().strip() == "up"
        return process

    try:
        probe = start()  # the first process to start: `python -c "import torch"` before the server
        owner = _owner_pid(model_dir)
        serving = start()  # started independently, not under the probe: it finds the live owner
        probe.communicate("", timeout=PROCESS_TIMEOUT_S)  # the probe exits mid-download
        assert probe.returncode == 0
        assert serving.stdin is not None and serving.stdout is not None
        serving.stdin.write("load\n")
        serving.stdin.flush()
        assert json.loads(serving.stdout.readline() or "null") == digests  # every tensor, bit for bit
        assert owner not in (probe.pid, serving.pid) and _owner_pid(model_dir) == owner  # one of its own
        segments = [entry.data_path for entry in read_manifest(manifest_path(model_dir)).files.values()]
        serving.communicate("", timeout=PROCESS_TIMEOUT_S)
        assert serving.returncode == 0
        _wait_for_exit(owner)  # its last user gone, the owner releases the cache and exits
        assert not [path for path in segments if os.path.exists(path)]
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.communicate()


OWNER = textwrap.dedent(
    """
    import sys, time
    from ossmodelconnector import OssModelConnector
    from ossmodelconnector.oss.credentials import Credentials
    connector = OssModelConnector(sys.argv[1], cred_provider=Credentials(sys.argv[2], sys.argv[3]),
                                  chunk_size_mb=1, small_file_mb=1)
    connector.prepare_directory(sys.argv[4], sys.argv[5])
    print("ready", flush=True)
    time.sleep(600)
    """
)

READER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from multiprocess_workers import vllm_pattern
    print("start", flush=True)
    try:
        vllm_pattern(sys.argv[1])
        print("loaded")
    except Exception as exc:
        print(type(exc).__name__, time.time(), str(exc).replace("\\n", " "))
    """
).format(tests=TESTS)


def test_owner_killed_mid_download(localoss_factory: Any, tmp_path: Path) -> None:
    source = tmp_path / "source"
    digests = write_sharded_model(str(source), 16, 2)
    slow = localoss_factory("--bandwidth-mibps", "2")  # ~8 s for the model: the kill comes long before
    _upload(slow, "killed", "m/", source)
    model_dir = tmp_path / "model"
    env = _base_env(slow, model_dir)
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            OWNER,
            slow.endpoint,
            slow.access_key_id,
            slow.access_key_secret,
            "oss://killed/m/",
            str(model_dir),
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    readers: list[subprocess.Popen[str]] = []
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        old = read_manifest(manifest_path(model_dir))
        old_files = [entry.data_path for entry in old.files.values()] + [f"/dev/shm/{old.state_table}"]
        reader_env = child_environment(env)
        reader_env.update(
            OSSMC_PREPARED_DIRS=str(model_dir),
            OSSMC_OWNER_CHECK_S="0.5",
            OSSMC_WAIT_TIMEOUT_S="120",
        )
        for _ in range(2):
            reader = subprocess.Popen(
                [sys.executable, "-c", READER, str(model_dir)],
                env=reader_env,
                stdout=subprocess.PIPE,
                text=True,
            )
            readers.append(reader)
        for reader in readers:
            assert reader.stdout is not None and reader.stdout.readline().strip() == "start"
        time.sleep(1.0)  # let them reach their waits (not asserted: they may also still be importing)
        owner.send_signal(signal.SIGKILL)
        killed_at = time.time()
        owner.wait(30)
        outputs = [
            reader.communicate(timeout=PROCESS_TIMEOUT_S)[0].strip().splitlines()[-1] for reader in readers
        ]
    finally:
        for process in (owner, *readers):
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
    for output in outputs:
        kind, at, message = output.split(" ", 2)
        assert kind == "OwnerDiedError", output  # not a RequestTimeoutError 120 s later, not a hang
        assert "died" in message and "prepare the directory again" in message
        print(
            f"reader noticed the owner's death after {float(at) - killed_at:.2f} s (bound 0.5 s + start-up)"
        )
    # The next prepare (another server: other data segment names) recovers the dead owner's files.
    fast = localoss_factory()
    _upload(fast, "killed", "m/", source)
    with OssModelConnector(
        fast.endpoint, cred_provider=Credentials(fast.access_key_id, fast.access_key_secret), small_file_mb=1
    ) as connector:
        connector.prepare_directory("oss://killed/m/", model_dir, wait=True)
        found, _ = vllm_pattern(str(model_dir))
        assert found == digests
        assert not [path for path in old_files[:-1] if os.path.exists(path)], "orphaned data segments"
    assert not [path for path in old_files if os.path.exists(path)]


def test_a_dead_owners_files_never_read_as_zeros_when_no_new_owner_starts(
    localoss_factory: Any, tmp_path: Path
) -> None:
    """ENABLE_CONNECTOR whose owner process fails (here: a wrong secret) over a directory that an owner
    killed mid-download left behind: the program reads the leftovers through the cache's checks (the dead
    owner's error), never the zeros of its unfilled segments; its children read them the same way."""
    source = tmp_path / "source"
    write_sharded_model(str(source), 16, 2)
    slow = localoss_factory("--bandwidth-mibps", "2")
    _upload(slow, "leftover", "m/", source)
    model_dir = tmp_path / "model"
    env = _base_env(slow, model_dir)
    credentials = (slow.access_key_id, slow.access_key_secret)
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, slow.endpoint, *credentials, "oss://leftover/m/", str(model_dir)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        old = read_manifest(manifest_path(model_dir))
        leftovers = [entry.data_path for entry in old.files.values()] + [f"/dev/shm/{old.state_table}"]
    finally:
        owner.kill()
        owner.wait(30)
        assert owner.stdout is not None
        owner.stdout.close()
    user_env = child_environment(env)
    user_env.update(
        ENABLE_CONNECTOR="1",
        OSS_ENDPOINT=slow.endpoint,
        OSS_PATH="oss://leftover/m/",
        MODEL_DIR=str(model_dir),
        OSS_ACCESS_KEY_SECRET="not-the-secret",  # the new owner process fails before touching MODEL_DIR
        OSSMC_OWNER_CHECK_S="0.5",
        OSSMC_WAIT_TIMEOUT_S="120",
    )
    program = READER + textwrap.dedent(
        """
        import subprocess
        ask = "import os; print(os.environ.get('OSSMC_PREPARED_DIRS'))"
        child = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True)
        print("child", child.stdout.strip())
        """
    )
    try:
        completed = subprocess.run(
            [sys.executable, "-c", program, str(model_dir)],
            env=user_env,
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT_S,
            check=False,
        )
        lines = completed.stdout.strip().splitlines()
        assert "start-up hook failed" in completed.stderr and "SignatureDoesNotMatch" in completed.stderr, (
            completed.stderr[-3000:]
        )
        kind, _, message = lines[1].split(" ", 2)
        assert kind == "OwnerDiedError", lines  # not "loaded": the unfilled bytes were never read as zeros
        assert "read through the cache" in completed.stderr, completed.stderr[-3000:]
        assert "prepare the directory again" in message
        assert lines[2] == f"child {model_dir}", lines  # exported: children read it the same way
    finally:
        subprocess.run(
            [sys.executable, "-m", "ossmodelconnector.cli", "gc"], env=env, capture_output=True, timeout=120
        )
    assert not [path for path in leftovers if os.path.exists(path)], "the dead owner's segments remain"


COOPERATOR = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    from multiprocess_workers import vllm_pattern
    from ossmodelconnector import ModelDirectory, OssModelConnector
    from ossmodelconnector.oss.credentials import Credentials
    with OssModelConnector(sys.argv[1], cred_provider=Credentials(sys.argv[2], sys.argv[3]),
                           chunk_size_mb=1, small_file_mb=1) as connector:
        directory = connector.prepare_directory(sys.argv[4], sys.argv[5])
        digests, _ = vllm_pattern(sys.argv[5])
        stats = connector.stats()
        print(json.dumps({{"kind": type(directory).__name__, "bytes": stats["bytes"], "digests": digests,
                          "protocol": isinstance(directory, ModelDirectory)}}), flush=True)
        sys.stdin.readline()  # both loaded: now the owner may close
    """
).format(tests=TESTS)


def test_two_processes_prepare_the_same_prefix_at_once(localoss_factory: Any, tmp_path: Path) -> None:
    source = tmp_path / "source"
    digests = write_sharded_model(str(source), 32, 4)
    server = localoss_factory("--bandwidth-mibps", "64")
    total = _upload(server, "coop", "m/", source)
    model_dir = tmp_path / "model"
    args = [server.endpoint, server.access_key_id, server.access_key_secret, "oss://coop/m/", str(model_dir)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", COOPERATOR, *args],
            env=_base_env(server, model_dir),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        reports = []
        for process in processes:
            assert process.stdout is not None
            reports.append(json.loads(process.stdout.readline()))
        for process in processes:
            process.communicate("\n", timeout=PROCESS_TIMEOUT_S)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert [process.returncode for process in processes] == [0, 0]
    assert sorted(report["kind"] for report in reports) == ["AttachedDirectory", "PreparedDirectory"]
    assert all(report["protocol"] for report in reports)  # both kinds are what prepare_directory promises
    assert all(report["digests"] == digests for report in reports)
    fetched = sorted(report["bytes"] for report in reports)
    assert fetched[0] == 0  # the process that attached downloaded nothing
    assert total <= fetched[1] <= total + header_allowance(source)  # the owner, each byte once


def test_run_passes_signals_on_and_returns_the_exit_code(localoss: LocalOss, tmp_path: Path) -> None:
    localoss.make_bucket("nocode-signal")
    localoss.put_file("nocode-signal", "m/config.json", b"{}")
    program = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    command = [sys.executable, "-m", "ossmodelconnector.cli", "run", "--endpoint", localoss.endpoint]
    command += ["oss://nocode-signal/m/", str(tmp_path / "model"), "--", sys.executable, "-c", program]
    wrapper = subprocess.Popen(
        command, env=_base_env(localoss, tmp_path / "model"), stdout=subprocess.PIPE, text=True
    )
    try:
        assert wrapper.stdout is not None and wrapper.stdout.readline().strip() == "ready"
        wrapper.send_signal(signal.SIGTERM)  # to the wrapper only: it must pass it on
        assert wrapper.wait(PROCESS_TIMEOUT_S) == 42
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()
        if wrapper.stdout is not None:
            wrapper.stdout.close()
    usage = subprocess.run(
        [sys.executable, "-m", "ossmodelconnector.cli", "run", "oss://b/m/", str(tmp_path / "x")],
        env=_base_env(localoss, tmp_path / "x"),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    assert usage.returncode == 2 and "give the program to run after --" in usage.stderr
