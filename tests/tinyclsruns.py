"""Tiny classification runs for the merging tests: two toy tasks (sentiment from tinylm.py, "mentions music"
here) written as custom JSONL tasks, short SpaRTA trainings on a tiny Llama, and bare adapters with random
deltas."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from sparta import SpartaConfig, get_sparta_model
from tinylm import FILLER


def topic_examples(n: int, seed: int) -> list[dict]:
    """A second toy task: label 1 iff the sentence mentions "music"."""
    rng = random.Random(seed)
    words = [w for w in FILLER if w != "music"]
    rows = []
    for _ in range(n):
        label = rng.randrange(2)
        text = rng.sample(words, rng.randint(2, 7)) + ["good" if rng.random() < 0.5 else "bad"]
        if label:
            text.insert(rng.randrange(len(text) + 1), "music")
        rows.append({"text": " ".join(text), "label": label})
    return rows


def write_task(root: Path, make) -> dict[str, str]:
    """train/dev/test JSONL files of a toy task (64/16/24 rows), as TrainConfig's *_file options."""
    root.mkdir(parents=True)
    files = {}
    for split, n, seed in (("train", 64, 1), ("dev", 16, 2), ("test", 24, 3)):
        files[split] = root / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in make(n, seed)))
    return {f"{k}_file": str(v) for k, v in files.items()}


def train_run(output: Path, model: Path, files: dict, seed: int, **kw) -> Path:
    """A 6-step SpaRTA run (density 0.2) of a custom task on the CPU; `kw` overrides TrainConfig fields."""
    from sparta.train import TrainConfig, train

    values = dict(
        task="custom",
        model=str(model),
        output=str(output),
        seed=seed,
        density=0.2,
        batch_size=8,
        max_steps=6,
        lr=2e-2,
        progress=False,
        zero_shot=False,
        device="cpu",
        **files,
    )
    cfg = TrainConfig(**(values | kw))
    train(cfg)
    return output


def bare_adapter(path: Path, base: Path, seed: int, density: float = 0.1) -> Path:
    """A bare adapter dir with random deltas on the model saved in `base`."""
    torch.manual_seed(seed + 100)
    net = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=2)
    model = get_sparta_model(net, SpartaConfig(density=density, seed=seed))
    with torch.no_grad():
        for p in model.delta_parameters().values():
            p.normal_()
    model.save_pretrained(path)
    return path
