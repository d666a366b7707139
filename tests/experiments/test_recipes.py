"""Every shipped recipe loads and expands to its documented cells at both scales; cells round-trip as CLI flags
and as the YAML file a cell runs from."""

from __future__ import annotations

import argparse

import pytest

from sparta.errors import SpartaError
from sparta.experiments import expand, list_recipes, load_recipe
from sparta.experiments.recipes import estimate_seconds, parse_overrides
from sparta.experiments.runner import write_cell_config
from sparta.train.config import TrainConfig, add_train_arguments, config_from_args, load_yaml

SHIPPED = {"imdb", "glue", "merging", "targeting", "density-sweep"}
AVAILABLE = ("sst2", "cola", "mrpc", "rte", "imdb")


@pytest.fixture
def data_dir(tmp_path):
    """A data dir holding (empty) files for the tasks whose data we ship, none for qnli/qqp/mnli."""
    from sparta.tasks import get_task

    for name in AVAILABLE:
        spec = get_task(name)
        (tmp_path / name).mkdir()
        for split in (*spec.train_splits, *spec.dev_splits, *spec.test_splits):
            (tmp_path / name / f"{split}.jsonl.gz").touch()
    return tmp_path


def test_all_documented_recipes_ship():
    assert set(list_recipes()) >= SHIPPED


@pytest.mark.parametrize("scale", ["cpu", "paper"])
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_recipe_expands_to_rows_x_tasks_x_seeds(name, scale, data_dir, tmp_path):
    recipe = load_recipe(name)
    cells, skipped = expand(recipe, scale, overrides={"data_dir": str(data_dir)})
    tasks = [t for t in recipe.tasks if t in AVAILABLE]
    assert set(skipped) == set(recipe.tasks) - set(tasks)
    seeds = recipe.scale(scale)["seeds"]
    rows = {
        t: [r for r, d in recipe.rows.items() if t in d.get("tasks", [t])] for t in tasks
    }  # `tasks:` rows
    wanted = [
        f"{t}/{r}/seed{s}"
        for t in tasks
        for r in rows[t]
        for s in seeds
        if s in recipe.rows[r].get("seeds", seeds)  # `seeds:` rows
    ]
    assert [c.key for c in cells] == wanted
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    for cell in cells:
        cfg = cell.config(tmp_path)
        assert config_from_args(parser.parse_args(cfg.to_argv())) == cfg, cell.key
        path = write_cell_config(cfg, tmp_path / "cell.yaml")
        assert TrainConfig.from_dict(load_yaml(path)) == cfg, cell.key
        assert cfg.model == recipe.scale(scale)["model"] and cfg.seed == cell.seed
        assert estimate_seconds(cell, recipe.scale(scale).get("tokens_per_example")) > 0
    if scale == "cpu":
        total = sum(estimate_seconds(c, recipe.scale(scale).get("tokens_per_example")) for c in cells)
        # CPU-sized: the evidence protocols are a few job-hours of resumable cells, not a GPU grid
        assert total < 3 * 3600, f"{name}: cpu scale estimated at {total / 60:.0f} min"


def test_merging_recipe_gives_each_task_its_own_index_seed(data_dir):
    cells, _ = expand(load_recipe("merging"), "cpu", seeds=[0, 2], overrides={"data_dir": str(data_dir)})
    by_key = {c.key: c.config("out") for c in cells}
    assert by_key["sst2/sparta-1/seed2"].index_seed is None and by_key["sst2/sparta-1/seed2"].seed == 2
    assert (
        by_key["cola/sparta-1/seed0"].index_seed == 1000 and by_key["cola/sparta-1/seed2"].index_seed == 1002
    )


def test_glue_skips_missing_tasks_with_a_note(data_dir):
    cells, skipped = expand(load_recipe("glue"), "cpu", overrides={"data_dir": str(data_dir)})
    assert set(skipped) == {"qnli", "qqp", "mnli"} and all(
        "train.jsonl.gz" in why for why in skipped.values()
    )
    assert {c.task for c in cells} == {"rte", "sst2", "mrpc", "cola"}


def test_paper_scale_uses_per_model_settings(data_dir):
    recipe = load_recipe("imdb")
    cells, _ = expand(recipe, "paper", model="mistral-7b-it", overrides={"data_dir": str(data_dir)})
    by_row = {c.row: c.settings for c in cells}
    assert (
        by_row["full"]["lr"] == 3e-6
        and by_row["full"]["batch_size"] == 36
        and by_row["full"]["dropout"] == 0.15
    )
    assert by_row["lora"]["max_grad_norm"] is None and by_row["sparta-5"]["lr"] == 2e-6
    gemma, _ = expand(recipe, "paper", overrides={"data_dir": str(data_dir)})
    assert {c.row: c.settings for c in gemma}["full"]["lr"] == 1e-5


def test_only_seeds_and_bad_names(data_dir):
    recipe = load_recipe("density-sweep")
    cells, _ = expand(recipe, "cpu", seeds=[3], only=["lora", "head"], overrides={"data_dir": str(data_dir)})
    assert [c.key for c in cells] == ["sst2/lora/seed3", "sst2/head/seed3"]
    with pytest.raises(SpartaError, match="no row nosuch"):
        expand(recipe, "cpu", only=["nosuch"])
    with pytest.raises(SpartaError, match="unknown experiment"):
        load_recipe("nosuch")
    with pytest.raises(SpartaError, match="unknown setting"):
        expand(recipe, "cpu", overrides={"data_dir": str(data_dir), "nosuch": 1})
    assert parse_overrides(["device=cuda", "lr=1e-3", "max-steps=5"]) == {
        "device": "cuda",
        "lr": 1e-3,
        "max_steps": 5,
    }
    with pytest.raises(SpartaError, match="key=value"):
        parse_overrides(["lr"])


def test_budget_rows_get_equal_delta_counts(toy):
    from sparta.experiments.recipes import Cell, resolve_budgets, target_sizes

    cells = [
        Cell("t", name, 0, name, {"model": str(toy["model"]), "method": "sparta", "targets": targets}, 0.01)
        for name, targets in (("all", ["all-linear"]), ("k", ["k_proj"]), ("vo", ["v_proj", "o_proj"]))
    ]
    resolve_budgets(cells)
    sizes = target_sizes(str(toy["model"]), [["all-linear"], ["k_proj"], ["v_proj", "o_proj"]])
    assert cells[0].settings["density"] == pytest.approx(0.01)
    for cell, size in zip(cells, sizes, strict=True):
        assert cell.settings["density"] * size == pytest.approx(0.01 * sizes[0])


def test_the_estimate_counts_the_training_loops_own_steps():
    from sparta.experiments.recipes import TRAIN_S_PER_TOKEN, Cell, estimate_parts
    from sparta.train.schedule import Schedule

    settings = {
        "task": "sst2",
        "method": "sparta",
        "max_train_samples": 100,
        "batch_size": 16,
        "grad_accum": 2,
        "epochs": 2.5,
    }
    plan = Schedule.plan(TrainConfig(**settings), 100)
    assert plan.total_steps == 10  # 7 micro-batches -> 4 steps per epoch, 2.5 epochs round up to 10
    train_seconds, _ = estimate_parts(Cell("sst2", "r", 0, "r", settings), {"sst2": 10})
    assert train_seconds == pytest.approx(10 * plan.total_steps * 16 * 2 * TRAIN_S_PER_TOKEN)
