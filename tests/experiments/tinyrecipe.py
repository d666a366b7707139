"""write_recipe: a 2-row x 1-task x 2-seed recipe over the tiny model and toy task (shared by the CLI tests)."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_recipe(path: Path, toy: dict[str, Path], steps: int = 2) -> Path:
    task = {
        "task": "custom",
        "train_file": str(toy["train"]),
        "dev_file": str(toy["dev"]),
        "test_file": str(toy["test"]),
        "label_words": ["No", "Yes"],
    }
    doc = {
        "name": "tiny",
        "title": "Tiny grid",
        "tasks": ["toy"],
        "rows": {
            "sparta": {"label": "SpaRTA 20%", "method": "sparta", "density": 0.2},
            "head": {"label": "Head", "method": "head"},
        },
        "scales": {
            "cpu": {
                "model": str(toy["model"]),
                "seeds": [0, 1],
                "settings": {
                    "max_steps": steps,
                    "batch_size": 8,
                    "log_every": 1,
                    "eval_every": 1,
                    "zero_shot": False,
                    "lr": 0.03,
                },
                "tasks": {"toy": task},
            }
        },
        "paper_results": {
            "paper-model": {"table": "Table X", "rows": {"head": {"toy": {"loss": 0.5, "accuracy": 90.0}}}}
        },
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
