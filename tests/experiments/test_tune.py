"""The density search on the toy task: stages, recommendation from its grid, evidence table, plot, resume."""

from __future__ import annotations

import json

import pytest

from sparta.errors import SpartaError
from sparta.experiments.tune import _midpoints, gap_stats, tune_density


def base(toy) -> dict:
    return {
        "task": "custom",
        "train_file": str(toy["train"]),
        "dev_file": str(toy["dev"]),
        "test_file": str(toy["test"]),
        "label_words": ["No", "Yes"],
        "model": str(toy["model"]),
        "max_steps": 4,
        "batch_size": 8,
        "lr": 0.03,
        "log_every": 1,
        "zero_shot": False,
    }


def test_gap_from_history():
    history = [
        {"step": 1, "train_loss": 0.9},
        {"step": 2, "train_loss": 0.5, "dev_loss": 0.8},
        {"step": 3, "train_loss": 0.3},
        {"step": 4, "train_loss": 0.1, "dev_loss": 0.7},
    ]
    stats = gap_stats(history, window=2)
    assert stats["train_window_loss"] == pytest.approx(0.2) and stats["last_dev_loss"] == 0.7
    assert stats["gap"] == pytest.approx(0.5)
    assert gap_stats([], 3)["gap"] is None
    assert _midpoints([1e-3, 1e-2, 1e-1], 1e-2, 2) == [0.00316, 0.0316]


def test_tune_recommends_a_density_it_tried_and_resumes(toy, tmp_path):
    out = tmp_path / "tune"
    grid = [0.01, 0.1, 0.5]
    result = tune_density(
        base(toy),
        out,
        grid=grid,
        budget_runs=5,
        small_samples=24,
        large_samples=48,
        finalists=1,
        isolation="process",
    )
    stages = [r["stage"] for r in result["runs"]]
    assert stages == ["coarse"] * 3 + ["refine"] + ["final"]
    coarse_best = min(result["runs"][:3], key=lambda r: r["dev_loss"])["density"]
    assert result["runs"][3]["density"] in set(_midpoints(grid, coarse_best, 1))
    tried = {r["density"] for r in result["runs"]}
    assert result["recommended_density"] in tried
    assert result["runs"][-1]["density"] == result["recommended_density"]  # the only finalist
    assert {r["train_examples"] for r in result["runs"][:4]} == {24} and result["runs"][-1][
        "train_examples"
    ] == 48
    table = (out / "tune.md").read_text()
    assert "recommended density:" in table and "| coarse | 0.01 |" in table and "← recommended" in table
    assert (out / "tune.png").stat().st_size > 5000
    assert json.loads((out / "tune.json").read_text())["recommended_density"] == result["recommended_density"]

    def no_training(cfg):
        raise AssertionError("a finished run was trained again")

    again = tune_density(
        base(toy),
        out,
        grid=grid,
        budget_runs=5,
        small_samples=24,
        large_samples=48,
        finalists=1,
        isolation="process",
        train_fn=no_training,
    )
    assert again["recommended_density"] == result["recommended_density"]


def test_budget_too_small_is_an_error(toy, tmp_path):
    with pytest.raises(SpartaError, match="budget-runs"):
        tune_density(base(toy), tmp_path, budget_runs=2, finalists=2, isolation="process")
