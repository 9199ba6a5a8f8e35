"""Shared pieces of the reliability suite: a tiny saved transformers model, connectors with short budgets.

Every case runs against ``localoss`` in a real subprocess with seeded faults. Budgets are small (1 MiB
chunks, short timeouts, millisecond backoff) so that a fault resolves in seconds; pytest-timeout only
guards against a hang, no test asserts a duration.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hooks_harness import hooked_names, hooks_restored
from localoss_harness import LocalOss, start_localoss

from ossmodelconnector import OssModelConnector
from ossmodelconnector.oss.credentials import Credentials

MIB = 1 << 20
MODEL_PREFIX = "models/tiny-qwen2/"
FAST_RETRIES: dict[str, Any] = {"retry_base_delay_s": 0.001, "retry_max_delay_s": 0.02}

REAL = hooked_names()  # before any test installs a hook


@dataclass(frozen=True)
class SavedModel:
    """A tiny Qwen2 saved by ``save_pretrained`` in shards, and its state dict loaded locally."""

    source: Path
    files: dict[str, bytes]
    state: dict[str, torch.Tensor]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> SavedModel:
    import transformers
    from tiny_models import tiny_qwen2

    model = tiny_qwen2(seed=3, vocab_size=4096, hidden_size=128, intermediate_size=256)
    source = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(source, max_shard_size="2MB")
    files = {path.name: path.read_bytes() for path in sorted(source.iterdir())}
    shards = [data for name, data in files.items() if name.endswith(".safetensors")]
    # Every shard is a large file (>= smallFileMB = 1): it streams into the cache in 1 MiB chunks.
    assert len(shards) >= 2 and all(len(data) >= MIB for data in shards), sorted(files)
    local = transformers.AutoModelForCausalLM.from_pretrained(source)
    state = {name: tensor.detach().clone() for name, tensor in local.state_dict().items()}
    return SavedModel(source, files, state)


def upload_model(server: LocalOss, bucket: str, model: SavedModel) -> str:
    """Put the model's files under ``MODEL_PREFIX`` and return ``oss://bucket/prefix/``."""
    server.make_bucket(bucket)
    for name, data in model.files.items():
        server.put_file(bucket, MODEL_PREFIX + name, data)
    return f"oss://{bucket}/{MODEL_PREFIX}"


def make_connector(server: LocalOss, **overrides: Any) -> OssModelConnector:
    """A connector with 1 MiB chunks, 4 connections, fast retries; ``overrides`` win."""
    settings: dict[str, Any] = {
        "chunk_size_mb": 1,
        "small_file_mb": 1,
        "prefetch_vcpus": 2,
        "prefetch_workers": 2,
        "max_attempts": 30,
        "read_timeout_s": 5.0,
        "connect_timeout_s": 2.0,
        "wait_timeout_s": 60.0,
        **FAST_RETRIES,
        **overrides,
    }
    cred = settings.pop("cred_provider", None)
    cred_path = settings.pop("cred_path", "")
    if cred is None and not cred_path:
        cred = Credentials(server.access_key_id, server.access_key_secret)
    return OssModelConnector(server.endpoint, cred_provider=cred, cred_path=cred_path, **settings)


def load_model(model_dir: Path) -> dict[str, torch.Tensor]:
    """``from_pretrained`` the directory and return a copy of its state dict."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_same_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name


@pytest.fixture
def crashable_localoss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LocalOss]]:
    """Like ``localoss_factory``, for servers a test kills and restarts; the survivors are stopped."""
    servers: list[LocalOss] = []

    def start(*args: str) -> LocalOss:
        server = start_localoss(tmp_path_factory.mktemp("localoss-root"), *args)
        servers.append(server)
        return server

    def restart(server: LocalOss, *args: str) -> LocalOss:
        again = server.restart(*args)
        servers.append(again)
        return again

    start.restart = restart  # type: ignore[attr-defined]
    yield start
    for server in servers:
        if server.proc.poll() is None:
            assert server.stop() == 0


@pytest.fixture(autouse=True)
def _hooks_restored() -> Iterator[None]:
    yield from hooks_restored(REAL)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` (root only; the caller skips otherwise) for the block."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN): tried once on a scratch dir."""
    import os
    import tempfile

    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", scratch], capture_output=True, check=False
        )
        if done.returncode != 0:
            return False
        subprocess.run(["umount", scratch], check=False)
    return True
