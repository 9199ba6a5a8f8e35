"""Generate a transformers causal LM with random weights, of about a chosen size, in several shards.

Nothing is downloaded: the architecture comes from a config and the weights from ``torch.randn``. Models
are cached under ``benchmarks/.cache/`` keyed by their parameters, because generating 2 GiB takes a while.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CACHE_DIR = Path(__file__).with_name(".cache")
HIDDEN = 1024
INTERMEDIATE = 2816
VOCAB = 32000
BYTES_PER_PARAM = 2  # float16


def layers_for(size_bytes: int) -> int:
    embeddings = 2 * VOCAB * HIDDEN  # input embeddings + untied lm_head
    per_layer = int(2.5 * HIDDEN * HIDDEN) + 3 * HIDDEN * INTERMEDIATE + 2 * HIDDEN
    return max(1, round((size_bytes / BYTES_PER_PARAM - embeddings) / per_layer))


def generated_model(size_mib: int, shards: int = 4, cache_dir: Path = CACHE_DIR) -> Path:
    """Return a directory holding a ~``size_mib`` MiB Qwen2-style model in ``shards`` safetensors shards."""
    target = cache_dir / f"qwen2-random-{size_mib}MiB-{shards}shards"
    if (target / "config.json").exists() and (target / "model.safetensors.index.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=layers_for(size_mib << 20),
        num_attention_heads=16,
        num_key_value_heads=4,
        tie_word_embeddings=False,
        dtype="float16",
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    generator = torch.Generator().manual_seed(0)
    state = {
        name: torch.empty(tensor.shape, dtype=torch.float16).normal_(0, 0.02, generator=generator)
        for name, tensor in model.state_dict().items()
    }
    model.load_state_dict(state, assign=True)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shard_size = f"{max(1, (size_mib + shards - 1) // shards)}MB"
    model.save_pretrained(partial, max_shard_size=shard_size, safe_serialization=True)
    if not (partial / "model.safetensors.index.json").exists():  # a single shard has no index: add one
        raise RuntimeError(f"{partial}: expected several shards; raise size_mib or shards")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target
