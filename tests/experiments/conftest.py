"""A tiny instruct Llama and a toy custom task, and a 2-row x 1-task x 2-seed recipe over them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tinylm import save_model_dir, toy_examples  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tinyrecipe import write_recipe  # noqa: E402


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exp-toy")
    files = {"model": save_model_dir(root / "model", chat=True, tied=True)}
    for split, n, seed in (("train", 48, 21), ("dev", 16, 22), ("test", 16, 23)):
        files[split] = root / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in toy_examples(n, seed)))
    return files


@pytest.fixture
def recipe_file(tmp_path, toy) -> Path:
    return write_recipe(tmp_path / "tiny.yaml", toy)
