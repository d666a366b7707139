"""Shared fixtures: tiny random models built from configs (fast), and paths to the real assets (slow tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, LlamaForSequenceClassification

from tinyconfigs import mistral_7b_config, tiny_llama_config  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPARTA_DATA_DIR", REPO.parent / "shared" / "data"))


def tiny_classifier(
    seed: int = 0, dtype: torch.dtype = torch.float32, **overrides
) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(tiny_llama_config(**overrides)).to(dtype).eval()


def tiny_causal_lm(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(1, 128, (4, 10), generator=g), "labels": torch.tensor([0, 1, 2, 1])}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "sst2").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
