"""``OssModelConnector.prepare_directory`` over a real ``localoss``: layout, bytes, re-prepare, errors, close.

The fake model has configs, a tokenizer, an empty file, sub-folders and four safetensors "shards" of
random tensors; the config file sets ``smallFileMB: 1`` so the shards stream into the cache behind
symlinks while the rest is downloaded to disk.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from localoss_harness import LocalOss, raw_request
from safetensors import safe_open  # bound before any prepare: the hooks patch this module's global too
from safetensors.numpy import save

from ossmodelconnector import (
    ConnectorError,
    IntegrityError,
    ObjectNotFoundError,
    OssModelConnector,
    UnsafePathError,
)
from ossmodelconnector.cache.manifest import OWN_DIR_NAME
from ossmodelconnector.cache.segments import state_table_name
from ossmodelconnector.directory.safety import read_owner
from ossmodelconnector.oss.credentials import Credentials
from ossmodelconnector.oss.request_log import parse_audit_line

MIB = 1 << 20
PREFIX = "models/tiny/"


def _shard(seed: int, megabytes: float) -> tuple[bytes, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    count = 4
    per_tensor = int(megabytes * MIB / 4 / count)
    tensors = {
        f"layer.{seed}.{i}.weight": rng.standard_normal(per_tensor, dtype=np.float32) for i in range(count)
    }
    return save(tensors, metadata={"format": "pt"}), tensors


def _fake_model() -> tuple[dict[str, bytes], dict[str, dict[str, np.ndarray]]]:
    files: dict[str, bytes] = {}
    tensors: dict[str, dict[str, np.ndarray]] = {}
    for number, size in ((1, 2.5), (2, 3.2), (3, 1.7)):
        name = f"model-0000{number}-of-00003.safetensors"
        files[name], tensors[name] = _shard(number, size)
    files["text_encoder/model.safetensors"], tensors["text_encoder/model.safetensors"] = _shard(9, 1.3)
    index = {
        "metadata": {"total_size": sum(len(data) for data in files.values())},
        "weight_map": {key: name for name, shard in tensors.items() for key in shard if "/" not in name},
    }
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    files["config.json"] = json.dumps({"architectures": ["Tiny"], "hidden_size": 64}).encode()
    files["generation_config.json"] = b'{"do_sample": false}'
    files["tokenizer.json"] = json.dumps({"vocab": {f"tok{i}": i for i in range(20000)}}).encode()
    files["text_encoder/config.json"] = b'{"hidden_size": 32}'
    files["scheduler/scheduler_config.json"] = b'{"steps": 50}'
    files["empty.txt"] = b""
    files["almost-large.bin"] = random.Random(5).randbytes(MIB - 1)  # one byte below smallFileMB
    return files, tensors


FILES, TENSORS = _fake_model()
LARGE = sorted(name for name, data in FILES.items() if len(data) >= MIB)
SMALL = sorted(name for name, data in FILES.items() if len(data) < MIB)


@pytest.fixture
def model_bucket(localoss: LocalOss, bucket: str) -> str:
    for name, data in FILES.items():
        localoss.put_file(bucket, PREFIX + name, data)
    localoss.put_file(bucket, "models/tiny-other/config.json", b"{}")  # shares the prefix's first letters
    return bucket


@pytest.fixture
def config_path(tmp_path: Path) -> str:
    path = tmp_path / "ossmc.json"
    path.write_text(json.dumps({"smallFileMB": 1, "chunkSizeMB": 1, "prefetch": {"vcpus": 2, "workers": 2}}))
    return str(path)


@pytest.fixture
def make_connector(localoss: LocalOss, config_path: str) -> Iterator[Callable[..., OssModelConnector]]:
    made: list[OssModelConnector] = []

    def make(server: LocalOss = localoss, **overrides: object) -> OssModelConnector:
        creds = Credentials(server.access_key_id, server.access_key_secret)
        connector = OssModelConnector(
            server.endpoint, cred_provider=creds, config_path=config_path, **overrides
        )
        made.append(connector)
        return connector

    yield make
    for connector in made:
        connector.close()


@pytest.fixture
def connector(make_connector: Callable[..., OssModelConnector]) -> OssModelConnector:
    return make_connector()


def _read_raw(path: str) -> bytes:
    # Straight from the segment, around every hook: only valid once the file is complete.
    fd = os.open(os.path.realpath(path), os.O_RDONLY)
    try:
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)


def _dangling(root: Path) -> list[str]:
    return [str(path) for path in root.rglob("*") if os.path.islink(path) and not os.path.exists(path)]


def _shm_targets(model_dir: Path) -> list[str]:
    return sorted(os.readlink(model_dir / name) for name in LARGE)


# --- layout -----------------------------------------------------------------------------------------------


def test_prepare_lays_out_small_files_and_full_size_large_entries(
    connector: OssModelConnector, model_bucket: str, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    prepared = connector.prepare_directory(f"oss://{model_bucket}/{PREFIX}", model_dir)

    assert prepared.model_dir == str(model_dir)
    assert [file.name for file in prepared.files] == sorted(FILES)
    for name in SMALL:  # on disk, complete, as soon as prepare returns
        path = model_dir / name
        assert path.is_file() and not path.is_symlink(), name
        assert path.read_bytes() == FILES[name], name
    for name in LARGE:
        path = model_dir / name
        assert path.is_symlink(), name
        assert os.path.isfile(path)
        assert os.path.getsize(path) == len(FILES[name]), name
    assert sorted(glob.glob(str(model_dir / "*.safetensors"))) == [
        str(model_dir / name) for name in LARGE if "/" not in name
    ]
    assert sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*.safetensors")) == LARGE
    for folder in ("text_encoder", "scheduler"):
        assert os.lstat(model_dir / folder).st_mode & 0o777 == 0o700
    assert prepared.placement == "shm"
    assert all(target.startswith("/dev/shm/") for target in _shm_targets(model_dir))
    assert not (model_dir.parent / "tiny-other").exists()
    assert "config.json" not in os.listdir(model_dir / "scheduler")

    prepared.wait()
    for name in LARGE:
        assert _read_raw(str(model_dir / name)) == FILES[name], name


def test_wait_returns_with_every_byte_local_and_verified(
    connector: OssModelConnector, model_bucket: str, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    prepared = connector.prepare_directory(f"oss://{model_bucket}/{PREFIX}", str(model_dir), wait=True)
    assert prepared.finished_at is not None
    for name in LARGE:
        assert _read_raw(str(model_dir / name)) == FILES[name], name
    files = connector.stats()["files"]
    for name, data in FILES.items():
        state = files[str(model_dir / name)]
        assert state["state"] == "cached", name
        assert state["percent"] == 100.0
        assert state["size"] == len(data)
        assert state["first_byte_at"] <= state["done_at"] <= prepared.finished_at


def test_reads_through_the_hooks_wait_for_the_bytes(
    connector: OssModelConnector, model_bucket: str, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    connector.prepare_directory(f"oss://{model_bucket}/{PREFIX}", model_dir)
    # Read at once, while the shards are still arriving: the hooks make each read wait.
    with open(model_dir / LARGE[-1], "rb") as stream:
        assert stream.read() == FILES[LARGE[-1]]
    for name in LARGE:
        with safe_open(str(model_dir / name), framework="numpy") as shard:
            assert sorted(shard.keys()) == sorted(TENSORS[name])
            for key, expected in TENSORS[name].items():
                np.testing.assert_array_equal(shard.get_tensor(key), expected)


def test_the_bucket_root_and_a_prefix_without_slash_work(
    connector: OssModelConnector, localoss: LocalOss, bucket: str, tmp_path: Path
) -> None:
    localoss.put_file(bucket, "config.json", b"{}")
    localoss.put_file(bucket, "weights/model.safetensors", FILES[LARGE[0]])
    prepared = connector.prepare_directory(f"oss://{bucket}", tmp_path / "whole", wait=True)
    assert [file.name for file in prepared.files] == ["config.json", "weights/model.safetensors"]
    assert _read_raw(str(tmp_path / "whole" / "weights" / "model.safetensors")) == FILES[LARGE[0]]
    prepared.close()  # one object version is prepared into one directory at a time
    connector.prepare_directory(f"oss://{bucket}/weights", tmp_path / "weights", wait=True)
    assert os.listdir(tmp_path / "weights") == sorted([OWN_DIR_NAME, "model.safetensors"])


def test_a_directory_marker_is_skipped(
    connector: OssModelConnector, localoss: LocalOss, bucket: str, tmp_path: Path
) -> None:
    localoss.put_file(bucket, "m/config.json", b"{}")
    assert raw_request(localoss, "PUT", bucket, "m/vae/").status == 200
    assert raw_request(localoss, "PUT", bucket, "m/").status == 200
    assert {info.key for info in connector.list(bucket, "m/")} >= {"m/vae/", "m/config.json"}
    prepared = connector.prepare_directory(f"oss://{bucket}/m/", tmp_path / "m")
    assert [file.name for file in prepared.files] == ["config.json"]


def test_a_reader_gets_its_tensors_before_the_last_shard_arrives(
    make_connector: Callable[..., OssModelConnector],
    localoss_factory: Callable[..., LocalOss],
    tmp_path: Path,
) -> None:
    # A slow link (slower than even the pure-Python CRC): the shards take seconds to arrive, headers
    # first, then in name order. Only tiny small files, so that prepare_directory returns at once.
    server = localoss_factory("--bandwidth-mibps", "4")
    for name in [*LARGE, "config.json"]:
        server.put_file("slow", PREFIX + name, FILES[name])
    connector = make_connector(server)
    model_dir = tmp_path / "model"
    connector.prepare_directory(f"oss://slow/{PREFIX}", model_dir)
    first = LARGE[0]
    with safe_open(str(model_dir / first), framework="numpy") as shard:
        key = sorted(TENSORS[first])[0]
        np.testing.assert_array_equal(shard.get_tensor(key), TENSORS[first][key])
    read_at = time.time()
    prepared = connector.stats()["directories"][str(model_dir)]
    assert prepared["finished_at"] is None or read_at <= prepared["finished_at"]
    with open(model_dir / LARGE[-1], "rb") as stream:  # waits for the last one, chunk by chunk
        assert stream.read() == FILES[LARGE[-1]]
    last = connector.stats()["files"][str(model_dir / LARGE[-1])]
    assert read_at < last["done_at"]  # the first tensor was read before the last shard had arrived


def test_large_files_go_to_disk_when_memory_is_limited(
    make_connector: Callable[..., OssModelConnector],
    model_bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    connector = make_connector(memory_limit_mb=1)
    model_dir = tmp_path / "model"
    prepared = connector.prepare_directory(f"oss://{model_bucket}/{PREFIX}", model_dir, wait=True)
    assert prepared.placement == "disk"
    assert any(
        "instead of" in record.getMessage() for record in caplog.records if record.levelname == "WARNING"
    )
    data_dir = model_dir / OWN_DIR_NAME / "data"
    for name in LARGE:
        assert os.readlink(model_dir / name).startswith(str(data_dir) + "/")
        assert _read_raw(str(model_dir / name)) == FILES[name]
    connector.close()
    assert not data_dir.exists()
    assert _dangling(model_dir) == []


# --- again, and close ------------------------------------------------------------------------------------


def test_prepare_twice_cleans_the_previous_one(
    make_connector: Callable[..., OssModelConnector], model_bucket: str, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    first = make_connector()
    uri = f"oss://{model_bucket}/{PREFIX}"
    old = first.prepare_directory(uri, model_dir, wait=True)
    old_targets = _shm_targets(model_dir)
    (model_dir / "stale.txt").write_text("left over")
    (model_dir / "scheduler" / "old.bin").write_bytes(b"old")

    again = first.prepare_directory(uri, model_dir, wait=True)  # the same connector: replaces the first

    assert old.closed and not again.closed
    assert not (model_dir / "stale.txt").exists()
    assert not (model_dir / "scheduler" / "old.bin").exists()
    for name, data in FILES.items():
        assert (
            _read_raw(str(model_dir / name)) if name in LARGE else (model_dir / name).read_bytes()
        ) == data
    first.close()
    assert not any(os.path.lexists(target) for target in old_targets)

    # A new connector (a new process would do the same) cleans what the closed one left.
    second = make_connector()
    second.prepare_directory(uri, model_dir, wait=True)
    for name in LARGE:
        assert _read_raw(str(model_dir / name)) == FILES[name]


def test_another_connector_cannot_take_a_directory_being_served(
    make_connector: Callable[..., OssModelConnector], model_bucket: str, tmp_path: Path
) -> None:
    uri = f"oss://{model_bucket}/{PREFIX}"
    serving = make_connector()
    serving.prepare_directory(uri, tmp_path / "model")
    other = make_connector()
    for path in (tmp_path / "model", tmp_path / "model" / "text_encoder", tmp_path):
        with pytest.raises(UnsafePathError, match="still serving"):
            other.prepare_directory(uri, path)
    assert (tmp_path / "model" / "config.json").read_bytes() == FILES["config.json"]
    serving.close()
    other.prepare_directory(uri, tmp_path / "model", wait=True)


def _shm_names() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith("ossmc-")}


def _our_shm_names(model_dir: Path) -> set[str]:
    """This prepare's names in /dev/shm: its data segments and its state table (other runs may share it)."""
    names = {
        os.path.basename(os.readlink(model_dir / name)) for name in LARGE if os.path.islink(model_dir / name)
    }
    return names | {state_table_name(model_dir)}


