"""The models the tests build on, in one place: the tiny random Llama (config, classifier, causal LM) and a
Mistral-7B-shaped config.

A plain module, not a conftest: pytest puts tests/ on sys.path (the rootdir conftest is imported with the default
``prepend`` mode), so any test or helper module can ``from tinyconfigs import ...``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, MistralConfig

TINY_LLAMA: dict[str, Any] = {  # the architecture of every tiny test model
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def tiny_llama_config(**overrides: Any) -> LlamaConfig:
    """The tiny Llama (64 positions, pad id 0, untied embeddings, 3 labels), any field overridden by keyword."""
    values = {
        **TINY_LLAMA,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
        "num_labels": 3,
        "tie_word_embeddings": False,
    }
    return LlamaConfig(**(values | overrides))


def mistral_7b_config(**overrides: Any) -> MistralConfig:
    """Mistral-7B's shape (build it on the meta device: 7B parameters)."""
    values = {
        "vocab_size": 32768,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
    }
    return MistralConfig(**(values | overrides))


def tiny_classifier(
    seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any
) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(tiny_llama_config(**overrides)).to(dtype).eval()


def tiny_causal_lm(seed: int = 0, **overrides: Any) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()
