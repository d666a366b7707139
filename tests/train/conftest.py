"""Fixtures for the training tests: tiny Llama checkpoints and a toy JSONL task (helpers in tinylm.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tinylm import save_model_dir, toy_examples

# The tiny models gain nothing from intra-op threads, and on a busy 2-core machine the thread pool's contention
# makes them ~40x slower; one thread keeps these tests fast and their results unchanged.
torch.set_num_threads(1)


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