def test_close_unlinks_the_cache_and_leaves_no_dangling_symlinks(
    connector: OssModelConnector, model_bucket: str, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    prepared = connector.prepare_directory(f"oss://{model_bucket}/{PREFIX}", model_dir)
    ours = _our_shm_names(model_dir)
    assert len(ours) == len(LARGE) + 1
    assert ours <= _shm_names()

    connector.close()

    assert prepared.closed
    assert not (ours & _shm_names()), f"left in /dev/shm: {sorted(ours & _shm_names())}"
    assert _dangling(model_dir) == []
    assert not any(os.path.lexists(model_dir / name) for name in LARGE)
    for name in SMALL:
        assert (model_dir / name).read_bytes() == FILES[name]
    record = read_owner(str(model_dir))
    assert record is not None and record["active"] is False
    connector.close()  # idempotent


def test_a_private_cache_dir_is_left_empty(
    make_connector: Callable[..., OssModelConnector], model_bucket: str, tmp_path: Path
) -> None:
    cache_dir = Path("/dev/shm") / f"ossmc-pytest-{os.getpid()}-{tmp_path.name}"
    cache_dir.mkdir()
    try:
        connector = make_connector(cache_dir=str(cache_dir))
        model_dir = tmp_path / "model"
        connector.prepare_directory(f"oss://{model_bucket}/{PREFIX}", model_dir, wait=True)
        assert all(target.startswith(str(cache_dir) + "/") for target in _shm_targets(model_dir))
        connector.close()
        assert os.listdir(cache_dir) == []
        assert _dangling(model_dir) == []
    finally:
        for name in os.listdir(cache_dir):
            os.unlink(cache_dir / name)
        cache_dir.rmdir()


def test_closing_the_connector_during_a_waiting_prepare_stops_it_cleanly(
    make_connector: Callable[..., OssModelConnector],
    localoss_factory: Callable[..., LocalOss],
    tmp_path: Path,
) -> None:
    server = localoss_factory("--bandwidth-mibps", "2")
    for name in [*LARGE, "config.json"]:
        server.put_file("slow", PREFIX + name, FILES[name])
    connector = make_connector(server)
    model_dir = tmp_path / "model"
    outcome: list[BaseException | None] = []

    def prepare() -> None:
        try:
            connector.prepare_directory(f"oss://slow/{PREFIX}", model_dir, wait=True)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=prepare)
    thread.start()
    while not all(os.path.islink(model_dir / name) for name in LARGE) and thread.is_alive():
        time.sleep(0.01)
    ours = _our_shm_names(model_dir)
    connector.close()
    thread.join(60)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ConnectorError), outcome
    assert _dangling(model_dir) == []
    assert not (ours & _shm_names())


