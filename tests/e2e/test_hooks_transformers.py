"""A real transformers load of a directory whose shards are still being written, through the hooks.

A tiny random-weight Qwen2 model is saved in several shards; each shard's entry in the model directory is
a symlink to a sparse segment that a writer thread fills in reverse chunk order (or only on demand), and
``AutoModelForCausalLM.from_pretrained`` loads it while it fills. The state dict must be bit-identical.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers
from hooks_harness import registered_files
from tiny_models import tiny_qwen2

from ossmodelconnector import hooks

CHUNK = 16 * 1024
TESTS_DIR = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny Qwen2 saved in 3+ shards, and its state dict."""
    model = tiny_qwen2(seed=0, vocab_size=512, hidden_size=64, intermediate_size=128)
    source = tmp_path_factory.mktemp("source")
    model.save_pretrained(source, max_shard_size="150KB")
    shards = sorted(source.glob("*.safetensors"))
    assert len(shards) >= 3, shards
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    return source, state


def _layout(source: Path, model_dir: Path) -> dict[str, bytes]:
    """Copy the small files into ``model_dir``; return the shards to register (name -> bytes)."""
    model_dir.mkdir()
    large = {}
    for path in source.iterdir():
        if path.suffix == ".safetensors":
            large[path.name] = path.read_bytes()
        else:
            shutil.copy(path, model_dir / path.name)
    return large


def _assert_bit_identical(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        got = loaded[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(got.view(torch.uint8), tensor.view(torch.uint8)), name


@pytest.fixture
def hooked() -> Iterator[None]:
    hooks.install()
    try:
        yield
    finally:
        hooks.uninstall()


@pytest.mark.parametrize(
    ("options", "load_kwargs"),
    [
        ({"delay_s": 0.002}, {}),  # background writer, last chunk first, slowly
        ({"demand_only": True}, {}),  # nothing arrives unless a reader waited for it
        ({"demand_only": True}, {"disable_mmap": True}),  # open(f, "rb").read() + safetensors.load
    ],
    ids=["reverse-order", "demand-only", "demand-only-no-mmap"],
)
def test_from_pretrained_while_shards_arrive(
    saved_model: tuple[Path, dict[str, torch.Tensor]],
    tmp_path: Path,
    hooked: None,
    options: dict[str, object],
    load_kwargs: dict[str, object],
) -> None:
    source, expected = saved_model
    model_dir = tmp_path / "model"
    large = _layout(source, model_dir)
    with registered_files(model_dir, large, CHUNK, **options) as slow:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, **load_kwargs)
        _assert_bit_identical(model.state_dict(), expected)
        if not load_kwargs:
            # safe_open + get_slice never waited for a whole file: only headers and tensor ranges.
            assert all(waitable.wait_alls == 0 for waitable in slow.values())


def test_from_pretrained_with_transformers_imported_after_install(
    saved_model: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    source, expected = saved_model
    torch.save(expected, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(TESTS_DIR)!r})
        from hooks_harness import registered_files
        from ossmodelconnector import hooks

        hooks.install()
        assert "transformers" not in sys.modules and "safetensors" not in sys.modules
        import torch, transformers
        source, model_dir = Path({str(source)!r}), Path({str(tmp_path / "model")!r})
        model_dir.mkdir()
        large = {{}}
        for path in source.iterdir():
            if path.suffix == ".safetensors":
                large[path.name] = path.read_bytes()
            else:
                (model_dir / path.name).write_bytes(path.read_bytes())
        with registered_files(model_dir, large, {CHUNK}, demand_only=True) as slow:
            model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
            state = model.state_dict()
            assert all(w.wait_alls == 0 for w in slow.values())
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        assert state.keys() == expected.keys()
        for name, tensor in expected.items():
            assert torch.equal(state[name].view(torch.uint8), tensor.view(torch.uint8)), name
        hooks.uninstall()
        print("ok", len(state))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == ["ok", str(len(expected))]


def test_the_index_and_config_are_plain_files(saved_model: tuple[Path, dict[str, torch.Tensor]]) -> None:
    source, _ = saved_model
    index = json.loads((source / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3
