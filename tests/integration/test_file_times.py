"""File times that caches can trust: every entry shows its object's ``Last-Modified`` as ``st_mtime``.

The Stable Diffusion web UI (``modules/hashes.py``) and ComfyUI keep a sha256 per checkpoint keyed on
the file's modification time and hash the whole file again when it moves. Here a cache keyed on
``(path, st_mtime)`` like theirs, persisted to JSON like the web UI's ``cache.json``, is driven through
model switches under a ``memoryLimitMB`` that forces eviction, a restart in the same process and a new
process, with a real ``localoss`` whose objects carry past ``Last-Modified`` dates; and ``os.stat`` is
hammered from a thread while the files stream in and are punched out. Times are compared exactly
(HTTP dates are whole seconds); nothing is timed.
"""

from __future__ import annotations

import hashlib
import json
import os
import posix
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from localoss_harness import LocalOss

from ossmodelconnector import OssModelConnector
from ossmodelconnector.environment import PREPARED_DIRS_ENV
from ossmodelconnector.oss.credentials import Credentials

MIB = 1 << 20
PREFIX = "sd/Stable-diffusion/"
CHECKPOINTS = ("A.safetensors", "B.safetensors", "C.safetensors")
SMALL = ("A.yaml", "config.json")
LIMIT_MB = 4  # one 3 MiB checkpoint fits, two do not: every switch evicts the one before
BASE_TIME = 1_620_284_889  # 2021-05-06T07:08:09Z
LAST_MODIFIED = {name: BASE_TIME + 3600 * i for i, name in enumerate(CHECKPOINTS + SMALL)}
DATA = {
    name: random.Random(i).randbytes(3 * MIB if name in CHECKPOINTS else 200)
    for i, name in enumerate(LAST_MODIFIED)
}
CHILD_TIMEOUT_S = 120.0


