"""``prepare_directory(..., lazy=True)`` over a real ``localoss``: the Stable Diffusion web UI's folder.

Six generated checkpoints (diffusers-style tensor names, a few MiB each) and one ``.ckpt``; chunks of
1 MiB and a ``memoryLimitMB`` that holds two of them. The server's requests are read back from the
connector's ``auditPath``; the memory held is sampled from the data segments' allocated blocks in
``/dev/shm`` (what tmpfs really holds) while the models are switched.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from localoss_harness import LocalOss
from multiprocess_workers import mapping_rss, read_first_bytes
from safetensors.torch import load_file, save

from ossmodelconnector import ConfigError, OssModelConnector
from ossmodelconnector.directory.exported import exported_directories
from ossmodelconnector.oss.credentials import Credentials
from ossmodelconnector.oss.request_log import AuditRecord, parse_audit_line

MIB = 1 << 20
PREFIX = "sd/models/Stable-diffusion/"
LIMIT_MB = 7  # two checkpoints of ~3 MiB fit, three do not


def _checkpoint(seed: int) -> tuple[bytes, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        "model.diffusion_model.input_blocks.0.0.weight": (256, 1024),
        "model.diffusion_model.out.2.bias": (4,),
        "first_stage_model.decoder.conv_in.weight": (128, 1024),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (384, 1024),
    }
    tensors = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    return save(tensors, metadata={"format": "pt"}), tensors


def _folder() -> tuple[dict[str, bytes], dict[str, dict[str, torch.Tensor]]]:
    files: dict[str, bytes] = {}
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for number, name in enumerate("ABCDEF"):
        files[f"{name}.safetensors"], tensors[f"{name}.safetensors"] = _checkpoint(number)
    _, ckpt_tensors = _checkpoint(99)
    buffer = io.BytesIO()
    torch.save({"state_dict": ckpt_tensors}, buffer)
    files["G-legacy.ckpt"], tensors["G-legacy.ckpt"] = buffer.getvalue(), ckpt_tensors
    files["G-legacy.yaml"] = b"model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    return files, tensors


FILES, TENSORS = _folder()
LARGE = sorted(name for name, data in FILES.items() if len(data) >= MIB)


@pytest.fixture
def sd_bucket(localoss: LocalOss, bucket: str) -> str:
    for name, data in FILES.items():
        localoss.put_file(bucket, PREFIX + name, data)
    return bucket


@pytest.fixture
def make_connector(localoss: LocalOss, tmp_path: Path) -> Iterator[Callable[..., OssModelConnector]]:
    made: list[OssModelConnector] = []

    def make(**settings: object) -> OssModelConnector:
        config = {"smallFileMB": 1, "chunkSizeMB": 1, "memoryLimitMB": LIMIT_MB, "prefetch": {"vcpus": 2}}
        config.update(settings)
        config["auditPath"] = str(tmp_path / f"audit-{len(made)}.log")
        path = tmp_path / f"config-{len(made)}.json"
        path.write_text(json.dumps(config))
        creds = Credentials(localoss.access_key_id, localoss.access_key_secret)
        connector = OssModelConnector(localoss.endpoint, cred_provider=creds, config_path=str(path))
        made.append(connector)
        return connector

    yield make
    for connector in made:
        connector.close()


def _requests(connector: OssModelConnector) -> list[AuditRecord]:
    with open(connector.config.audit_path, encoding="utf-8") as audit:
        return [parse_audit_line(line) for line in audit]


def _bytes_fetched(records: list[AuditRecord], name: str) -> int:
    return sum(record.nbytes for record in records if record.method == "GET" and record.key == PREFIX + name)


def _resident_bytes(model_dir: Path) -> int:
    """What tmpfs holds for the large files now: the allocated blocks of their data segments."""
    return sum(os.stat(model_dir / name).st_blocks * 512 for name in LARGE)


class _Sampler:
    """Samples the memory held (segments' blocks and the connector's own count) until stopped."""

    def __init__(self, connector: OssModelConnector, model_dir: Path) -> None:
        self.peak_blocks = 0
        self.peak_held = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(connector, model_dir), daemon=True)
        self._thread.start()

    def _run(self, connector: OssModelConnector, model_dir: Path) -> None:
        while not self._stop.wait(0.002):
            self.peak_blocks = max(self.peak_blocks, _resident_bytes(model_dir))
            self.peak_held = max(self.peak_held, connector.stats()["lazy_held_bytes"])
            self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _load_like_the_web_ui(path: Path) -> str:
    """Load a checkpoint as the web UI does, check its tensors, and hash it in 1 MiB blocks."""
    name = path.name
    if name.endswith(".ckpt"):
        state = torch.load(path, map_location="cpu")["state_dict"]
    else:
        state = load_file(path, device="cpu")
    assert state.keys() == TENSORS[name].keys()
    for key, expected in TENSORS[name].items():
        assert torch.equal(state[key], expected), (name, key)
    del state  # the web UI copies the weights into its model and drops the state dict
    gc.collect()
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def _states(connector: OssModelConnector, model_dir: Path) -> dict[str, str]:
    return {name: connector.status(model_dir / name)["state"] for name in LARGE}


def test_lazy_prepare_fetches_nothing_large_and_switching_stays_within_the_limit(
    make_connector: Callable[..., OssModelConnector], sd_bucket: str, tmp_path: Path
) -> None:
    connector = make_connector()
    model_dir = tmp_path / "Stable-diffusion"
    prepared = connector.prepare_directory(f"oss://{sd_bucket}/{PREFIX}", model_dir, lazy=True)

    # Every entry at once, with its name and size, so that the UI lists them; nothing large fetched.
    assert sorted(os.listdir(model_dir)) == sorted([*FILES, ".ossmodelconnector"])
    for name in LARGE:
        assert os.path.getsize(model_dir / name) == len(FILES[name])
    assert (model_dir / "G-legacy.yaml").read_bytes() == FILES["G-legacy.yaml"]
    records = _requests(connector)
    assert all(_bytes_fetched(records, name) == 0 for name in LARGE), records
    assert not [
        record
        for record in records
        if record.method == "GET" and record.key.endswith(("safetensors", "ckpt"))
    ]
    assert _resident_bytes(model_dir) == 0
    assert set(_states(connector, model_dir).values()) == {"not fetched"}
    assert prepared.lazy_files is not None and prepared.placement == "shm"

    sampler = _Sampler(connector, model_dir)
    try:
        digests = {}
        for name in ("A.safetensors", "B.safetensors", "G-legacy.ckpt"):
            digests[name] = _load_like_the_web_ui(model_dir / name)
            assert digests[name] == hashlib.sha256(FILES[name]).hexdigest()
        states = _states(connector, model_dir)
        assert states["A.safetensors"] == "evicted"  # least recently used when the .ckpt was opened
        assert states["B.safetensors"] == states["G-legacy.ckpt"] == "cached"
        assert states["C.safetensors"] == "not fetched"
        assert os.stat(model_dir / "A.safetensors").st_blocks == 0  # its pages went back to the system
        assert os.path.getsize(model_dir / "A.safetensors") == len(FILES["A.safetensors"])
        fetched_before = _bytes_fetched(_requests(connector), "A.safetensors")
        assert fetched_before == len(FILES["A.safetensors"])

        # Back to A: fetched again, transparently, and still correct.
        assert _load_like_the_web_ui(model_dir / "A.safetensors") == digests["A.safetensors"]
    finally:
        sampler.stop()
    records = _requests(connector)
    assert _bytes_fetched(records, "A.safetensors") == 2 * len(FILES["A.safetensors"])
    assert _bytes_fetched(records, "B.safetensors") == len(FILES["B.safetensors"])
    assert all(_bytes_fetched(records, name) == 0 for name in ("C.safetensors", "D.safetensors"))
    states = _states(connector, model_dir)
    assert states["A.safetensors"] == "cached" and states["B.safetensors"] == "evicted"
    assert connector.status(model_dir / "A.safetensors")["evictions"] == 1
    assert sampler.samples > 10
    assert 0 < sampler.peak_blocks <= LIMIT_MB * MIB
    assert 0 < sampler.peak_held <= LIMIT_MB * MIB
    assert connector.stats()["files"][str(model_dir / "A.safetensors")]["state"] == "cached"


def test_a_file_being_read_is_never_evicted(
    make_connector: Callable[..., OssModelConnector],
    sd_bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    connector = make_connector()
    model_dir = tmp_path / "models"
    connector.prepare_directory(f"oss://{sd_bucket}/{PREFIX}", model_dir, lazy=True)
    caplog.set_level(logging.INFO, logger="ossmodelconnector")
    with open(model_dir / "A.safetensors", "rb") as reading_a:
        head = reading_a.read(2 * MIB)  # reading it through: the whole file is fetched
        held_tensors = load_file(model_dir / "B.safetensors")  # zero-copy: maps B after the load returns
        for name in ("C.safetensors", "D.safetensors"):
            _load_like_the_web_ui(model_dir / name)
        states = _states(connector, model_dir)
        # A has a reader and B's tensors map it: C went to make room for D, over the limit (warned).
        assert states["A.safetensors"] == "cached" and states["B.safetensors"] == "cached"
        assert states["C.safetensors"] == "evicted" and states["D.safetensors"] == "cached"
        assert any("exceeds memoryLimitMB" in record.getMessage() for record in caplog.records)
        assert reading_a.read() == FILES["A.safetensors"][2 * MIB :]
    assert head == FILES["A.safetensors"][: 2 * MIB]
    for key, expected in TENSORS["B.safetensors"].items():
        assert torch.equal(held_tensors[key], expected)  # never zeroed under its holder
    del held_tensors
    gc.collect()
    released = connector.gc(0)
    assert sorted(Path(item["path"]).name for item in released) == [
        "A.safetensors",
        "B.safetensors",
        "D.safetensors",
    ]
    assert all(item["reason"].endswith("(connector.gc())") for item in released)
    assert _resident_bytes(model_dir) == 0
    assert connector.stats()["lazy_held_bytes"] == 0


@pytest.mark.parametrize("holder", ["tensors", "raw descriptor"])
@pytest.mark.parametrize("spelling", ["cacheDir through a symlink", "model_dir through a symlinked parent"])
def test_what_a_reader_holds_is_never_evicted_however_the_paths_are_spelled(
    make_connector: Callable[..., OssModelConnector],
    sd_bucket: str,
    tmp_path: Path,
    spelling: str,
    holder: str,
) -> None:
    """B is held (tensors that map it, or an ``os.open`` descriptor) while C and D need room: B stays."""
    if spelling == "cacheDir through a symlink":
        (tmp_path / "shm").symlink_to("/dev/shm")  # what /run/shm is on many systems
        connector = make_connector(cacheDir=str(tmp_path / "shm"))
        model_dir = tmp_path / "models"
    else:
        (tmp_path / "real").mkdir()
        (tmp_path / "alias").symlink_to(tmp_path / "real")
        connector = make_connector()
        model_dir = tmp_path / "alias" / "models"
    connector.prepare_directory(f"oss://{sd_bucket}/{PREFIX}", model_dir, lazy=True)
    if holder == "tensors":
        held_tensors = load_file(model_dir / "B.safetensors")  # zero-copy: maps B after the load returns
    else:
        fd = os.open(model_dir / "B.safetensors", os.O_RDONLY)  # the safety net waits for the whole file
    try:
        for name in ("C.safetensors", "D.safetensors"):
            _load_like_the_web_ui(model_dir / name)
        assert _states(connector, model_dir)["B.safetensors"] == "cached"
        if holder == "tensors":
            for key, expected in TENSORS["B.safetensors"].items():
                assert torch.equal(held_tensors[key], expected)  # never zeroed under its holder
        else:
            assert os.pread(fd, len(FILES["B.safetensors"]), 0) == FILES["B.safetensors"]
    finally:
        if holder == "tensors":
            del held_tensors
            gc.collect()
        else:
            os.close(fd)
    released = connector.gc(0)  # nothing holds B any more: now it goes
    assert "B.safetensors" in {Path(item["path"]).name for item in released}


def test_listing_peeks_fetch_only_what_they_read(
    make_connector: Callable[..., OssModelConnector], sd_bucket: str, tmp_path: Path
) -> None:
    connector = make_connector()
    model_dir = tmp_path / "models"
    connector.prepare_directory(f"oss://{sd_bucket}/{PREFIX}", model_dir, lazy=True)
    # What the web UI does to every checkpoint when it lists them: the legacy short hash (64 KiB at
    # offset 1 MiB) and, for safetensors, the metadata in the header.
    for name in LARGE:
        with open(model_dir / name, "rb") as stream:
            stream.seek(0x100000)
            assert stream.read(0x10000) == FILES[name][0x100000:0x110000]
        if name.endswith(".safetensors"):
            with open(model_dir / name, "rb") as stream:
                length = int.from_bytes(stream.read(8), "little")
                assert json.loads(stream.read(length))["__metadata__"] == {"format": "pt"}
    records = _requests(connector)
    for name in LARGE:  # the first two 1 MiB chunks at most, never the whole file
        assert 0 < _bytes_fetched(records, name) <= 2 * MIB < len(FILES[name]), name
    assert set(_states(connector, model_dir).values()) == {"not fetched"}
    # A load afterwards fetches the rest.
    _load_like_the_web_ui(model_dir / "B.safetensors")
    assert connector.status(model_dir / "B.safetensors")["state"] == "cached"
    # Its peeked chunks may have been released meanwhile (seven peeks exceed the limit): at most those twice.
    size = len(FILES["B.safetensors"])
    assert size <= _bytes_fetched(_requests(connector), "B.safetensors") <= size + 2 * MIB


def test_idle_files_are_released_by_the_timer_and_files_in_use_are_kept(
    make_connector: Callable[..., OssModelConnector],
    sd_bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    connector = make_connector(memoryLimitMB=0)
    model_dir = tmp_path / "models"
    caplog.set_level(logging.INFO, logger="ossmodelconnector")
    prepared = connector.prepare_directory(
        f"oss://{sd_bucket}/{PREFIX}", model_dir, lazy=True, gc_idle_seconds=0.3
    )
    assert prepared.lazy_files is not None and prepared.lazy_files.gc_idle_seconds == 0.3
    segment_a = os.path.realpath(model_dir / "A.safetensors")
    _load_like_the_web_ui(model_dir / "A.safetensors")
    # A's pages are in the cache file (written with pwrite, so the cache's own mapping may hold none).
    assert os.stat(segment_a).st_blocks > 0
    with open(model_dir / "B.safetensors", "rb") as in_use:
        in_use.read(2 * MIB)  # reading it through: fetched whole, and in use while open
        released = threading.Event()

        def a_released() -> bool:
            return connector.status(model_dir / "A.safetensors")["state"] == "evicted"

        for _ in range(200):
            if a_released():
                released.set()
                break
            released.wait(0.05)
        assert released.is_set(), connector.status(model_dir / "A.safetensors")
        # B stays in use past the idle time: a pass of the timer that began once B had not been read for
        # gc_idle_seconds has run to its end, and kept B (it is open).
        passes: list[float] = []  # when each finished pass began, on the clock of last_used_at
        collect = prepared.lazy_files.collect

        def timed_collect(idle_s: float | None = None, why: str | None = None) -> object:
            began = time.time()
            done = collect(idle_s, why)
            passes.append(began)
            return done

        prepared.lazy_files.collect = timed_collect  # type: ignore[method-assign]
        idle_from = connector.status(model_dir / "B.safetensors")["last_used_at"] + 0.3
        for _ in range(200):
            if passes and passes[-1] >= idle_from:
                break
            threading.Event().wait(0.05)
        assert passes and passes[-1] >= idle_from, (passes, idle_from)
        assert connector.status(model_dir / "B.safetensors")["state"] in ("cached", "fetching")
        assert os.stat(model_dir / "B.safetensors").st_blocks > 0
        assert in_use.read() == FILES["B.safetensors"][2 * MIB :]
    assert os.stat(segment_a).st_blocks == 0
    assert mapping_rss(segment_a) == 0  # and the process's RSS no longer holds them
    messages = [record.getMessage() for record in caplog.records]
    assert any("released" in m and "A.safetensors" in m and "gc.idleSeconds=0.3" in m for m in messages)
    for _ in range(200):  # B, closed now, is released once idle too
        if connector.status(model_dir / "B.safetensors")["state"] == "evicted":
            break
        threading.Event().wait(0.05)
    assert connector.status(model_dir / "B.safetensors")["state"] == "evicted"
    # Reading A again fetches it again.
    assert (
        _load_like_the_web_ui(model_dir / "A.safetensors")
        == hashlib.sha256(FILES["A.safetensors"]).hexdigest()
    )


def test_gc_settings_come_from_the_nested_config_and_the_timer_thread_goes_with_the_connector(
    make_connector: Callable[..., OssModelConnector], sd_bucket: str, tmp_path: Path
) -> None:
    connector = make_connector(gc={"idleSeconds": 45})
    assert connector.config.gc_idle_seconds == 45
    prepared = connector.prepare_directory(f"oss://{sd_bucket}/{PREFIX}", tmp_path / "m", lazy=True)
    assert prepared.lazy_files is not None and prepared.lazy_files.gc_idle_seconds == 45
    assert any(thread.name.startswith("ossmodelconnector-gc") for thread in threading.enumerate())
    connector.close()
    assert not any(thread.name.startswith("ossmodelconnector-gc") for thread in threading.enumerate())


def test_lazy_with_wait_and_a_bad_idle_time_are_refused(
    make_connector: Callable[..., OssModelConnector], sd_bucket: str, tmp_path: Path
) -> None:
    connector = make_connector()
    with pytest.raises(ConfigError, match="lazy=True, wait=True"):
        connector.prepare_directory(f"oss://{sd_bucket}/{PREFIX}", tmp_path / "m", lazy=True, wait=True)
    with pytest.raises(ConfigError, match="gc_idle_seconds"):
        connector.prepare_directory(
            f"oss://{sd_bucket}/{PREFIX}", tmp_path / "m", lazy=True, gc_idle_seconds=-1
        )
    with pytest.raises(ConfigError, match="idle_seconds"):
        connector.gc(-1)
    with pytest.raises(FileNotFoundError, match="not a file of a directory"):
        connector.status(tmp_path / "elsewhere.safetensors")
    assert not (tmp_path / "m").exists()


def _read_in_child(method: str, path: Path) -> tuple[str, str]:
    context = multiprocessing.get_context(method)
    results = context.Queue()
    child = context.Process(target=read_first_bytes, args=(str(path), results))
    child.start()
    try:
        return results.get(timeout=120)
    finally:
        child.join(60)


PREPARE_AGAIN = """
import sys
from ossmodelconnector import OssModelConnector
from ossmodelconnector.oss.credentials import Credentials
credentials = Credentials(sys.argv[2], sys.argv[3])
with OssModelConnector(sys.argv[1], cred_provider=credentials, small_file_mb=1, chunk_size_mb=1) as c:
    try:
        c.prepare_directory(sys.argv[4], sys.argv[5])
        print("attached")
    except Exception as exc:
        print(type(exc).__name__, str(exc).replace("\\n", " "))
