"""Fixtures of the reliability suite: a tiny saved transformers model, servers a test may crash, hooks
restored after every case. What the cases share besides fixtures is in ``reliability_harness.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from hooks_harness import hooked_names, hooks_restored
from localoss_harness import LocalOss, start_localoss
from reliability_harness import MIB, SavedModel

REAL = hooked_names()  # before any test installs a hook


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
