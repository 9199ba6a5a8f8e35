"""The fault matrix for ``prepare_directory`` + ``transformers.from_pretrained``.

A tiny Qwen2 in three safetensors shards (each streamed in 1 MiB chunks) plus small JSON files is served by
``localoss`` with seeded faults; the model loaded from the prepared directory must equal the one loaded
from the local copy bit for bit, or the load must fail with the package's clear error. Nothing hangs.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from localoss_harness import LocalOss
from reliability_harness import (
    MODEL_PREFIX,
    RotatingProvider,
    SavedModel,
    assert_same_state,
    can_mount,
    load_model,
    make_connector,
    replace_json,
    tmpfs,
    upload_model,
)

from ossmodelconnector import (
    ConnectorError,
    IntegrityError,
    ObjectChangedError,
    OutOfMemoryError,
    RetriesExhaustedError,
)

# A hang guard tighter than the suite's 300 s: each case resolves in seconds or fails clearly.
pytestmark = pytest.mark.timeout(120)

BUCKET = "models"
needs_mount = pytest.mark.skipif(
    not can_mount(), reason="mounting a small tmpfs needs root (CAP_SYS_ADMIN); this run has neither"
)


def _shards(model: SavedModel) -> list[str]:
    return sorted(name for name in model.files if name.endswith(".safetensors"))


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(("--fault-503", "0.4", "--seed", "23"), id="503-slowdown-burst"),
        pytest.param(("--fault-reset", "0.4", "--seed", "23"), id="reset-mid-body"),
        pytest.param(("--fault-short", "0.4", "--seed", "23"), id="short-body"),
        pytest.param(("--fault-stall", "0.3", "--stall-ms", "2500", "--seed", "25"), id="first-byte-stall"),
    ],
)
def test_transient_faults_load_the_exact_model(
    localoss_factory: Callable[..., LocalOss], tiny_model: SavedModel, tmp_path: Path, flags: tuple[str, ...]
) -> None:
    server = localoss_factory(*flags)
    uri = upload_model(server, BUCKET, tiny_model)
    with make_connector(server, read_timeout_s=0.4) as connector:
        connector.prepare_directory(uri, tmp_path / "model")
        state = load_model(tmp_path / "model")
        stats = connector.stats()
    assert_same_state(state, tiny_model.state)
    assert stats["retries"] > 0


def test_server_killed_mid_load_and_restarted(
    crashable_localoss: Callable[..., LocalOss], tiny_model: SavedModel, tmp_path: Path
) -> None:
    server = crashable_localoss("--conn-bandwidth-mibps", "1")
    uri = upload_model(server, BUCKET, tiny_model)
    budget = {"max_attempts": 40, "retry_base_delay_s": 0.05, "retry_max_delay_s": 0.5}
    with make_connector(server, **budget) as connector:
        connector.prepare_directory(uri, tmp_path / "model")  # small files on disk, shards in flight
        server.kill()
        time.sleep(0.3)
        crashable_localoss.restart(server)  # type: ignore[attr-defined]
        state = load_model(tmp_path / "model")
        assert connector.stats()["retries"] > 0
    assert_same_state(state, tiny_model.state)


def test_server_never_coming_back_fails_the_load_clearly(
    crashable_localoss: Callable[..., LocalOss], tiny_model: SavedModel, tmp_path: Path
) -> None:
    server = crashable_localoss("--conn-bandwidth-mibps", "1")
    uri = upload_model(server, BUCKET, tiny_model)
    with make_connector(server, max_attempts=4) as connector:
        prepared = connector.prepare_directory(uri, tmp_path / "model")
        server.kill()
        with pytest.raises(RetriesExhaustedError) as caught:
            load_model(tmp_path / "model")
        assert caught.value.bucket == BUCKET and caught.value.key.startswith(MODEL_PREFIX)
        assert "retry.maxAttempts" in str(caught.value)
        with pytest.raises(RetriesExhaustedError):
            prepared.wait()
        failed = [path for path, file in connector.stats()["files"].items() if file["state"] == "failed"]
        assert failed  # stats() tells which file


@pytest.mark.parametrize(
    ("server_args", "status", "code"),
    [
        pytest.param((), 412, "PreconditionFailed", id="server-honours-if-match"),
        # A proxy or S3-compatible server that ignores If-Match: the client compares each answer's ETag.
        pytest.param(("--ignore-if-match",), 206, "ETagMismatch", id="server-ignores-if-match"),
    ],
)
def test_shard_overwritten_mid_load_is_an_error_not_a_mix(
    localoss_factory: Callable[..., LocalOss],
    tiny_model: SavedModel,
    tmp_path: Path,
    server_args: tuple[str, ...],
    status: int,
    code: str,
) -> None:
    server = localoss_factory("--conn-bandwidth-mibps", "1", *server_args)
    uri = upload_model(server, BUCKET, tiny_model)
    last = _shards(tiny_model)[-1]
    with make_connector(server) as connector:
        prepared = connector.prepare_directory(uri, tmp_path / "model")
        path = server.root / BUCKET / (MODEL_PREFIX + last)
        scratch = path.with_name(".rewrite")
        scratch.write_bytes(bytes(reversed(tiny_model.files[last])))
        os.replace(scratch, path)
        with pytest.raises(ObjectChangedError) as caught:
            prepared.wait()
        assert caught.value.key == MODEL_PREFIX + last
        assert (caught.value.status, caught.value.code) == (status, code)
        with pytest.raises(ObjectChangedError):
            load_model(tmp_path / "model")


def test_a_corrupted_small_file_is_downloaded_again(
    localoss_factory: Callable[..., LocalOss], tiny_model: SavedModel, tmp_path: Path
) -> None:
    """Every file is small here: a flipped byte fails the CRC-64 and the whole file is fetched again."""
    server = localoss_factory("--fault-corrupt", "0.5", "--seed", "1")
    uri = upload_model(server, BUCKET, tiny_model)
    with make_connector(server, small_file_mb=64) as connector:
        connector.prepare_directory(uri, tmp_path / "model")
        for name, data in tiny_model.files.items():
            assert (tmp_path / "model" / name).read_bytes() == data
        assert connector.stats()["integrity_retries"] > 0
        assert_same_state(load_model(tmp_path / "model"), tiny_model.state)


def test_a_corrupted_shard_is_refused_by_its_crc(
    localoss_factory: Callable[..., LocalOss], tiny_model: SavedModel, tmp_path: Path
) -> None:
    """A streamed file whose object CRC-64 does not match fails ``wait()`` and every later read.

    Every body has a byte flipped and every file streams (``smallFileMB`` 0), so each file is refused
    deterministically. The server sends only the whole object's CRC-64, so the mismatch is known once every
    chunk has arrived (see docs/reliability.md, known limits).
    """
    server = localoss_factory("--fault-corrupt", "1")
    uri = upload_model(server, BUCKET, tiny_model)
    model_dir = tmp_path / "model"
    with make_connector(server, small_file_mb=0) as connector:
        prepared = connector.prepare_directory(uri, model_dir)
        with pytest.raises(IntegrityError) as caught:
            prepared.wait()
        exc = caught.value
        assert exc.bucket == BUCKET and exc.key is not None and exc.key.startswith(MODEL_PREFIX)
        assert "CRC-64" in str(exc) and "open the object again" in str(exc)
        with pytest.raises(IntegrityError):
            load_model(model_dir)
        states = {os.path.basename(path): file["state"] for path, file in connector.stats()["files"].items()}
        assert states == dict.fromkeys(tiny_model.files, "failed")


def test_sts_token_expiring_mid_prepare_is_refreshed(
    localoss_factory: Callable[..., LocalOss], tiny_model: SavedModel, tmp_path: Path
) -> None:
    tokens = tmp_path / "server-tokens.json"
    old, fresh = "sts-old-token-" + "e" * 24, "sts-new-token-" + "f" * 24
    replace_json(tokens, {old: None, fresh: None})
    server = localoss_factory("--sts-token-file", str(tokens), "--conn-bandwidth-mibps", "1")
    uri = upload_model(server, BUCKET, tiny_model)
    replace_json(tokens, {old: time.time() + 0.5, fresh: None})  # the shards take > 1 s at 4 MiB/s
    provider = RotatingProvider(server.access_key_id, server.access_key_secret, [old, fresh])
    with make_connector(server, cred_provider=provider) as connector:
        connector.prepare_directory(uri, tmp_path / "model")
        state = load_model(tmp_path / "model")
        assert connector.stats()["credential_refreshes"] >= 1
    assert_same_state(state, tiny_model.state)


@needs_mount
def test_a_small_dev_shm_falls_back_to_disk_and_says_so(
    localoss: LocalOss,
    tiny_model: SavedModel,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``cacheDir`` on a 1 MiB tmpfs (Docker's /dev/shm is 64 MiB; the model here is bigger than 1 MiB)."""
    uri = upload_model(localoss, BUCKET + "-shm", tiny_model)
    caplog.set_level(logging.WARNING)
    with (
        tmpfs(tmp_path / "small-shm", "1m") as shm,
        make_connector(localoss, cache_dir=str(shm)) as connector,
    ):
        prepared = connector.prepare_directory(uri, tmp_path / "model")
        assert prepared.placement == "disk"
        state = load_model(tmp_path / "model")
        assert os.listdir(shm) == []
    assert_same_state(state, tiny_model.state)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("instead of" in message for message in warnings), warnings


