"""Shared fixtures: a tiny batch, tiny Llama checkpoints and a toy JSONL task (helpers in tinylm.py), and the
paths to the real assets (slow tests); the tiny models are in tinyconfigs.py (a plain module, since
`from conftest import` is ambiguous next to the packages' own conftest.py files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tinylm import save_model_dir, toy_examples

REPO = Path(__file__).resolve().parents[1]
# The suite's numerics are fp32 unless a test asks for a precision: without this a CPU with AVX512-BF16 would run
# every training test in bf16-mixed (the default there). tests/test_precision.py covers the default's choice.
os.environ.setdefault("ACCELERATE_MIXED_PRECISION", "no")
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


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory) -> Path:
    return save_model_dir(tmp_path_factory.mktemp("tiny-base"), chat=False, tied=False)


@pytest.fixture(scope="session")
def instruct_model_dir(tmp_path_factory) -> Path:
    return save_model_dir(tmp_path_factory.mktemp("tiny-instruct"), chat=True, tied=False)


@pytest.fixture(scope="session")
def tied_instruct_model_dir(tmp_path_factory) -> Path:
    return save_model_dir(tmp_path_factory.mktemp("tiny-instruct-tied"), chat=True, tied=True)


@pytest.fixture(scope="session")
def toy_task_files(tmp_path_factory) -> dict[str, Path]:
    """train/dev/test JSONL files of the toy task."""
    root = tmp_path_factory.mktemp("toy-task")
    files = {}
    for split, n, seed in (("train", 96, 1), ("dev", 32, 2), ("test", 32, 3)):
        files[split] = root / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in toy_examples(n, seed)))
    return files


@pytest.fixture
def toy_config(toy_task_files, base_model_dir, tmp_path):
    """A function making a TrainConfig for a short run on the toy task with the tiny base model."""
    from sparta.train import TrainConfig

    def make(**overrides) -> TrainConfig:
        values = dict(
            task="custom",
            train_file=str(toy_task_files["train"]),
            dev_file=str(toy_task_files["dev"]),
            test_file=str(toy_task_files["test"]),
            model=str(base_model_dir),
            output=str(tmp_path / "run"),
            batch_size=8,
            max_steps=12,
            lr=1e-2,
            log_every=1,
            progress=False,
            device="cpu",
        )
        values.update(overrides)
        return TrainConfig(**values)

    return make