class HashCache:
    """The web UI's sha256 cache: ``{title: {"mtime", "sha256"}}`` in a JSON file, keyed on mtime.

    A file whose ``os.path.getmtime`` differs from the cached one is read whole (1 MiB blocks, as the web
    UI hashes) and hashed again: ``computed`` counts those.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, object]] = json.loads(path.read_text()) if path.exists() else {}
        self.computed: list[str] = []

    def sha256(self, filename: Path) -> str:
        title = filename.name
        mtime = os.path.getmtime(filename)
        cached = self.entries.get(title)
        if cached is not None and cached["mtime"] == mtime:
            return str(cached["sha256"])
        digest = hashlib.sha256()
        with open(filename, "rb") as file:
            for block in iter(lambda: file.read(MIB), b""):
                digest.update(block)
        self.computed.append(title)
        self.entries[title] = {"mtime": mtime, "sha256": digest.hexdigest()}
        self.path.write_text(json.dumps(self.entries))
        return digest.hexdigest()


@pytest.fixture
def dated_bucket(localoss: LocalOss, bucket: str) -> str:
    for name, data in DATA.items():
        path = localoss.put_file(bucket, PREFIX + name, data)
        os.utime(path, (LAST_MODIFIED[name], LAST_MODIFIED[name]))  # the server's Last-Modified
    return bucket


@pytest.fixture
def make_connector(localoss: LocalOss, tmp_path: Path) -> Iterator[Callable[..., OssModelConnector]]:
    made: list[OssModelConnector] = []

    def make(server: LocalOss = localoss, **settings: object) -> OssModelConnector:
        config = {"smallFileMB": 1, "chunkSizeMB": 1, "memoryLimitMB": LIMIT_MB, "prefetch": {"vcpus": 2}}
        config.update(settings)
        path = tmp_path / f"config-{len(made)}.json"
        path.write_text(json.dumps(config))
        creds = Credentials(server.access_key_id, server.access_key_secret)
        connector = OssModelConnector(server.endpoint, cred_provider=creds, config_path=str(path))
        made.append(connector)
        return connector

    yield make
    for connector in made:
        connector.close()


def _times(model_dir: Path, stat: Callable[[Path], os.stat_result] = os.stat) -> dict[str, float]:
    return {name: stat(model_dir / name).st_mtime for name in LAST_MODIFIED}


def _switch(model_dir: Path, name: str, hashes: HashCache) -> None:
    """What the web UI does on a checkpoint switch: the hash (cached on mtime), then the load."""
    path = model_dir / name
    assert os.path.getmtime(path) == LAST_MODIFIED[name]
    assert hashes.sha256(path) == hashlib.sha256(DATA[name]).hexdigest()
    with open(path, "rb") as file:
        assert file.read() == DATA[name]
    assert os.path.getmtime(path) == LAST_MODIFIED[name]


def test_a_hash_cache_keyed_on_mtime_survives_evictions_and_restarts(
    dated_bucket: str, make_connector: Callable[..., OssModelConnector], tmp_path: Path, localoss: LocalOss
) -> None:
    model_dir = tmp_path / "Stable-diffusion"
    cache_file = tmp_path / "cache.json"
    uri = f"oss://{dated_bucket}/{PREFIX}"
    connector = make_connector()
    connector.prepare_directory(uri, model_dir, lazy=True)
    assert _times(model_dir) == LAST_MODIFIED  # before anything large is fetched
    assert {name: os.lstat(model_dir / name).st_mtime for name in CHECKPOINTS} == {
        name: LAST_MODIFIED[name] for name in CHECKPOINTS
    }  # the symlinks' own times too

    hashes = HashCache(cache_file)
    for name in ("A.safetensors", "B.safetensors", "C.safetensors", "A.safetensors", "B.safetensors"):
        _switch(model_dir, name, hashes)
    for name in SMALL:
        hashes.sha256(model_dir / name)
    assert hashes.computed == [*CHECKPOINTS, *SMALL]  # each hashed once: zero recomputations
    states = {name: connector.status(str(model_dir / name)) for name in CHECKPOINTS}
    assert states["A.safetensors"]["evictions"] >= 1 and states["B.safetensors"]["evictions"] >= 1
    assert states["A.safetensors"]["state"] == "evicted"
    assert _times(model_dir, posix.stat) == LAST_MODIFIED  # the kernel's own times, not only the hook's
    connector.close()

    # A restart: a new connector prepares the same folder, and the persisted cache still holds.
    again = make_connector()
    again.prepare_directory(uri, model_dir, lazy=True)
    assert _times(model_dir, posix.stat) == LAST_MODIFIED
    restarted = HashCache(cache_file)
    for name in ("C.safetensors", "A.safetensors"):
        _switch(model_dir, name, restarted)
    for name in (*CHECKPOINTS, *SMALL):
        restarted.sha256(model_dir / name)
    assert restarted.computed == []
    again.close()

    # And a new process preparing the same folder, as the web UI does at its next start.
    result = _run_web_ui_in_a_new_process(localoss, uri, model_dir, cache_file)
    assert result["times"] == {name: float(time) for name, time in LAST_MODIFIED.items()}
    assert result["computed"] == []
    assert result["evictions"] >= 1


_WEB_UI_CHILD = r"""
import hashlib, json, os, sys
from ossmodelconnector import OssModelConnector
from ossmodelconnector.oss.credentials import Credentials
endpoint, key_id, secret, uri, model_dir, cache_file, names = sys.argv[1:8]
names = json.loads(names)
# chunkSizeMB, smallFileMB and memoryLimitMB come from the OSSMC_* environment
with OssModelConnector(endpoint, cred_provider=Credentials(key_id, secret)) as connector:
    connector.prepare_directory(uri, model_dir, lazy=True)
    entries = json.load(open(cache_file))
    times, computed = {}, []
    for name in names + names[:1]:
        path = os.path.join(model_dir, name)
        mtime = os.path.getmtime(path)
        times[name] = mtime
        if entries.get(name, {}).get("mtime") != mtime:
            computed.append(name)
        with open(path, "rb") as file:
            while file.read(1 << 20):
                pass
        if os.path.getmtime(path) != mtime:
            computed.append(name + " (moved during the load)")
    large = [name for name in names if name.endswith(".safetensors")]
    evictions = sum(connector.status(os.path.join(model_dir, name))["evictions"] for name in large)
    print(json.dumps({"times": times, "computed": computed, "evictions": evictions}))
