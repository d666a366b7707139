"""A merging recipe's merges (`sparta.experiments.merges`): the variants of the shipped acceptance protocol as
commands (dry), bad variants as clear errors, variants merged end to end on a toy recipe, and their report table."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from sparta.errors import SpartaError
from sparta.experiments import build_report, load_recipe, run_experiment
from sparta.experiments.merges import merge_plans
from sparta.experiments.recipes import expand
from sparta.experiments.report import merged_records, rules_table
from sparta.merging import merge as merge_module


@pytest.fixture
def data_dir(tmp_path):
    """(Empty) SST-2 and CoLA files: enough for the recipe to expand."""
    from sparta.tasks import get_task

    for name in ("sst2", "cola"):
        spec = get_task(name)
        (tmp_path / "data" / name).mkdir(parents=True)
        for split in (*spec.train_splits, *spec.dev_splits, *spec.test_splits):
            (tmp_path / "data" / name / f"{split}.jsonl.gz").touch()
    return tmp_path / "data"


def test_the_shipped_protocol_merges_every_rule_and_one_shared_index_set(data_dir, tmp_path):
    recipe = load_recipe("merging")
    cells, _ = expand(recipe, "cpu", overrides={"data_dir": str(data_dir)})
    keys = {c.key: c.config(tmp_path) for c in cells}
    assert "sst2/sparta-1-shared/seed0" not in keys  # SST-2's adapter is sparta-1's
    assert "cola/sparta-1-shared/seed1" not in keys  # the shared-index row trains on seed 0 only
    assert keys["cola/sparta-1-shared/seed0"].index_seed == 0 == keys["sst2/sparta-1/seed0"].seed
    for seed in (0, 1, 2):
        assert keys[f"cola/sparta-1/seed{seed}"].index_seed == 1000 + seed
        assert keys[f"sst2/sparta-1/seed{seed}"].max_train_samples == 2000
        assert keys[f"cola/sparta-1/seed{seed}"].max_train_samples is None  # CoLA's whole training set
        assert keys[f"cola/sparta-1/seed{seed}"].precision == "fp32"
    plans = {str(p.target.relative_to(tmp_path)): p for p in merge_plans(recipe, "cpu", tmp_path, cells)}
    # sum, mean, TIES on 3 seeds; DARE's 3 seeds of randomness, the 2 tuned merges, the 7 shared-index rules on seed 0
    assert len(plans) == 3 * 3 + 3 + 2 + 7
    assert {f"merged/dare-seed{k}/seed0" for k in range(3)} <= set(plans)
    assert "merged/tuned-ties/seed1" not in plans and "merged/dare-seed0/seed1" not in plans
    shared = plans["merged/shared-mean/seed0"]
    assert [str(s.relative_to(tmp_path)) for s in shared.sources] == [
        "sst2/sparta-1/seed0",
        "cola/sparta-1-shared/seed0",
    ]
    assert "--overwrite --strategy mean --eval --split test --data-dir" in shared.command()
    tuned = plans["merged/tuned-ties/seed0"].command()
    assert "--strategy ties --tune-weights --weight-grid 0.5,0.75,1,1.25 --param-grid 0.1,0.2,0.5" in tuned
    assert "--top-k" not in tuned and tuned.endswith("# tuning on 250 dev examples per task")
    dare = plans["merged/shared-dare-ties/seed0"].command()
    assert "--strategy dare --drop 0.5 --dare-then ties --dare-seed 0 --top-k 0.2" in dare
    assert plans["merged/sparta-1/seed0"].command().count("--strategy") == 0


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ({"strategy": "avg"}, "merge variant 'v': unknown merge strategy 'avg'"),
        ({"strategy": "mean", "top_k": 0.2}, "merge variant 'v': --top-k does not apply to --strategy mean"),
        ({"rows": {"cola": "nope"}}, "merge variant 'v': no row nope"),
        ({"weights": [1, 2]}, "merge variant 'v': unknown key(s) ['weights']"),
    ],
)
def test_bad_variants_are_clear_errors(data_dir, tmp_path, variant, message):
    recipe = load_recipe("merging")
    recipe.merge = {**recipe.merge, "variants": {"v": variant}}
    cells, _ = expand(recipe, "cpu", seeds=[0], overrides={"data_dir": str(data_dir)})
    with pytest.raises(
        SpartaError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        merge_plans(recipe, "cpu", tmp_path, cells)


def test_variants_merge_end_to_end_and_report_one_line_each(recipe_file, tmp_path, caplog, monkeypatch):
    doc = yaml.safe_load(recipe_file.read_text())
    task = doc["scales"]["cpu"]["tasks"]["toy"]
    variants = {
        "sparta": {},
        "ties": {"strategy": "ties", "top_k": 0.5},
        "tuned": {"tune_weights": True, "weight_grid": [0.5, 1.0], "max_eval_samples": 8},
    }
    doc.update(
        kind="merging",
        tasks=["toy-a", "toy-b"],
        merge={"row": "sparta", "split": "test", "variants": variants},
    )
    doc["scales"]["cpu"]["tasks"] = {"toy-a": task, "toy-b": {**task, "index_seed_offset": 1000}}
    doc["scales"]["cpu"]["seeds"] = [0]
    path = tmp_path / "merging.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    evaluated: list[
        str | None
    ] = []  # the task of each evaluation of compare_with_single (None: a single adapter)
    real_evaluate = merge_module.evaluate

    def counting_evaluate(loaded, task, *args, **kwargs):
        evaluated.append(task)
        return real_evaluate(loaded, task, *args, **kwargs)

    monkeypatch.setattr(merge_module, "evaluate", counting_evaluate)
    with caplog.at_level(logging.INFO, logger="sparta"):
        summary = run_experiment(load_recipe(path), "cpu", out, only=["sparta"], isolation="process")
    assert sorted(summary.merged) == ["merged/sparta/seed0", "merged/ties/seed0", "merged/tuned/seed0"]
    # each single adapter is evaluated once for the three variants, each merged model once per task
    assert evaluated.count(None) == 2 and len(evaluated) == 2 + 3 * 2
    assert len(list((out / "merged/single-metrics/seed0").glob("*.json"))) == 2
    singles = [
        {
            t: v["single"]
            for t, v in json.loads((out / f"merged/{n}/seed0/merged.json").read_text())["eval"][
                "tasks"
            ].items()
        }
        for n in variants
    ]
    assert singles[0] == singles[1] == singles[2] and len(singles[0]) == 2
    ties = json.loads((out / "merged/ties/seed0/merged.json").read_text())
    assert ties["strategy"] == {"name": "ties", "top_k": 0.5} and len(ties["eval"]["tasks"]) == 2
    assert ties["precision"] == "fp32"  # the adapters' training precision (the suite runs in fp32)
    tuned = json.loads((out / "merged/tuned/seed0/merged.json").read_text())
    assert len(tuned["tuning"]["candidates"]) == 4 and list(tuned["tuning"]["dev_examples"].values()) == [
        8,
        8,
    ]
    assert (
        tuned["eval"]["max_eval_samples"] is None
    )  # tuned on 8 dev examples, evaluated on the whole test split
    assert any("--tune-weights --weight-grid 0.5,1" in line for line in caplog.messages)
    text = build_report(load_recipe(path), "cpu", out)
    assert "Merge rules (test accuracy %" in text
    lines = rules_table(merged_records(out)).splitlines()
    assert lines[0].startswith("| Merge | rule | seeds | seed0 acc. | seed0 Δ vs single | seed0-2 acc. |")
    by_name = {line.split(" | ")[0][2:]: line for line in lines[2:]}
    assert set(by_name) == {"sparta", "ties", "tuned"}
    assert "| ties top_k=0.5 | 1 |" in by_name["ties"] and "sum (tuned)" in by_name["tuned"]
    weights = ",".join(f"{t['weight']:g}" for t in tuned["tasks"])
    assert by_name["tuned"].endswith(f"| {weights} |") and by_name["sparta"].endswith("| 1,1 |")
