"""`sparta merge`, `sparta export` and predict/eval on their outputs, end to end through `sparta.cli.main`."""

import json

import pytest

from sparta.cli import main  # noqa: E402
from tinylm import save_model_dir, toy_examples  # noqa: E402


def negation_examples(n: int, seed: int) -> list[dict]:
    """A second toy task: label 1 iff the sentence contains "very" (the sentiment word is noise)."""
    rows = []
    for row in toy_examples(n, seed):
        words = [w for w in row["text"].split() if w != "very"]
        label = (seed + len(rows)) % 2
        if label:
            words.insert(len(rows) % (len(words) + 1), "very")
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-cli")
    model = save_model_dir(root / "model", chat=True, tied=True)
    runs = {}
    for i, (name, make) in enumerate((("sentiment", toy_examples), ("intensity", negation_examples))):
        files = []
        for split, n, seed in (("train", 48, 21), ("dev", 16, 22), ("test", 24, 23)):
            path = root / f"{name}-{split}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in make(n, seed)))
            files += [f"--{split}-file", str(path)]
        runs[name] = root / name
        argv = [
            "train",
            "--task",
            "custom",
            *files,
            "--model",
            str(model),
            "--label-words",
            "No,Yes",
            "--density",
            "0.2",
            "--seed",
            str(i),
            "--max-steps",
            "3",
            "--batch-size",
            "8",
            "--lr",
            "0.02",
            "--no-zero-shot",
            "--no-progress",
            "--output",
            str(runs[name]),
        ]
        assert main(argv) == 0
    return runs


