"""The whole stack: ``prepare_directory`` over a throttled ``localoss``, then transformers loads at once.

The shards are still streaming into the shared-memory cache (the server sends 4 MiB/s) when
``from_pretrained`` starts; the reader hooks make every tensor read wait for its chunks, so the loaded
state dict is bit-identical to the one saved, and closing the connector restores every patched name.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors
import torch
import transformers
from localoss_harness import LocalOss
from tiny_models import tiny_qwen2

from ossmodelconnector import OssModelConnector
from ossmodelconnector.oss.credentials import Credentials

PREFIX = "models/qwen2-tiny/"
# Held in a dict: the hooks replace every module global bound to these while they are installed.
REAL = {"open": builtins.open, "safe_open": safetensors.safe_open, "load": torch.load}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    model = tiny_qwen2(seed=1, vocab_size=4096, hidden_size=128, intermediate_size=512)
    source = tmp_path_factory.mktemp("qwen2-source")
    model.save_pretrained(source, max_shard_size="1500KB")
    return source, {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_from_pretrained_right_after_prepare_directory(
    saved_model: tuple[Path, dict[str, torch.Tensor]],
    localoss_factory: Callable[..., LocalOss],
    tmp_path: Path,
) -> None:
    source, expected = saved_model
    server = localoss_factory("--bandwidth-mibps", "4")
    bucket = "hooks-e2e"
    server.make_bucket(bucket)
    sizes = {}
    for path in source.iterdir():
        server.put_file(bucket, PREFIX + path.name, path.read_bytes())
        sizes[path.name] = path.stat().st_size
    large = [name for name, size in sizes.items() if size >= 1 << 20]
    assert len(large) >= 2, sizes
    config_path = tmp_path / "ossmc.json"
    config_path.write_text(json.dumps({"smallFileMB": 1, "chunkSizeMB": 1}))
    connector = OssModelConnector(
        server.endpoint,
        cred_provider=Credentials(server.access_key_id, server.access_key_secret),
        config_path=str(config_path),
    )
    model_dir = tmp_path / "model"
    try:
        connector.prepare_directory(f"oss://{bucket}/{PREFIX}", model_dir)
        assert all((model_dir / name).is_symlink() for name in large)
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
        state = model.state_dict()
        assert state.keys() == expected.keys()
        for name, tensor in expected.items():
            assert state[name].dtype == tensor.dtype, name
            assert torch.equal(state[name].view(torch.uint8), tensor.view(torch.uint8)), name
    finally:
        connector.close()
    assert builtins.open is REAL["open"]
    assert safetensors.safe_open is REAL["safe_open"]
    assert torch.load is REAL["load"]
