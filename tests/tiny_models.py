"""Tiny transformers models with random weights, built from a config: nothing comes from a hub."""

from __future__ import annotations

import torch
import transformers


def tiny_qwen2(
    *, seed: int, vocab_size: int, hidden_size: int, intermediate_size: int
) -> transformers.PreTrainedModel:
    """A 2-layer Qwen2 causal LM, deterministic for a seed, with an untied head (so shards split nicely)."""
    torch.manual_seed(seed)
    config = transformers.Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return transformers.AutoModelForCausalLM.from_config(config)