def test_merge_reports_and_compares_then_predict_and_eval(trained, tmp_path, capsys):
    out = tmp_path / "merged"
    argv = ["merge", str(trained["sentiment"]), str(trained["intensity"]), "--output", str(out), "--eval"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "sentiment x intensity: overlap" in printed and "sign conflicts" in printed
    assert "sentiment test: merged" in printed and "intensity test: single" in printed
    doc = json.loads((out / "merged.json").read_text())
    assert [t["name"] for t in doc["tasks"]] == ["sentiment", "intensity"]
    assert set(doc["eval"]["tasks"]["sentiment"]) == {"merged", "single"}
    assert (out / "config.json").is_file() and (out / "heads" / "intensity.safetensors").is_file()

    assert main(["predict", str(out), "the movie was very good", "--json"]) == 0
    (pred,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert set(pred) == {"sentiment", "intensity"}
    for p in pred.values():
        assert p["label"] in ("0", "1") and sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert main(["predict", str(out), "a bad plot"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["sentiment", "intensity"]

    assert main(["eval", str(out), "--task", "intensity", "--split", "test"]) == 0
    printed = capsys.readouterr().out
    merged_acc = doc["eval"]["tasks"]["intensity"]["merged"]["accuracy"]
    assert f"accuracy={merged_acc:.4f}" in printed
    assert main(["eval", str(out), "--task", "nope"]) == 2
    assert "no task 'nope'" in capsys.readouterr().err


def test_merge_bad_input_is_one_line_error(trained, tmp_path, capsys):
    run = str(trained["sentiment"])
    assert main(["merge", run, run, "--output", str(tmp_path / "m"), "--weights", "1"]) == 2
    err = capsys.readouterr().err
    assert "weights has 1 values for 2 adapters" in err and "Traceback" not in err
    assert main(["merge", str(tmp_path), "--output", str(tmp_path / "m")]) == 2
    assert "not a SpaRTA adapter" in capsys.readouterr().err
    assert main(["merge", run, run, "--output", str(tmp_path / "m2")]) == 0
    assert (
        "warning:" in capsys.readouterr().out
        and "SAME positions" in (tmp_path / "m2" / "merged.json").read_text()
    )


def test_merge_with_refit_heads_records_the_refit_and_evaluates_it(trained, tmp_path, capsys):
    out = tmp_path / "m"
    argv = [
        "merge",
        str(trained["sentiment"]),
        str(trained["intensity"]),
        "--output",
        str(out),
        "--refit-heads",
        "--refit-samples",
        "32",
        "--refit-epochs",
        "5",
        "--eval",
        "--split",
        "dev",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "merged.json").read_text())
    for task in doc["tasks"]:
        refit = task["refit"]
        assert refit["train_examples"] == 32 and refit["epochs_run"] <= 5
        assert f"{task['name']}: head re-fitted on 32 examples" in printed
        merged_dev = doc["eval"]["tasks"][task["name"]]["merged"]
        assert merged_dev["loss"] == pytest.approx(refit["dev_loss_after"], abs=1e-5)
        assert (out / "heads" / f"{task['name']}.original.safetensors").is_file()
    assert (
        main(["merge", str(trained["sentiment"]), "--output", str(tmp_path / "x"), "--refit-samples", "0"])
        == 2
    )
    err = capsys.readouterr().err
    assert "--refit-samples must be a positive number" in err and not (tmp_path / "x").exists()


def test_export_then_eval_and_predict_the_exported_dir(trained, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(trained["sentiment"]), "--output", str(out)]) == 0
    capsys.readouterr()
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert main(["eval", str(out), "--split", "test"]) == 0
    exported = capsys.readouterr().out
    assert main(["eval", str(trained["sentiment"]), "--split", "test"]) == 0
    assert capsys.readouterr().out == exported  # the same input format, the same weights: the same metrics
    assert main(["predict", str(out), "a good film"]) == 0
    assert capsys.readouterr().out.split("\t")[0] in ("0", "1")
    assert main(["export", str(trained["sentiment"]), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_merge_strategies_end_to_end(trained, tmp_path, capsys):
    pair = [str(trained["sentiment"]), str(trained["intensity"])]
    assert (
        main(["merge", *pair, "--output", str(tmp_path / "ties"), "--strategy", "ties", "--top-k", "0.5"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "strategy ties top_k=0.5" in printed and "of its delta mass survives ties (sum 100.0%" in printed
    doc = json.loads((tmp_path / "ties" / "merged.json").read_text())
    assert doc["strategy"] == {"name": "ties", "top_k": 0.5}
    shares = doc["survival"]["tasks"]
    assert set(shares) == {"sentiment", "intensity"} and all(0 < s < 1 for s in shares.values())
    argv = [
        "merge",
        *pair,
        "--output",
        str(tmp_path / "dare"),
        "--strategy",
        "dare",
        "--drop",
        "0.3",
        "--dare-then",
        "ties",
        "--top-k",
        "0.5",
        "--dare-seed",
        "2",
    ]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "dare" / "merged.json").read_text())
    assert doc["strategy"] == {"name": "dare", "drop": 0.3, "then": "ties", "seed": 2, "top_k": 0.5}
    assert main(["eval", str(tmp_path / "dare"), "--task", "sentiment"]) == 0


def test_merge_tune_weights_end_to_end(trained, tmp_path, capsys):
    out = tmp_path / "tuned"
    argv = [
        "merge",
        str(trained["sentiment"]),
        str(trained["intensity"]),
        "--output",
        str(out),
        "--tune-weights",
        "--weight-grid",
        "0.5,1",
        "--strategy",
        "ties",
        "--param-grid",
        "0.5,1",
        "--max-eval-samples",
        "8",
        "--device",
        "cpu",
        "--eval",
        "--split",
        "dev",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "merged.json").read_text())
    tuning = doc["tuning"]
    assert len(tuning["candidates"]) == 8 and tuning["parameter_grid"] == [0.5, 1.0]
    assert "tuning on dev (sentiment: 8, intensity: 8 examples" in printed
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("tuning on dev")) + 1
    table = [line.split() for line in lines[start : start + 10]]
    assert table[0][:3] == ["top_k", "w:sentiment", "w:intensity"] and table[1][0] == "single"
    assert [row[0] for row in table[2:10]].count("*") == 1
    chosen = tuning["candidates"][tuning["chosen"]]
    assert doc["strategy"] == {"name": "ties", "top_k": chosen["top_k"]}
    for task in ("sentiment", "intensity"):  # --eval on dev (same 8 examples) measures the chosen candidate
        assert doc["eval"]["tasks"][task]["merged"]["accuracy"] == chosen["accuracy"][task]
        assert doc["eval"]["tasks"][task]["single"]["accuracy"] == tuning["single"][task]["accuracy"]
    assert len((out / "tuning.csv").read_text().splitlines()) == 9


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strategy", "avg"], "unknown merge strategy 'avg'; choose one of sum, mean, ties, dare"),
        (["--strategy", "ties", "--top-k", "0"], "--top-k must be in (0, 1], got 0.0"),
        (["--top-k", "0.5"], "--top-k does not apply to --strategy sum"),
        (["--strategy", "mean", "--dare-seed", "1"], "--dare-seed does not apply to --strategy mean"),
        (["--strategy", "dare", "--drop", "1"], "--drop must be in [0, 1), got 1.0"),
        (["--strategy", "dare", "--dare-then", "mean"], "dare combines with sum or ties, not 'mean'"),
        (["--strategy", "dare", "--top-k", "0.5"], "--top-k applies to dare only with --dare-then ties"),
        (["--weight-grid", "1,2"], "--weight-grid applies only with --tune-weights"),
        (["--tune-weights", "--weights", "1,1"], "--weights and --tune-weights exclude each other"),
        (["--tune-weights", "--param-grid", "0.5"], "--strategy sum has no parameter to tune"),
        (["--tune-weights", "--strategy", "ties", "--param-grid", "2"], "--top-k must be in (0, 1], got 2.0"),
        (
            ["--tune-weights", "--max-eval-samples", "0"],
            "--max-eval-samples must be a positive number, got 0",
        ),
    ],
)
def test_merge_strategy_and_tuning_flags_bad_values(trained, tmp_path, capsys, extra, message):
    argv = [
        "merge",
        str(trained["sentiment"]),
        str(trained["intensity"]),
        "--output",
        str(tmp_path / "m"),
        *extra,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "m").exists()
