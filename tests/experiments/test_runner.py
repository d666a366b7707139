"""A tiny grid end to end: run, skip finished cells, resume after an interruption, subprocess isolation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sparta.errors import SpartaError
from sparta.experiments import build_report, load_recipe, run_experiment
from sparta.train import train
from sparta.train.config import TrainConfig, load_yaml

KEYS = ["toy/sparta/seed0", "toy/sparta/seed1", "toy/head/seed0", "toy/head/seed1"]


def test_grid_runs_then_skips_every_finished_cell(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file)
    out = tmp_path / "out"
    summary = run_experiment(recipe, "cpu", out, isolation="process")
    assert summary.ran == KEYS and not summary.failed
    for key in KEYS:
        results = json.loads((out / key / "results.json").read_text())
        assert results["steps"] == 2 and results["config"]["seed"] == int(key[-1])
        assert results["method"] == key.split("/")[1]
    mtimes = {k: (out / k / "results.json").stat().st_mtime_ns for k in KEYS}

    def no_training(cfg):
        raise AssertionError(f"{cfg.output} was trained again")

    again = run_experiment(recipe, "cpu", out, isolation="process", train_fn=no_training)
    assert again.ran == [] and sorted(again.skipped) == sorted(KEYS)
    assert mtimes == {k: (out / k / "results.json").stat().st_mtime_ns for k in KEYS}

    text = build_report(recipe, "cpu", out)
    assert "| SpaRTA 20% (n=2) |" in text and "| Head (n=2) |" in text and "toy loss" in text
    assert "Paper (Table X, " in build_report(recipe, "cpu", out, model="paper-model")
    for name in ("density.png", "losses.png", "efficiency.png"):
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert len((out / "cells.csv").read_text().strip().splitlines()) == 1 + len(KEYS)


def test_interrupted_grid_resumes_with_the_cells_left(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file)
    out = tmp_path / "out"
    calls: list[str] = []

    def interrupted(cfg):
        calls.append(cfg.output)
        if len(calls) == 3:
            (out / "toy/head/seed0" / "log.csv").write_text("partial")  # a half-written cell
            raise KeyboardInterrupt
        return train(cfg)

    with pytest.raises(KeyboardInterrupt):
        run_experiment(recipe, "cpu", out, isolation="process", train_fn=interrupted)
    assert [(out / k / "results.json").is_file() for k in KEYS] == [True, True, False, False]

    resumed: list[str] = []

    def counting(cfg):
        resumed.append(cfg.output)
        return train(cfg)

    summary = run_experiment(recipe, "cpu", out, isolation="process", train_fn=counting)
    assert summary.ran == KEYS[2:] and sorted(summary.skipped) == sorted(KEYS[:2])
    assert resumed == [str(out / k) for k in KEYS[2:]]
    assert not (out / "toy/head/seed0" / "log.csv").read_text().startswith("partial")


def test_a_half_finished_cell_continues_from_its_checkpoint(recipe_file, tmp_path, toy):
    """A recipe with save_every: the cell stopped after step 5 continues at step 4 (its checkpoint), not step 1,
    and ends with the results of an uninterrupted run; a changed recipe starts the cell again."""
    from tinyrecipe import write_recipe

    recipe = load_recipe(write_recipe(tmp_path / "steps.yaml", toy, steps=6))
    recipe.scales["cpu"]["settings"]["save_every"] = 2
    out, whole = tmp_path / "out", tmp_path / "whole"
    run_experiment(recipe, "cpu", whole, only=["sparta"], seeds=[0], isolation="process")

    class Stop(Exception):
        pass

    def stopped(cfg):
        def stop_after_5(step: int) -> None:
            if step == 5:
                raise Stop

        return train(cfg, on_step=stop_after_5)

    with pytest.raises(Stop):
        run_experiment(recipe, "cpu", out, only=["sparta"], seeds=[0], isolation="process", train_fn=stopped)
    cell = out / "toy/sparta/seed0"
    assert not (cell / "results.json").exists() and (cell / "checkpoint-4").is_dir()
    started: list[int] = []

    def continuing(cfg):
        results = train(cfg)
        started.append(results["resumed_from_step"])
        return results

    run_experiment(recipe, "cpu", out, only=["sparta"], seeds=[0], isolation="process", train_fn=continuing)
    assert started == [4]
    done, reference = (json.loads((d / "toy/sparta/seed0/results.json").read_text()) for d in (out, whole))
    assert done["metrics"] == reference["metrics"] and done["history"] == reference["history"]
    assert (cell / "train.log").read_text().count("sparta train --config") == 2  # both attempts kept

    (cell / "results.json").unlink()
    recipe.scales["cpu"]["settings"]["lr"] = 0.01  # another recipe: the checkpoint is not this cell's
    run_experiment(recipe, "cpu", out, only=["sparta"], seeds=[0], isolation="process", train_fn=continuing)
    assert started == [4, None]


def test_a_cell_runs_from_its_yaml_file_in_a_subprocess(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file)
    out = tmp_path / "out"
    summary = run_experiment(
        recipe,
        "cpu",
        out,
        only=["head"],
        seeds=[1],
        overrides={"extra": {"note": "kept"}},
    )
    assert summary.ran == ["toy/head/seed1"], summary.failed
    cell = out / "toy/head/seed1"
    results = json.loads((cell / "results.json").read_text())
    assert results["method"] == "head" and results["config"]["extra"] == {
        "note": "kept"
    }  # YAML carries extra
    assert results["config"]["lr"] == 0.03  # the recipe's rate, not a default
    as_asked = TrainConfig.from_dict(load_yaml(cell / "cell.yaml")).to_dict()
    assert {**as_asked, "precision": "fp32"} == results["config"]  # the precision resolved for this device
    assert (cell / "train.log").read_text().startswith(f"sparta train --config {cell / 'cell.yaml'}\n")


def test_nothing_in_experiments_imports_the_cli():
    import sparta.experiments

    package = Path(sparta.experiments.__file__).parent
    for path in package.glob("*.py"):
        assert "sparta.cli" not in path.read_text(), path


def test_a_failing_cell_is_reported_and_the_grid_goes_on(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file)
    out = tmp_path / "out"
    summary = run_experiment(
        recipe,
        "cpu",
        out,
        only=["sparta"],
        seeds=[0],
        overrides={"targets": ["nosuch"]},
    )
    assert (
        list(summary.failed) == ["toy/sparta/seed0"] and "exit code 2" in summary.failed["toy/sparta/seed0"]
    )


def test_the_estimate_of_the_cells_left_is_scaled_by_the_finished_cells_speed(recipe_file, tmp_path, caplog):
    from sparta.experiments.recipes import estimate_parts, estimate_seconds, expand, format_seconds

    recipe = load_recipe(recipe_file)
    out = tmp_path / "out"
    run_experiment(recipe, "cpu", out, only=["sparta"], seeds=[0], isolation="process")
    cells, _ = expand(recipe, "cpu")
    done = next(c for c in cells if c.key == KEYS[0])
    train_estimate = estimate_parts(done)[0]
    results_file = out / KEYS[0] / "results.json"
    results = json.loads(results_file.read_text())
    results["train_seconds"] = 7 * train_estimate  # this machine ran 7x slower than the estimate assumed
    results_file.write_text(json.dumps(results))
    with caplog.at_level(logging.INFO, logger="sparta"):
        run_experiment(recipe, "cpu", out, dry_run=True)
    lines = caplog.messages
    left = sum(estimate_seconds(c) for c in cells if c.key != KEYS[0])
    assert f"  {format_seconds(7 * left)} for those left, x7.00 as measured by 1 finished cell" in lines
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sparta.experiments"):
        run_experiment(recipe, "cpu", out, only=["head"], seeds=[0], isolation="process")
    lines = [r.getMessage() for r in caplog.records if r.name == "sparta.experiments.runner"]
    head_left = sum(estimate_seconds(c) for c in cells if c.key == "toy/head/seed0")
    assert (
        f"(estimate {format_seconds(7 * head_left)} on CPU, x7.00 as measured by 1 finished cell)" in lines[0]
    )


def test_a_cell_finished_meanwhile_by_another_run_is_kept_not_retrained(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file)
    out = tmp_path / "out"
    trained: list[str] = []
    finished: dict[str, int] = {}

    def first_finishes_the_last_cell_too(cfg):
        trained.append(cfg.output)
        result = train(cfg)
        if len(trained) == 1:  # meanwhile, a second process on the same output finishes toy/head/seed1
            run_experiment(recipe, "cpu", out, only=["head"], seeds=[1], isolation="process")
            finished["mtime"] = (out / KEYS[3] / "results.json").stat().st_mtime_ns
        return result

    summary = run_experiment(
        recipe, "cpu", out, isolation="process", train_fn=first_finishes_the_last_cell_too
    )
    assert trained == [str(out / k) for k in KEYS[:3]]
    assert summary.ran == KEYS[:3] and summary.skipped == [KEYS[3]]
    assert json.loads((out / KEYS[3] / "results.json").read_text())["method"] == "head"
    assert (out / KEYS[3] / "results.json").stat().st_mtime_ns == finished["mtime"]


def test_a_merging_recipe_merges_its_cells_through_the_library(recipe_file, tmp_path, toy, caplog):
    import yaml

    doc = yaml.safe_load(recipe_file.read_text())
    task = doc["scales"]["cpu"]["tasks"]["toy"]
    doc.update(kind="merging", tasks=["toy-a", "toy-b"], merge={"row": "sparta", "split": "test"})
    doc["scales"]["cpu"]["tasks"] = {"toy-a": task, "toy-b": task}
    doc["scales"]["cpu"]["seeds"] = [0]
    path = tmp_path / "merging.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="sparta"):
        summary = run_experiment(load_recipe(path), "cpu", out, only=["sparta"], isolation="process")
    lines = caplog.messages
    assert summary.merged == ["merged/sparta/seed0"] and not summary.failed, summary
    merged = json.loads((out / "merged/sparta/seed0/merged.json").read_text())
    assert len(merged["tasks"]) == 2 and merged["eval"]["split"] == "test"
    assert all({"merged", "single"} <= set(m) for m in merged["eval"]["tasks"].values())
    assert any(line.startswith("sparta merge ") and "--eval" in line for line in lines)
    again = run_experiment(load_recipe(path), "cpu", out, only=["sparta"], isolation="process")
    assert again.merged == [] and "merged/sparta/seed0" in again.skipped


def test_a_grid_refuses_to_mix_precisions_before_training_anything(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file)
    out = tmp_path / "out"
    run_experiment(recipe, "cpu", out, only=["head"], seeds=[0], isolation="process")
    finished = json.loads((out / "toy/head/seed0/results.json").read_text())
    assert finished["precision"]["name"] == "fp32"

    def no_training(cfg):
        raise AssertionError(f"{cfg.output} was trained in a second precision")

    # fp16 autocast runs on every CPU, so the cells left would resolve to fp16-mixed beside a finished fp32 cell
    with pytest.raises(
        SpartaError, match=r"would mix precisions \(fp32: finished cell toy/head/seed0; fp16-mixed"
    ):
        run_experiment(
            recipe,
            "cpu",
            out,
            overrides={"precision": "fp16-mixed"},
            isolation="process",
            train_fn=no_training,
        )
    # the same precision as the finished cell goes on
    summary = run_experiment(
        recipe, "cpu", out, only=["head"], overrides={"precision": "fp32"}, isolation="process"
    )
    assert summary.ran == ["toy/head/seed1"] and summary.skipped == ["toy/head/seed0"]
