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
        argv = ["train", "--task", "custom", *files, "--model", str(model), "--label-words", "No,Yes",
                "--density", "0.2", "--seed", str(i), "--max-steps", "3", "--batch-size", "8", "--lr", "0.02",
                "--no-zero-shot", "--no-progress", "--output", str(runs[name])]  # fmt: skip
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
    argv = ["merge", str(trained["sentiment"]), str(trained["intensity"]), "--output", str(out), "--refit-heads",
            "--refit-samples", "32", "--refit-epochs", "5", "--eval", "--split", "dev", "--device", "cpu"]  # fmt: skip
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
