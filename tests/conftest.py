"""Shared fixtures: a tiny batch and the paths to the real assets (slow tests); the tiny models are in
tinyconfigs.py (a plain module, since `from conftest import` is ambiguous next to tests/train/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPARTA_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(1, 128, (4, 10), generator=g), "labels": torch.tensor([0, 1, 2, 1])}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "sst2").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
