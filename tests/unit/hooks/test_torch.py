"""The torch hooks: ``torch.load`` and file mappings wait for the whole file, except inside safe_open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from hooks_harness import registered_files

from ossmodelconnector import hooks

CHUNK = 8192
# Held in a dict: the hooks replace every module global bound to torch.load, aliases included.
REAL = {"load": torch.load, "from_file": torch.from_file, "jit_load": torch.jit.load}


@pytest.fixture
def hooked() -> Iterator[None]:
    hooks.install()
    try:
        yield
    finally:
        hooks.uninstall()
        assert torch.load is REAL["load"] and torch.serialization.load is REAL["load"]
        assert torch.from_file is REAL["from_file"]
        assert torch.jit.load is REAL["jit_load"]
        assert "from_file" not in torch.UntypedStorage.__dict__


def _state_dict() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(300, 64, generator=generator),
        "proj.weight": torch.randn(64, 64, generator=generator).to(torch.bfloat16),
        "proj.bias": torch.arange(64, dtype=torch.int64),
    }


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mmap", [False, True])
def test_torch_load_of_a_bin_file(tmp_path: Path, hooked: None, mmap: bool) -> None:
    expected = _state_dict()
    torch.save(expected, tmp_path / "src.bin")
    data = (tmp_path / "src.bin").read_bytes()
    with registered_files(tmp_path / "m", {"pytorch_model.bin": data}, CHUNK, demand_only=True) as slow:
        loaded = torch.load(tmp_path / "m" / "pytorch_model.bin", mmap=mmap, weights_only=True)
        assert _equal(loaded, expected)
        assert slow["pytorch_model.bin"].wait_alls >= 1


def test_torch_load_of_a_file_object(tmp_path: Path, hooked: None) -> None:
    expected = _state_dict()
    torch.save(expected, tmp_path / "src.bin")
    data = (tmp_path / "src.bin").read_bytes()
    with (
        registered_files(tmp_path / "m", {"model.ckpt": data}, CHUNK, demand_only=True),
        open(tmp_path / "m" / "model.ckpt", "rb") as f,
    ):
        assert _equal(torch.load(f, weights_only=True), expected)


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
def test_torch_jit_load_of_a_torchscript_archive(tmp_path: Path, hooked: None) -> None:
    module = torch.jit.script(torch.nn.Linear(16, 4))
    module.save(str(tmp_path / "src.pt"))
    data = (tmp_path / "src.pt").read_bytes()
    with registered_files(tmp_path / "m", {"model.pt": data}, CHUNK, demand_only=True) as slow:
        loaded = torch.jit.load(str(tmp_path / "m" / "model.pt"))
        assert torch.equal(loaded.weight, module.weight) and torch.equal(loaded.bias, module.bias)
        assert slow["model.pt"].wait_alls == 1


def test_storage_and_tensor_from_file_wait_for_the_whole_file(tmp_path: Path, hooked: None) -> None:
    data = bytes(range(256)) * 200
    with registered_files(tmp_path / "m", {"a.raw": data, "b.raw": data}, CHUNK, demand_only=True) as slow:
        storage = torch.UntypedStorage.from_file(str(tmp_path / "m" / "a.raw"), False, len(data))
        assert bytes(storage) == data
        assert slow["a.raw"].wait_alls == 1
        tensor = torch.from_file(
            str(tmp_path / "m" / "b.raw"), shared=False, size=len(data), dtype=torch.uint8
        )
        assert bytes(tensor.numpy()) == data
        assert slow["b.raw"].wait_alls == 1


def test_safe_open_maps_without_waiting_for_the_whole_file(tmp_path: Path, hooked: None) -> None:
    tensors = {f"t{i}": torch.full((1000,), float(i)) for i in range(10)}
    safetensors.torch.save_file(tensors, tmp_path / "src.safetensors")
    data = (tmp_path / "src.safetensors").read_bytes()
    with registered_files(tmp_path / "m", {"w.safetensors": data}, CHUNK, demand_only=True) as slow:
        with safetensors.safe_open(tmp_path / "m" / "w.safetensors", framework="pt") as f:
            assert slow["w.safetensors"].wait_alls == 0
            assert torch.equal(f.get_tensor("t7"), tensors["t7"])
        assert slow["w.safetensors"].wait_alls == 0
        # The safe_open flag is per call: a mapping made afterwards in this thread waits again.
        storage = torch.UntypedStorage.from_file(str(tmp_path / "m" / "w.safetensors"), False, len(data))
        assert bytes(storage) == data
        assert slow["w.safetensors"].wait_alls == 1


def test_unregistered_paths_are_untouched(tmp_path: Path, hooked: None) -> None:
    expected = _state_dict()
    torch.save(expected, tmp_path / "plain.bin")
    assert _equal(torch.load(tmp_path / "plain.bin", weights_only=True), expected)
    assert torch.load.__wrapped__ is REAL["load"]  # type: ignore[attr-defined]