@needs_mount
def test_dev_shm_filling_before_the_headers_land_is_recovered_once_space_is_freed(
    crashable_localoss: Callable[..., LocalOss], tiny_model: SavedModel, tmp_path: Path
) -> None:
    """``cacheDir`` on a 32 MiB tmpfs that another file fills while the shards' first chunks are on the
    wire (1 MiB/s): every chunk fails for lack of room; once the file is removed, the load succeeds."""
    server = crashable_localoss("--bandwidth-mibps", "1")
    uri = upload_model(server, BUCKET + "-enospc", tiny_model)
    with tmpfs(tmp_path / "shm", "32m") as shm, make_connector(server, cache_dir=str(shm)) as connector:
        prepared = connector.prepare_directory(uri, tmp_path / "model")
        assert prepared.placement == "shm"
        filler = shm / "another-program's-file"
        with open(filler, "wb", buffering=0) as file:
            with pytest.raises(OSError) as full:
                while True:
                    file.write(b"\0" * (1 << 20))
            assert full.value.errno == errno.ENOSPC
        with pytest.raises(OutOfMemoryError, match="could not be stored"):
            prepared.wait()  # the headers' chunks failed: No space left on device
        filler.unlink()
        state = load_model(tmp_path / "model")  # each failed chunk is fetched again by its next read
        prepared.wait()
    assert_same_state(state, tiny_model.state)