# --- errors ---------------------------------------------------------------------------------------------


def test_an_empty_prefix_is_an_error_and_touches_nothing(
    connector: OssModelConnector, model_bucket: str, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    with pytest.raises(ObjectNotFoundError, match=f"no objects under oss://{model_bucket}/models/none/"):
        connector.prepare_directory(f"oss://{model_bucket}/models/none/", model_dir)
    assert not model_dir.exists()
    with pytest.raises(ObjectNotFoundError):
        connector.prepare_directory(f"oss://{model_bucket}/models/tin", model_dir)  # a prefix is a folder


@pytest.mark.parametrize("key", ["a\\b.json", ".ossmodelconnector/owner.json"])
def test_an_escaping_key_is_refused_and_nothing_is_written(
    connector: OssModelConnector, model_bucket: str, localoss: LocalOss, tmp_path: Path, key: str
) -> None:
    localoss.put_file(model_bucket, PREFIX + key, b"{}")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(UnsafePathError, match="cannot be mirrored") as info:
        connector.prepare_directory(f"oss://{model_bucket}/{PREFIX}", model_dir)
    assert info.value.key == PREFIX + key
    assert sorted(os.listdir(tmp_path)) == before
    assert os.listdir(model_dir) == []


def test_a_foreign_directory_is_refused_before_anything_is_listed(
    connector: OssModelConnector, model_bucket: str, tmp_path: Path
) -> None:
    model_dir = tmp_path / "mine"
    model_dir.mkdir()
    (model_dir / "notes.txt").write_text("mine")
    requests = connector.stats()["requests"]
    with pytest.raises(UnsafePathError, match="not empty"):
        connector.prepare_directory(f"oss://{model_bucket}/{PREFIX}", model_dir)
    assert os.listdir(model_dir) == ["notes.txt"]
    assert connector.stats()["requests"] == requests


def test_a_failed_small_download_reaches_the_caller_and_a_retry_cleans_up(
    make_connector: Callable[..., OssModelConnector],
    localoss_factory: Callable[..., LocalOss],
    model_bucket: str,
    tmp_path: Path,
) -> None:
    server = localoss_factory("--fault-corrupt", "1.0", "--seed", "3")
    for name, data in FILES.items():
        server.put_file("faulty", PREFIX + name, data)
    model_dir = tmp_path / "model"
    broken = make_connector(server, max_attempts=2, retry_base_delay_s=0.001)
    with pytest.raises(IntegrityError):
        broken.prepare_directory(f"oss://faulty/{PREFIX}", model_dir)
    assert _dangling(model_dir) == []
    assert not any(os.path.lexists(model_dir / name) for name in LARGE)
    assert not list(model_dir.rglob("*.part"))  # nothing half-written under any name
    assert not list(model_dir.rglob("*.link"))
    stats = broken.stats()
    assert stats["directories"][str(model_dir)]["closed"] is True
    assert stats["directories"][str(model_dir)]["failed"] >= 1
    assert "failed" in {entry["state"] for entry in stats["files"].values()}

    # The same directory from a healthy server: it is ours (the owner record stayed), so it is cleaned.
    healthy = make_connector()
    healthy.prepare_directory(f"oss://{model_bucket}/{PREFIX}", model_dir, wait=True)
    for name, data in FILES.items():
        assert (
            _read_raw(str(model_dir / name)) if name in LARGE else (model_dir / name).read_bytes()
        ) == data


def test_a_failed_large_file_raises_with_wait_and_is_undone(
    make_connector: Callable[..., OssModelConnector],
    localoss_factory: Callable[..., LocalOss],
    tmp_path: Path,
) -> None:
    server = localoss_factory("--fault-corrupt", "1.0", "--seed", "4")
    server.put_file("faulty", PREFIX + LARGE[0], FILES[LARGE[0]])
    connector = make_connector(server, small_file_mb=0, max_attempts=2, retry_base_delay_s=0.001)
    model_dir = tmp_path / "model"
    with pytest.raises(IntegrityError):
        connector.prepare_directory(f"oss://faulty/{PREFIX}", model_dir, wait=True)
    assert not os.path.lexists(model_dir / LARGE[0])
    assert _dangling(model_dir) == []


# --- stats, progress, logs -------------------------------------------------------------------------------


def test_stats_report_each_file_and_the_directory(
    connector: OssModelConnector, model_bucket: str, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    before = time.time()
    prepared = connector.prepare_directory(f"oss://{model_bucket}/{PREFIX}", model_dir)
    early = connector.stats()
    assert set(early["files"]) == {str(model_dir / name) for name in FILES}
    for name in SMALL:
        assert early["files"][str(model_dir / name)]["state"] == "cached"
    for name in LARGE:
        assert early["files"][str(model_dir / name)]["state"] in ("not fetched", "fetching", "cached")
    prepared.wait()
    stats = connector.stats()
    directory = stats["directories"][str(model_dir)]
    assert directory["files"] == len(FILES)
    assert directory["bytes"] == sum(len(data) for data in FILES.values())
    assert directory["placement"] == "shm"
    assert before <= directory["started_at"] <= directory["ready_at"] <= directory["finished_at"]
    assert stats["time_to_first_byte_s"] is not None and stats["time_to_first_byte_s"] >= 0
    for name in LARGE:
        entry = stats["files"][str(model_dir / name)]
        assert entry["state"] == "cached"
        assert before <= entry["first_byte_at"] <= entry["done_at"] <= directory["finished_at"]
    assert prepared.stats()["states"] == stats["files"]


def test_progress_bar_and_one_summary_line(
    connector: OssModelConnector,
    model_bucket: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ossmodelconnector")
    prepared = connector.prepare_directory(
        f"oss://{model_bucket}/{PREFIX}", tmp_path / "model", wait=True, progress=True
    )
    err = capfd.readouterr().err
    assert "100%" in err and "B/s" in err
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("prepared ")]
    assert len(summaries) == 1
    assert f"{len(FILES)} files ({len(LARGE)} large)" in summaries[0]
    assert "placement shm" in summaries[0]
    prepared.close()

    connector.prepare_directory(
        f"oss://{model_bucket}/{PREFIX}", tmp_path / "quiet", wait=True, progress=False
    )
    assert "B/s" not in capfd.readouterr().err


def test_the_bodies_come_in_the_order_the_header_names_the_tensors(
    localoss: LocalOss, bucket: str, tmp_path: Path
) -> None:
    # The file holds layers.0, 1, 10, 11, 2 ... 9 (safetensors sorts names as text); frameworks read them
    # as 0, 1, 2 ... 11. The header is read on the prepare's pool while the directory is set up; the
    # fetch order must still come from it: layers.9 (late in the file) before layers.10 (early).
    tensors = {f"layers.{i}": np.full(MIB // 4, i, dtype=np.float32) for i in range(12)}
    data = save(tensors)
    localoss.put_file(bucket, "ordered/model.safetensors", data)
    config = tmp_path / "ordered.json"
    audit = tmp_path / "audit.log"
    config.write_text(
        json.dumps(
            {
                "smallFileMB": 1,
                "chunkSizeMB": 1,
                "prefetch": {"vcpus": 1, "workers": 1},  # one request at a time: the log shows the order
                "auditPath": str(audit),
            }
        )
    )
    creds = Credentials(localoss.access_key_id, localoss.access_key_secret)
    with OssModelConnector(localoss.endpoint, cred_provider=creds, config_path=str(config)) as connector:
        model_dir = tmp_path / "model"
        connector.prepare_directory(f"oss://{bucket}/ordered/", model_dir, wait=True)
        assert _read_raw(str(model_dir / "model.safetensors")) == data
        with open(audit, encoding="utf-8") as lines:
            records = [parse_audit_line(line) for line in lines]
    length = int.from_bytes(data[:8], "little")
    described = json.loads(data[8 : 8 + length])
    # The chunk holding a tensor's last byte (its first chunk may be shared with the tensor before it).
    last = {name: (8 + length + described[name]["data_offsets"][1] - 1) // MIB for name in tensors}
    assert last["layers.10"] < last["layers.9"]  # the premise: the file order is not the reading order
    chunks = [
        record.range[0] // MIB
        for record in records
        if record.method == "GET"
        and record.range is not None
        and record.range[0] % MIB == 0
        and record.range[1] == min(record.range[0] + MIB, len(data))
    ]
    assert sorted(chunks) == list(range(-(-len(data) // MIB)))  # every chunk fetched, once
    assert chunks.index(last["layers.9"]) < chunks.index(last["layers.10"])
