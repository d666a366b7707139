"""`tune_merge` (`sparta merge --tune-weights`) on two tiny tasks: its choice is the grid's best candidate by the
objective computed here independently, from `sparta eval`-style evaluations of merges saved with each candidate's
settings; the evidence is saved; bad grids and adapters are clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sparta.errors import SpartaError
from sparta.merging import Strategy, merge_adapters, tune_merge
from sparta.runs import evaluate, open_model
from tinyclsruns import bare_adapter, topic_examples, train_run, write_task
from tinylm import save_model_dir, toy_examples

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tune")
    base = save_model_dir(root / "base", chat=False, tied=False)
    sentiment = write_task(root / "data-sentiment", toy_examples)
    topic = write_task(root / "data-topic", topic_examples)
    return {
        "base": base,
        "sentiment": train_run(root / "sentiment", base, sentiment, seed=0, max_steps=8),
        "topic": train_run(root / "topic", base, topic, seed=1, max_steps=8),
    }


def dev_accuracy(path: Path, task: str | None) -> float:
    """What `sparta eval PATH [--task T] --split dev` reports as accuracy."""
    return evaluate(open_model(path, device="cpu"), task, "dev")["accuracy"]


def objective(single: dict[str, float], merged: dict[str, float], weights: list[float]) -> tuple:
    drops = [100 * (single[t] - merged[t]) for t in single]
    return (max(drops), sum(drops) / len(drops), sum(abs(w - 1) for w in weights))


@pytest.mark.parametrize(
    ("strategy", "param_grid", "check_all"),
    [(Strategy("sum"), None, True), (Strategy("ties"), (0.3, 1.0), False)],
    ids=["sum", "ties"],
)
def test_the_choice_is_the_grids_best_by_independent_evaluations(
    runs, tmp_path, strategy, param_grid, check_all
):
    pair, tasks = [runs["sentiment"], runs["topic"]], ["sentiment", "topic"]
    grid = (0.0, 1.0, 3.0)
    doc = tune_merge(
        pair, tmp_path / "tuned", strategy=strategy, weight_grid=grid, param_grid=param_grid, device="cpu"
    )
    tuning = doc["tuning"]
    candidates = tuning["candidates"]
    assert len(candidates) == 9 * (len(param_grid) if param_grid else 1)
    single = {t: dev_accuracy(r, None) for t, r in zip(tasks, pair, strict=True)}
    assert {t: s["accuracy"] for t, s in tuning["single"].items()} == single
    assert tuning["dev_examples"] == {"sentiment": 16, "topic": 16} and tuning["weight_grid"] == list(grid)
    param = tuning["parameter"]
    assert param == (None if param_grid is None else "top_k")

    def saved(k: int) -> dict[str, float]:
        """Merge with candidate k's settings, save it and evaluate it as `sparta eval` would."""
        c = candidates[k]
        rule = Strategy(strategy.name, **({param: c[param]} if param else {}))
        out = tmp_path / f"c{k}"
        merge_adapters(pair, out, weights=[c["weights"][t] for t in tasks], strategy=rule)
        return {t: dev_accuracy(out, t) for t in tasks}

    chosen = tuning["chosen"]
    # every candidate (sum), or the first, the chosen and the last one (ties)
    checked = range(len(candidates)) if check_all else sorted({0, chosen, len(candidates) - 1})
    scores = {}
    for k in checked:
        accuracy = saved(k)
        assert candidates[k]["accuracy"] == accuracy  # the in-memory candidate is the saved merge
        scores[k] = (*objective(single, accuracy, list(candidates[k]["weights"].values())), k)
    for c in candidates:  # the objective recorded for every candidate, recomputed
        assert (c["worst_drop"], c["mean_drop"], c["distance_from_1"]) == pytest.approx(
            objective(single, c["accuracy"], list(c["weights"].values()))
        )
    if check_all:
        assert chosen == min(scores.values())[-1]
    best = min((c["worst_drop"], c["mean_drop"], c["distance_from_1"], k) for k, c in enumerate(candidates))
    assert chosen == best[-1]
    worst = [c["worst_drop"] for c in candidates]
    assert len(set(worst)) > 1  # the grid's weights do matter on these tasks

    c = candidates[chosen]
    assert [t["weight"] for t in doc["tasks"]] == [c["weights"][t] for t in tasks]
    expected_rule = Strategy(strategy.name, **({param: c[param]} if param else {}))
    assert doc["strategy"] == expected_rule.describe()
    merge_adapters(pair, tmp_path / "again", weights=[c["weights"][t] for t in tasks], strategy=expected_rule)
    ours = AutoModelForCausalLM.from_pretrained(str(tmp_path / "tuned")).state_dict()
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "again")).state_dict()
    assert all(torch.equal(ours[n], again[n]) for n in ours)

    saved_doc = json.loads((tmp_path / "tuned" / "merged.json").read_text())
    assert saved_doc["tuning"]["candidates"] == candidates and saved_doc["tuning"]["chosen"] == chosen
    with (tmp_path / "tuned" / "tuning.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(candidates) and [int(r["chosen"]) for r in rows].index(1) == chosen
    for r, c in zip(rows, candidates, strict=True):
        assert float(r["dev_accuracy_topic"]) == pytest.approx(c["accuracy"]["topic"], abs=1e-6)
        assert float(r["weight_sentiment"]) == c["weights"]["sentiment"]


def test_max_eval_samples_caps_the_dev_sets(runs, tmp_path):
    doc = tune_merge(
        [runs["sentiment"], runs["topic"]],
        tmp_path / "m",
        weight_grid=(1.0,),
        max_eval_samples=8,
        device="cpu",
    )
    assert doc["tuning"]["dev_examples"] == {"sentiment": 8, "topic": 8}
    assert len(doc["tuning"]["candidates"]) == 1 and doc["tuning"]["max_eval_samples"] == 8


def test_bad_grids_and_adapters_are_clear_errors_before_anything_is_written(runs, tmp_path):
    from tinysftruns import write_sft_run

    pair, out = [runs["sentiment"], runs["topic"]], tmp_path / "m"
    cases = [
        ({"weight_grid": ()}, "--weight-grid needs at least one weight"),
        ({"param_grid": (0.5,)}, "sum has no parameter to tune"),
        ({"strategy": Strategy("ties"), "param_grid": (0.0,)}, r"--top-k must be in \(0, 1\]"),
        ({"strategy": Strategy("dare"), "param_grid": ()}, "--param-grid needs at least one value"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SpartaError, match=message):
            tune_merge(pair, out, device="cpu", **kwargs)
        assert not out.exists()
    bare = bare_adapter(tmp_path / "bare", runs["base"], seed=4)
    with pytest.raises(SpartaError, match="needs training dirs"):
        tune_merge([runs["sentiment"], bare], out, device="cpu")
    sft = write_sft_run(tmp_path / "sft", save_model_dir(tmp_path / "lm", chat=True, tied=False))
    with pytest.raises(SpartaError, match="language-modelling"):
        tune_merge([sft, sft], out, device="cpu")
    assert not out.exists()


@pytest.mark.parametrize(
    "strategy",
    [Strategy("sum"), Strategy("ties", top_k=0.3), Strategy("dare", drop=0.4, then="ties")],
    ids=str,
)
def test_an_in_memory_candidate_is_bitwise_the_saved_merge(runs, tmp_path, strategy):
    from sparta.merging.merge import open_sources, prepare_merge
    from sparta.merging.tuning import InMemoryMerge

    pair, weights = [runs["sentiment"], runs["topic"]], [0.75, 1.25]
    prep = prepare_merge(open_sources(pair, None), tmp_path / "memory")
    memory = InMemoryMerge(prep, prep.backbone)
    memory.write([3.0, 0.5], Strategy("mean"))  # an earlier candidate, overwritten by the next
    memory.write(weights, strategy)
    merge_adapters(pair, tmp_path / "saved", weights=weights, strategy=strategy)
    saved = AutoModelForCausalLM.from_pretrained(str(tmp_path / "saved")).state_dict()
    ours = prep.backbone.state_dict()
    assert all(torch.equal(ours[n], saved[n]) for n in saved)
    memory.reset()
    base = AutoModelForCausalLM.from_pretrained(str(runs["base"])).state_dict()
    assert all(torch.equal(ours[n], base[n]) for n in base)