"""


def _run_web_ui_in_a_new_process(localoss: LocalOss, uri: str, model_dir: Path, cache_file: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if key != PREPARED_DIRS_ENV}
    env["OSSMC_MEMORY_LIMIT_MB"] = str(LIMIT_MB)
    env["OSSMC_CHUNK_SIZE_MB"] = "1"
    env["OSSMC_SMALL_FILE_MB"] = "1"
    names = json.dumps(sorted(LAST_MODIFIED))
    args = [localoss.endpoint, localoss.access_key_id, localoss.access_key_secret, uri, str(model_dir)]
    completed = subprocess.run(
        [sys.executable, "-c", _WEB_UI_CHILD, *args, str(cache_file), names],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


class _StatHammer:
    """A thread that stats every entry (and its data file) in a loop and keeps any time but Last-Modified.

    ``during`` counts the samples taken while the main thread had a fetch running (``streaming`` set).
    """

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.wrong: list[tuple[str, str, float]] = []
        self.samples = 0
        self.during = 0
        self.raw_moved = 0  # what an unhooked reader would have seen (the kernel's time), for the record
        self.streaming = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _StatHammer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(CHILD_TIMEOUT_S)

    def _run(self) -> None:
        entries = {name: self.model_dir / name for name in CHECKPOINTS}
        data = {name: os.path.realpath(path) for name, path in entries.items()}
        while not self._stop.is_set():
            streaming = self.streaming.is_set()
            for name, path in entries.items():
                expected = LAST_MODIFIED[name]
                seen = {
                    "os.stat": os.stat(path).st_mtime,
                    "os.path.getmtime": os.path.getmtime(path),
                    "Path.stat": path.stat().st_mtime,
                    "os.stat(data file)": os.stat(data[name]).st_mtime_ns / 1e9,
                    "os.lstat(data file)": os.lstat(data[name]).st_mtime,
                }
                self.wrong += [(name, how, value) for how, value in seen.items() if value != expected]
                self.raw_moved += posix.stat(path).st_mtime != expected
                self.samples += 1
                self.during += streaming


def test_stat_never_shows_another_time_while_files_stream_in_and_are_evicted(
    dated_bucket: str,
    make_connector: Callable[..., OssModelConnector],
    localoss_factory: Callable[..., LocalOss],
    localoss: LocalOss,
    tmp_path: Path,
) -> None:
    slow = localoss_factory("--bandwidth-mibps", "8")  # each checkpoint streams for a while
    for name, data in DATA.items():
        os.utime(slow.put_file(dated_bucket, PREFIX + name, data), (LAST_MODIFIED[name],) * 2)
    model_dir = tmp_path / "Stable-diffusion"
    connector = make_connector(slow)
    connector.prepare_directory(f"oss://{dated_bucket}/{PREFIX}", model_dir, lazy=True)
    with _StatHammer(model_dir) as hammer:
        for name in ("A.safetensors", "B.safetensors", "C.safetensors", "A.safetensors"):
            hammer.streaming.set()
            with open(model_dir / name, "rb") as file:  # reads it through: fetched whole, others evicted
                assert file.read() == DATA[name]
            hammer.streaming.clear()
    # The kernel's own time moved hammer.raw_moved times (between a write and the time set back): the
    # hook reported Last-Modified every time.
    assert hammer.wrong == [], f"{len(hammer.wrong)} of {hammer.samples} samples; kernel: {hammer.raw_moved}"
    assert hammer.during > 0 and hammer.samples >= hammer.during
    assert connector.status(str(model_dir / "A.safetensors"))["evictions"] >= 1
    assert _times(model_dir, posix.stat) == LAST_MODIFIED


def test_an_eager_directory_shows_last_modified_to_readers_with_and_without_hooks(
    dated_bucket: str,
    make_connector: Callable[..., OssModelConnector],
    localoss_factory: Callable[..., LocalOss],
    tmp_path: Path,
) -> None:
    slow = localoss_factory("--bandwidth-mibps", "8")
    for name, data in DATA.items():
        os.utime(slow.put_file(dated_bucket, PREFIX + name, data), (LAST_MODIFIED[name],) * 2)
    model_dir = tmp_path / "model"
    connector = make_connector(slow, memoryLimitMB=0)
    prepared = connector.prepare_directory(f"oss://{dated_bucket}/{PREFIX}", model_dir)
    # A reader process started while the weights stream in (OSSMC_PREPARED_DIRS: hooked, attached).
    reader = subprocess.run(
        [sys.executable, "-c", _READER_CHILD, str(model_dir), json.dumps(LAST_MODIFIED)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    assert reader.returncode == 0, reader.stderr
    report = json.loads(reader.stdout.strip().splitlines()[-1])
    assert report["wrong"] == [] and report["samples"] > 0 and report["hooked"]
    prepared.wait()
    assert _times(model_dir, posix.stat) == LAST_MODIFIED
    links = {name: posix.lstat(model_dir / name).st_mtime for name in CHECKPOINTS}
    assert links == {name: LAST_MODIFIED[name] for name in CHECKPOINTS}
    # A process without the hooks (no OSSMC_PREPARED_DIRS) reads the kernel's times: the same.
    env = {key: value for key, value in os.environ.items() if key != PREPARED_DIRS_ENV}
    plain = subprocess.run(
        [sys.executable, "-c", _PLAIN_CHILD, str(model_dir), json.dumps(sorted(LAST_MODIFIED))],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        env=env,
        check=False,
    )
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout.strip().splitlines()[-1]) == {
        name: float(time) for name, time in LAST_MODIFIED.items()
    }


_READER_CHILD = r"""
import json, os, sys
model_dir, expected = sys.argv[1], json.loads(sys.argv[2])
hooked = os.stat is not __import__("posix").stat
wrong, samples = [], 0
for name in sorted(expected):
    path = os.path.join(model_dir, name)
    with open(path, "rb") as file:
        while True:
            mtime = os.path.getmtime(path)
            samples += 1
            if mtime != expected[name]:
                wrong.append([name, mtime])
            if not file.read(256 << 10):  # waits for the bytes as they stream in
                break
print(json.dumps({"wrong": wrong, "samples": samples, "hooked": hooked}))
"""

_PLAIN_CHILD = r"""
import json, os, sys
model_dir, names = sys.argv[1], json.loads(sys.argv[2])
assert os.stat is __import__("posix").stat, "hooked"
print(json.dumps({name: os.path.getmtime(os.path.join(model_dir, name)) for name in names}))
"""
