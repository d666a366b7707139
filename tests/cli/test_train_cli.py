"""`sparta train`, `sparta eval` and `sparta predict` end to end, through `sparta.cli.main`."""

import json
import os
from pathlib import Path

import pytest

from sparta.cli import main  # noqa: E402
from tinylm import save_model_dir, toy_examples  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-toy")
    model = save_model_dir(root / "model", chat=True, tied=True)
    files = {}
    for split, n, seed in (("train", 64, 11), ("dev", 16, 12), ("test", 24, 13)):
        files[split] = root / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in toy_examples(n, seed)))
    return root, model, files


def test_train_then_eval_then_predict(toy, tmp_path, capsys):
    root, model, files = toy
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(f"method: sparta\ndensity: 0.2\nlr: 0.5\nmax_steps: 4\nbatch_size: 8\nmodel: {model}\n")
    argv = [
        "train",
        "--config",
        str(config),
        "--task",
        "custom",
        "--train-file",
        str(files["train"]),
        "--dev-file",
        str(files["dev"]),
        "--test-file",
        str(files["test"]),
        "--label-words",
        "No,Yes",
        "--lr",
        "0.03",
        "--output",
        str(out),
        "--no-progress",
        "--eval-every",
        "2",
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["lr"] == 0.03 and results["config"]["density"] == 0.2  # CLI over YAML
    assert results["steps"] == 4 and results["method"] == "sparta" and results["model"]["instruct"] is True
    assert results["head_init"]["kind"] == "label_words" and results["head_init"]["tokens"] == ["No", "Yes"]
    assert set(results["zero_shot"]) == {"dev", "test"}
    capsys.readouterr()

    # a second train into the same dir is refused with a one-line error and exit code 2
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err

    assert main(["eval", str(out), "--split", "test", "--output", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    ev = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert ev["metrics"]["test"]["loss"] == pytest.approx(results["metrics"]["test"]["loss"], rel=1e-4)
    assert f"accuracy={results['metrics']['test']['accuracy']:.4f}" in printed
    assert main(["evaluate", str(out), "--split", "dev"]) == 0  # the alias
    capsys.readouterr()

    assert main(["predict", str(out), "the movie was good", "a bad plot", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    for pred in lines:
        assert set(pred["probabilities"]) == {"0", "1"} and pred["label"] in ("0", "1")
        assert sum(pred["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("method", ["head", "lora", "full"])
def test_other_methods_save_something_eval_can_rebuild(toy, tmp_path, capsys, method):
    root, model, files = toy
    out = tmp_path / method
    argv = [
        "train",
        "--task",
        "custom",
        "--train-file",
        str(files["train"]),
        "--test-file",
        str(files["test"]),
        "--model",
        str(model),
        "--method",
        method,
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--output",
        str(out),
        "--no-progress",
        "--no-zero-shot",
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    assert f"loss={results['metrics']['test']['loss']:.4f}" in capsys.readouterr().out
    if method == "full":  # the saved model dir is a plain HF model dir: eval loads it with --task
        assert main(["eval", str(out / "model"), "--task", "custom"]) == 2  # custom needs its files
        assert "custom" in capsys.readouterr().err


def test_without_lr_the_default_is_used_logged_and_recorded(toy, tmp_path, capsys):
    from sparta.train.rates import default_lr

    root, model, files = toy
    out = tmp_path / "default-lr"
    argv = [
        "train",
        "--task",
        "custom",
        "--train-file",
        str(files["train"]),
        "--model",
        str(model),
        "--method",
        "head",
        "--max-steps",
        "1",
        "--batch-size",
        "8",
        "--output",
        str(out),
        "--no-progress",
        "--no-zero-shot",
    ]
    assert main(argv) == 0
    expected = default_lr("head", "classification").lr
    assert json.loads((out / "results.json").read_text())["config"]["lr"] == expected
    assert "lr 1e-3: the default for head (classification" in capsys.readouterr().out


def test_bad_inputs_are_one_line_errors(toy, tmp_path, capsys):
    root, model, files = toy
    assert (
        main(["train", "--task", "nosuchtask", "--model", str(model), "--output", str(tmp_path / "x")]) == 2
    )
    assert "unknown task" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--method", "nosuch"])


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--density",
        "--lora-r",
        "--early-stopping-patience",
        "--warmup-ratio",
        "--config",
        "--template",
    ):
        assert flag in text


@pytest.mark.slow
def test_smollm2_sst2_sparta_through_the_cli(tmp_path, capsys):
    data = Path(os.environ.get("SPARTA_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data")
    if not (data / "sst2" / "train.jsonl.gz").is_file():
        pytest.skip("shared SST-2 data not found")
    out = tmp_path / "smollm2"
    argv = [
        "train",
        "--task",
        "sst2",
        "--method",
        "sparta",
        "--density",
        "0.005",
        "--targets",
        "v_proj,o_proj",
        "--max-train-samples",
        "32",
        "--max-eval-samples",
        "32",
        "--max-steps",
        "4",
        "--batch-size",
        "8",
        "--lr",
        "1e-4",
        "--data-dir",
        str(data),
        "--output",
        str(out),
        "--no-progress",
        "--log-every",
        "1",
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["instruct"] is True and results["head_init"]["tokens"] == ["No", "Yes"]
    assert results["data"]["dev"] == 32 and results["data"]["test"] == 32
    assert 0 < results["trainable_params"] < 0.01 * results["total_params"]
    for split in ("dev", "test"):
        assert 0 <= results["metrics"][split]["accuracy"] <= 1
        assert 0 <= results["zero_shot"][split]["accuracy"] <= 1
    assert len(results["history"]) == 4 and results["adapter_bytes"] > 0