"""


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_other_processes_are_refused_a_lazy_directory_never_given_zeros(
    localoss: LocalOss,
    sd_bucket: str,
    make_connector: Callable[..., OssModelConnector],
    tmp_path: Path,
    method: str,
) -> None:
    connector = make_connector()
    model_dir = tmp_path / "sd"
    uri = f"oss://{sd_bucket}/{PREFIX}"
    connector.prepare_directory(uri, model_dir, lazy=True)
    name = LARGE[0]
    # Listed for the children as an eager directory is: they learn of it, and are refused its files.
    assert str(model_dir) in exported_directories()
    for _ in range(2):  # before this process opened the file (nothing fetched), and after
        kind, message = _read_in_child(method, model_dir / name)
        assert kind == "CacheError", (kind, message[:200])  # never its bytes, never zeros
        assert str(model_dir / name) in message and "lazy" in message and "lazy=True" in message
        assert _load_like_the_web_ui(model_dir / name)  # this process reads it
    assert _read_in_child(method, model_dir / "G-legacy.yaml") == ("bytes", FILES["G-legacy.yaml"].hex())
    # Another process preparing the same directory from the same URI attaches to its owner: refused too.
    command = [sys.executable, "-c", PREPARE_AGAIN, localoss.endpoint, localoss.access_key_id]
    command += [localoss.access_key_secret, uri, str(model_dir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    kind, message = (done.stdout.strip() or done.stderr[-2000:]).split(" ", 1)
    assert kind == "CacheError" and f"{model_dir} was prepared lazily by process {os.getpid()}" in message
    assert "without lazy=True" in message
