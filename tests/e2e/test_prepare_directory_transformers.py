"""``prepare_directory`` end to end: a real tiny Qwen2 saved by transformers, served by ``localoss``.

Three layouts (safetensors shards + index, one ``model.safetensors``, one ``pytorch_model.bin``) are
loaded with ``AutoModelForCausalLM.from_pretrained`` from a prepared directory and from the local copy:
the state dicts must be bit-identical and greedy ``generate`` must give the same tokens. A throttled
server shows the streaming is real: a tensor of the first shard is read before the last shard has
arrived, and tensors of the last shard read while it is still arriving hold the source bytes.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
import transformers
from hooks_harness import hooked_names, hooks_restored
from localoss_harness import LocalOss
from tiny_models import tiny_qwen2

from ossmodelconnector import OssModelConnector
from ossmodelconnector.oss.credentials import Credentials

MIB = 1 << 20
PREFIX = "models/qwen2-e2e/"
INPUT_IDS = torch.tensor([[11, 207, 3001, 42, 9, 1500, 77, 2048]])
NEW_TOKENS = 6

# Held in a dict: the hooks replace every module global bound to these while they are installed.
REAL = hooked_names()  # before any test installs a hook


@dataclass(frozen=True)
class SavedModel:
    """One ``save_pretrained`` layout on local disk and what loading it locally gives."""

    source: Path
    state: dict[str, torch.Tensor]
    tokens: torch.Tensor


def _tiny_qwen2() -> transformers.PreTrainedModel:
    model = tiny_qwen2(seed=7, vocab_size=4096, hidden_size=256, intermediate_size=512)
    # Random weights make a flat distribution; scaling the head keeps greedy decoding away from ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


def _load_and_generate(model_dir: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    with torch.no_grad():
        tokens = model.generate(
            INPUT_IDS,
            attention_mask=torch.ones_like(INPUT_IDS),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=0,
        )
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    return state, tokens


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SavedModel]:
    model = _tiny_qwen2()
    saved: dict[str, SavedModel] = {}
    for layout, max_shard_size in (("sharded", "3MB"), ("single", "1GB"), ("bin", "1GB")):
        source = tmp_path_factory.mktemp(f"qwen2-{layout}")
        model.save_pretrained(source, max_shard_size=max_shard_size)
        if layout == "bin":
            # transformers 5 ignores safe_serialization=False, but still loads a pickled checkpoint
            # with torch.load: write the one it would have written.
            (source / "model.safetensors").unlink()
            torch.save(model.state_dict(), source / "pytorch_model.bin")
        state, tokens = _load_and_generate(source)
        saved[layout] = SavedModel(source, state, tokens)
    return saved


@pytest.fixture(autouse=True)
def _hooks_restored() -> Iterator[None]:
    yield from hooks_restored(REAL)


def _upload(server: LocalOss, bucket: str, source: Path) -> dict[str, int]:
    server.make_bucket(bucket)
    sizes = {}
    for path in sorted(source.iterdir()):
        server.put_file(bucket, PREFIX + path.name, path.read_bytes())
        sizes[path.name] = path.stat().st_size
    return sizes


def _connector(server: LocalOss, small_file_mb: int) -> OssModelConnector:
    return OssModelConnector(
        server.endpoint,
        cred_provider=Credentials(server.access_key_id, server.access_key_secret),
        chunk_size_mb=1,
        prefetch_vcpus=2,
        prefetch_workers=2,
        small_file_mb=small_file_mb,
    )


def _assert_same_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert state[name].dtype == tensor.dtype, name
        assert state[name].shape == tensor.shape, name
        assert torch.equal(
            state[name].contiguous().view(torch.uint8), tensor.contiguous().view(torch.uint8)
        ), name


@pytest.mark.parametrize(
    ("layout", "weights"),
    [
        ("sharded", "model-*-of-*.safetensors"),
        ("single", "model.safetensors"),
        ("bin", "pytorch_model.bin"),
    ],
)
def test_from_pretrained_matches_local_copy(
    saved_models: dict[str, SavedModel],
    localoss: LocalOss,
    tmp_path: Path,
    layout: str,
    weights: str,
) -> None:
    saved = saved_models[layout]
    files = sorted(path.name for path in saved.source.glob(weights))
    if layout == "sharded":
        assert len(files) >= 3, files
        assert (saved.source / "model.safetensors.index.json").is_file()
    else:
        assert files == [weights]
        assert not list(saved.source.glob("*.index.json"))
    bucket = f"e2e-{layout}-{os.getpid()}"
    sizes = _upload(localoss, bucket, saved.source)
    # smallFileMB 0: every file, config.json included, is a cache entry read through the hooks.
    connector = _connector(localoss, small_file_mb=0)
    model_dir = tmp_path / "model"
    try:
        prepared = connector.prepare_directory(f"oss://{bucket}/{PREFIX}", model_dir)
        assert sorted(file.name for file in prepared.files) == sorted(sizes)
        for name in sizes:
            entry = model_dir / name
            assert entry.is_symlink(), name
            assert os.path.realpath(entry).startswith("/dev/shm/ossmc-"), os.readlink(entry)
        state, tokens = _load_and_generate(model_dir)
        _assert_same_state(state, saved.state)
        assert torch.equal(tokens, saved.tokens)
        assert tokens.shape == (1, INPUT_IDS.shape[1] + NEW_TOKENS)
        prepared.wait()
        for name in sizes:  # once complete, the entry holds exactly the uploaded bytes
            assert (model_dir / name).read_bytes() == (saved.source / name).read_bytes(), name
    finally:
        connector.close()


def test_tensors_are_read_while_the_shards_stream(
    saved_models: dict[str, SavedModel],
    localoss_factory: Callable[..., LocalOss],
    tmp_path: Path,
) -> None:
    saved = saved_models["sharded"]
    shards = sorted(path.name for path in saved.source.glob("model-*-of-*.safetensors"))
    expected = {name: safetensors.torch.load_file(saved.source / name) for name in shards}
    total = sum((saved.source / name).stat().st_size for name in shards)
    # About 3 s for the shards at this rate: long enough to read while they arrive, short for a test.
    rate = max(1.0, round(total / MIB / 3.0, 1))
    server = localoss_factory("--bandwidth-mibps", str(rate))
    bucket = "e2e-streaming"
    _upload(server, bucket, saved.source)
    connector = _connector(server, small_file_mb=0)  # the last shard is under 1 MiB
    model_dir = tmp_path / "model"
    first, last = shards[0], shards[-1]
    try:
        prepared = connector.prepare_directory(f"oss://{bucket}/{PREFIX}", model_dir)
        assert all((model_dir / name).is_symlink() for name in shards)

        with safetensors.safe_open(str(model_dir / first), framework="pt") as reader:
            key = sorted(reader.keys())[0]
            tensor = reader.get_tensor(key)
        first_read_at = time.time()
        assert torch.equal(tensor, expected[first][key]), key

        last_path = str(model_dir / last)
        assert connector.stats()["files"][last_path]["done_at"] is None, "the last shard arrived too soon"
        keys = sorted(expected[last])
        random.Random(3).shuffle(keys)
        with safetensors.safe_open(last_path, framework="pt") as reader:
            for key in keys:
                tensor = reader.get_tensor(key)
                assert torch.equal(tensor, expected[last][key]), key
                assert bool(tensor.ne(0).any()), key

        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
        _assert_same_state(dict(model.state_dict()), saved.state)

        prepared.wait()
        files = connector.stats()["files"]
        done = {name: files[str(model_dir / name)]["done_at"] for name in shards}
        assert all(isinstance(at, float) for at in done.values()), done
        assert first_read_at < done[last], (first_read_at, done)
        assert files[str(model_dir / first)]["first_byte_at"] <= first_read_at
    finally:
        connector.close()
