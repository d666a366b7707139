"""Tables, CSV and RESULTS.md sections computed from hand-written results.json files."""

from __future__ import annotations

import csv
import json
import statistics

from sparta.experiments import load_recipe, update_results_md
from sparta.experiments.plots import plot_all
from sparta.experiments.report import aggregate, collect, merged_records, merging_table, results_table

# (row, seed) -> (test loss, test accuracy, trainable %)
KNOWN = {
    ("sparta", 0): (0.40, 0.80, 1.0),
    ("sparta", 1): (0.60, 0.90, 1.0),
    ("head", 0): (0.70, 0.55, 0.01),
    ("head", 1): (0.90, 0.65, 0.01),
}


def write_results(out, row, seed, loss, acc, share, metric="accuracy"):
    path = out / "toy" / row / f"seed{seed}"
    path.mkdir(parents=True)
    doc = {
        "method": row,
        "config": {"density": 0.2, "targets": None},
        "trainable_params": 10,
        "trainable_percent": share,
        "metrics": {"test": {"loss": loss, metric: acc}, "dev": {"loss": loss + 0.1, metric: acc}},
        "steps": 4,
        "train_seconds": 2.0,
        "train_examples_per_s": 8.0,
        "peak_memory_mb": 100.0,
        "adapter_bytes": 2048,
        "history": [
            {"step": s, "train_loss": 1 / s, **({"dev_loss": 1 / s + 0.1} if s % 2 == 0 else {})}
            for s in range(1, 5)
        ],
        "data": {"train": 32},
    }
    (path / "results.json").write_text(json.dumps(doc))


def write_known(out):
    """One results.json per KNOWN cell under `out`."""
    for (row, seed), values in KNOWN.items():
        write_results(out, row, seed, *values)


def test_tables_and_csv_show_mean_and_sample_sd(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file)
    out = tmp_path / "out"
    write_known(out)
    records = collect(recipe, out)
    assert [(r["row"], r["seed"]) for r in records] == [
        ("sparta", 0),
        ("sparta", 1),
        ("head", 0),
        ("head", 1),
    ]
    summaries = aggregate(records)
    table = results_table(summaries, recipe.tasks, list(recipe.rows))
    for row in ("sparta", "head"):
        losses = [KNOWN[(row, s)][0] for s in (0, 1)]
        accs = [KNOWN[(row, s)][1] for s in (0, 1)]
        loss_text = f"{statistics.mean(losses):.3f} ± {statistics.stdev(losses):.3f}"
        acc_text = f"{100 * statistics.mean(accs):.1f} ± {100 * statistics.stdev(accs):.1f}"
        line = next(line for line in table.splitlines() if line.startswith(f"| {recipe.label(row)} (n=2)"))
        assert loss_text in line and acc_text in line, line
    assert "| SpaRTA 20% (n=2) | 1% | 0.500 ± 0.141 | 85.0 ± 7.1 |" in table
    assert table.splitlines()[0] == "| Adaptation | trainable | toy loss | toy acc. |"

    from sparta.experiments.report import build_report

    build_report(recipe, "cpu", out)
    with open(out / "summary.csv") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    assert float(rows["head"]["test_loss_mean"]) == statistics.mean([0.7, 0.9])
    assert abs(float(rows["head"]["test_loss_sd"]) - statistics.stdev([0.7, 0.9])) < 1e-6
    assert rows["sparta"]["n"] == "2" and float(rows["sparta"]["step_seconds_mean"]) == 0.5


def test_single_seed_has_no_sd_and_cola_uses_mcc(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file)
    write_results(tmp_path, "head", 0, 0.5, 0.25, 0.01, metric="mcc")
    table = results_table(aggregate(collect(recipe, tmp_path)), recipe.tasks, list(recipe.rows))
    assert "toy mcc" in table and "| Head (n=1) | 0.01% | 0.500 | 25.0 |" in table


def test_plots_are_written_from_records(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file)
    write_known(tmp_path)
    paths = plot_all(recipe, collect(recipe, tmp_path), tmp_path)
    assert sorted(p.name for p in paths) == ["density.png", "efficiency.png", "losses.png"]
    assert all(p.stat().st_size > 5000 for p in paths)


def test_merging_table_from_merged_json(tmp_path):
    for seed, (single, merged) in enumerate([(0.80, 0.82), (0.90, 0.86)]):
        path = tmp_path / "merged" / "sparta-1" / f"seed{seed}"
        path.mkdir(parents=True)
        tasks = {
            t: {"single": {"loss": 0.3, "accuracy": single}, "merged": {"loss": 0.4, "accuracy": merged}}
            for t in ("sst2", "cola")
        }
        (path / "merged.json").write_text(json.dumps({"eval": {"split": "test", "tasks": tasks}}))
    table = merging_table(merged_records(tmp_path))
    lines = table.splitlines()
    assert lines[0] == "| Model | sst2 loss | sst2 acc. | cola loss | cola acc. |"
    assert lines[2].startswith("| sst2 | 0.300 ± 0.000 | 85.0 ± 7.1 | – | – |")
    assert lines[4] == "| Merged | 0.400 ± 0.000 | 84.0 ± 2.8 | 0.400 ± 0.000 | 84.0 ± 2.8 |"


def test_results_md_sections_are_replaced_not_duplicated(tmp_path):
    path = tmp_path / "RESULTS.md"
    update_results_md("## A\nfirst", "a:cpu", path)
    update_results_md("## B\nother", "b:cpu", path)
    update_results_md("## A\nsecond", "a:cpu", path)
    text = path.read_text()
    assert text.count("<!-- sparta:a:cpu start -->") == 1 and "second" in text and "first" not in text
    assert text.index("## A") < text.index("## B") and text.startswith("# Reproduced results")


def test_setup_line_names_the_eval_cap_or_the_whole_splits(recipe_file, tmp_path):
    from sparta.experiments.report import setup_line

    recipe = load_recipe(recipe_file)
    out = tmp_path / "out"
    write_known(out)
    records = collect(recipe, out)
    settings = recipe.scale("cpu").setdefault("settings", {})
    settings["max_eval_samples"] = None
    assert "the whole dev and test splits" in setup_line(recipe, "cpu", records, "m")
    settings["max_eval_samples"] = 50
    line = setup_line(recipe, "cpu", records, "m")
    assert "eval examples per split ≤ 50" in line and "None" not in line
