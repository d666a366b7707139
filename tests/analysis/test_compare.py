"""`sparta compare`: the paired bootstrap over per-example scores, and the scores every run writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparta.analysis.compare import compare, load_examples
from sparta.cli import main
from sparta.errors import SpartaError
from sparta.fileio import read_jsonl, write_jsonl
from sparta.train import train


def _rows(correct: list[bool]) -> list[dict]:
    return [{"index": i, "key": f"k{i}", "correct": c} for i, c in enumerate(correct)]


def test_identical_runs_differ_by_nothing():
    rows = _rows([i % 3 == 0 for i in range(60)])
    got = compare(rows, rows)
    assert (got.metric, got.examples, got.difference, got.low, got.high) == ("correct", 60, 0.0, 0.0, 0.0)


def test_a_run_better_on_some_examples_and_worse_on_none_has_an_interval_above_zero():
    """B is A with 6 of 200 right answers turned wrong: A - B = 0.03, and no resample can make it negative."""
    a = [i % 2 == 0 for i in range(200)]
    b = [c and i not in range(0, 12, 2) for i, c in enumerate(a)]
    got = compare(_rows(a), _rows(b), samples=2000)
    assert got.difference == pytest.approx(0.03) and got.a == 0.5 and got.b == pytest.approx(0.47)
    assert 0 <= got.low < 0.03 < got.high


def test_pairing_narrows_the_interval():
    """Two runs that share which examples are easy: the paired interval is much narrower than the spread of
    the difference of two independent resamples."""
    rng = np.random.default_rng(0)
    easy = rng.random(400) < 0.6
    a, b = easy.copy(), easy.copy()
    b[rng.choice(400, 12, replace=False)] ^= True
    got = compare(_rows(list(a)), _rows(list(b)), samples=2000)
    unpaired = [
        a[rng.integers(0, 400, 400)].mean() - b[rng.integers(0, 400, 400)].mean() for _ in range(2000)
    ]
    lo, hi = np.quantile(unpaired, [0.025, 0.975])
    assert got.high - got.low < (hi - lo) / 3


def test_token_nll_is_compared_as_the_loss_is_computed():
    a = [{"index": i, "nll": 2.0 * (i + 1), "tokens": i + 1} for i in range(5)]  # 2 nats per token
    b = [{"index": i, "nll": 1.0 * (i + 1) + (i == 4), "tokens": i + 1} for i in range(5)]
    got = compare(a, b, samples=200)
    assert got.metric == "nll" and got.a == 2.0 and got.b == pytest.approx(16 / 15)
    assert got.difference == pytest.approx(2 - 16 / 15)


@pytest.mark.parametrize(
    ("b", "message"),
    [
        (_rows([True] * 9), "different examples"),
        ([{**r, "key": "other"} for r in _rows([True] * 10)], "example 0 differs"),
        ([{"index": i, "nll": 1.0, "tokens": 1} for i in range(10)], "no score in common"),
    ],
)
def test_runs_not_scored_on_the_same_examples_are_refused(b, message):
    with pytest.raises(SpartaError, match=message):
        compare(_rows([True] * 10), b)


def test_an_unknown_metric_names_the_scores_there_are():
    with pytest.raises(SpartaError, match=r"no per-example 'margin' in both runs; they hold correct"):
        compare(_rows([True]), _rows([False]), metric="margin")


# -- end to end: two trained runs, their examples, `sparta eval --output` and `sparta compare` -----------------------
@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, toy_task_files, base_model_dir):
    from sparta.train import TrainConfig

    root = tmp_path_factory.mktemp("compare")
    for method in ("sparta", "lora"):
        train(
            TrainConfig(
                task="custom",
                train_file=str(toy_task_files["train"]),
                dev_file=str(toy_task_files["dev"]),
                test_file=str(toy_task_files["test"]),
                model=str(base_model_dir),
                output=str(root / method),
                method=method,
                batch_size=8,
                max_steps=8,
                lr=1e-2,
                progress=False,
                device="cpu",
            )
        )
    return root


def test_a_run_writes_each_test_examples_scores(two_runs):
    results = json.loads((two_runs / "sparta" / "results.json").read_text())
    for name, metrics in (
        ("test", results["metrics"]["test"]),
        ("zero-shot.test", results["zero_shot"]["test"]),
    ):
        rows = read_jsonl(two_runs / "sparta" / "examples" / f"{name}.jsonl")
        assert [r["index"] for r in rows] == list(range(32))
        assert sum(r["correct"] for r in rows) / 32 == pytest.approx(metrics["accuracy"])
        assert sum(r["loss"] for r in rows) / 32 == pytest.approx(metrics["loss"], rel=1e-5)
        assert all(r["correct"] == (r["predicted"] == r["label"]) for r in rows)


def test_sparta_compare_of_two_runs(two_runs, capsys):
    a, b = str(two_runs / "sparta"), str(two_runs / "lora")
    assert main(["compare", a, b, "--samples", "500", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    accuracy = {
        m: json.loads((two_runs / m / "results.json").read_text())["metrics"]["test"]["accuracy"]
        for m in ("sparta", "lora")
    }
    assert got["metric"] == "correct" and got["examples"] == 32
    assert (got["a"], got["b"]) == (pytest.approx(accuracy["sparta"]), pytest.approx(accuracy["lora"]))
    assert got["low"] <= got["difference"] <= got["high"]
    assert main(["compare", a, b, "--metric", "loss", "--samples", "200"]) == 0
    shown = capsys.readouterr().out
    assert "loss on 32 test examples" in shown and "95% interval" in shown


def test_sparta_eval_output_scores_the_same_examples(two_runs, tmp_path, capsys):
    run = two_runs / "sparta"
    assert main(["eval", str(run), "--output", str(tmp_path / "again")]) == 0
    trained, again = load_examples(run), load_examples(tmp_path / "again")
    assert [r["key"] for r in trained] == [r["key"] for r in again]
    assert [r["predicted"] for r in trained] == [r["predicted"] for r in again]
    assert main(["compare", str(run), str(tmp_path / "again"), "--samples", "100", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["difference"] == 0.0


def test_bad_inputs_are_one_clear_error(two_runs, tmp_path, capsys):
    write_jsonl(tmp_path / "short.jsonl", load_examples(two_runs / "lora")[:5])
    (tmp_path / "old-run").mkdir()
    (tmp_path / "broken.jsonl").write_text('{"index": 0}\n{not json\n')
    cases = [
        ([str(two_runs / "sparta"), str(tmp_path / "short.jsonl")], "different examples (32 vs 5)"),
        ([str(two_runs / "sparta"), str(tmp_path / "old-run")], "sparta eval"),
        ([str(two_runs / "sparta"), str(tmp_path / "nowhere")], "neither a run dir"),
        ([str(two_runs / "sparta"), str(tmp_path / "broken.jsonl")], "line 2"),
        ([str(two_runs / "sparta"), str(two_runs / "lora"), "--samples", "0"], "at least 1 resample"),
    ]
    for argv, message in cases:
        assert main(["compare", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1