@needs_mount
def test_disk_full_while_writing_small_files_leaves_no_half_file(
    localoss: LocalOss, tiny_model: SavedModel, tmp_path: Path
) -> None:
    """Every file is "small" here; the disk holds 1.5 MiB of the ~5 MiB: ENOSPC, and no partial file."""
    uri = upload_model(localoss, BUCKET + "-full", tiny_model)
    with tmpfs(tmp_path / "disk", "1536k") as disk, make_connector(localoss, small_file_mb=64) as connector:
        model_dir = disk / "model"
        with pytest.raises(OSError) as caught:
            connector.prepare_directory(uri, model_dir)
        err = caught.value
        assert err.errno == errno.ENOSPC
        assert f"oss://{BUCKET}-full/{MODEL_PREFIX}" in str(err) and "free space" in str(err)
        assert err.filename is not None and err.filename.startswith(str(model_dir))
        left = {
            p.name: p for p in model_dir.rglob("*") if p.is_file() and ".ossmodelconnector" not in p.parts
        }
        for name, path in left.items():
            assert not name.endswith(".part"), name
            assert path.read_bytes() == tiny_model.files[name]  # complete, or absent


def test_opens_racing_close_get_the_bytes_or_an_error_never_zeros(
    localoss_factory: Callable[..., LocalOss], tiny_model: SavedModel, tmp_path: Path
) -> None:
    """Readers keep opening a shard by its entry and by its segment while the directory closes."""
    server = localoss_factory("--bandwidth-mibps", "1")  # the last shard is still arriving at close
    uri = upload_model(server, BUCKET, tiny_model)
    last = _shards(tiny_model)[-1]
    expected = tiny_model.files[last]
    outcomes: list[str] = []
    stop = threading.Event()
    started = [threading.Event(), threading.Event()]
    with make_connector(server) as connector:
        prepared = connector.prepare_directory(uri, tmp_path / "model")
        entry = tmp_path / "model" / last
        segment = os.path.realpath(entry)

        def read_until_stopped(path: str | Path, started: threading.Event) -> None:
            while not stop.is_set():
                started.set()
                try:
                    with open(path, "rb") as file:
                        data = file.read()
                except (OSError, ConnectorError) as exc:  # gone, or closed while waiting: both fine
                    outcomes.append(type(exc).__name__)
                    continue
                outcomes.append("bytes" if data == expected else "WRONG BYTES")

        readers = [
            threading.Thread(target=read_until_stopped, args=(path, event))
            for path, event in zip((entry, segment), started, strict=True)
        ]
        for reader in readers:
            reader.start()
        for event in started:
            assert event.wait(30)
        time.sleep(0.2)  # let both open and start waiting: close then races the next opens too
        prepared.close()
        stop.set()
        for reader in readers:
            reader.join(timeout=60)
    assert outcomes and "WRONG BYTES" not in outcomes, outcomes
