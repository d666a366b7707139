"""Bad input through `sparta.cli.main`: exit code 2 and one readable line on stderr, never a traceback."""

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch

from sparta.cli import main  # noqa: E402
from tinylm import save_model_dir, toy_examples  # noqa: E402

torch.set_num_threads(1)  # tiny models: threads only add contention on a busy machine


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    model = save_model_dir(root / "model", chat=False, tied=False)
    files = {}
    for split, n, seed in (("train", 32, 21), ("test", 16, 22)):
        files[split] = root / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in toy_examples(n, seed)))
    return root, model, files


def _train_argv(toy, out, *extra):
    root, model, files = toy
    return [
        "train",
        "--task",
        "custom",
        "--train-file",
        str(files["train"]),
        "--test-file",
        str(files["test"]),
        "--model",
        str(model),
        "--max-steps",
        "1",
        "--batch-size",
        "8",
        "--output",
        str(out),
        "--no-progress",
        "--no-zero-shot",
        *extra,
    ]


def _fails(capsys, argv, *needles) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]  # progress bars may share stderr
    assert len(lines) == 1 and lines[0].startswith("sparta ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def runs(toy, tmp_path_factory):
    """Finished sparta and lora runs to corrupt."""
    root = tmp_path_factory.mktemp("runs")
    for method in ("sparta", "lora"):
        assert main(_train_argv(toy, root / method, "--method", method)) == 0
    return root


@pytest.mark.parametrize("density", ["0", "1.5", "-0.1"])
def test_density_outside_unit_interval(toy, tmp_path, capsys, density):
    _fails(capsys, _train_argv(toy, tmp_path / "x", "--density", density), "density must be in (0, 1]")


@pytest.mark.parametrize("method", ["sparta", "lora"])
def test_targets_that_match_nothing_list_what_exists(toy, tmp_path, capsys, method):
    argv = _train_argv(toy, tmp_path / "x", "--method", method, "--targets", "nosuch_proj")
    _fails(capsys, argv, "nosuch_proj", "match no Linear module", "q_proj", "down_proj")


def test_unknown_task_model_and_split(toy, tmp_path, runs, capsys):
    _fails(capsys, ["train", "--task", "nosuchtask", "--output", str(tmp_path / "x")], "unknown task")
    argv = _train_argv(toy, tmp_path / "y")
    argv[argv.index("--model") + 1] = "nosuch-model-alias"
    _fails(capsys, argv, "nosuch-model-alias")
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage line + one error line
        main(["eval", str(runs / "sparta"), "--split", "validation"])
    assert exit_info.value.code == 2 and "invalid choice: 'validation'" in capsys.readouterr().err


def test_missing_columns_and_labels_out_of_range(toy, tmp_path, capsys):
    rows = toy_examples(8, 5)
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text("".join(json.dumps({"sentence": r["text"], "label": r["label"]}) + "\n" for r in rows))
    argv = _train_argv(toy, tmp_path / "x")
    argv[argv.index("--train-file") + 1] = str(renamed)
    _fails(capsys, argv, "'text' not found", "'sentence'")
    bad = tmp_path / "bad-label.jsonl"  # a custom task with 2 label words but a label 7
    bad.write_text(
        "".join(json.dumps({**r, "label": 7 if i == 3 else r["label"]}) + "\n" for i, r in enumerate(rows))
    )
    argv = _train_argv(toy, tmp_path / "y", "--label-words", "No,Yes")
    argv[argv.index("--test-file") + 1] = str(bad)
    _fails(capsys, argv, "num_labels=8")
    data = tmp_path / "data" / "sst2"  # a built-in task (2 labels) whose file holds a label 5
    data.mkdir(parents=True)
    for split in ("train", "validation"):
        with gzip.open(data / f"{split}.jsonl.gz", "wt") as f:
            f.writelines(
                json.dumps({"sentence": r["text"], "label": 5 if i == 2 else r["label"]}) + "\n"
                for i, r in enumerate(rows)
            )
    _, model, _ = toy
    argv = [
        "train",
        "--task",
        "sst2",
        "--data-dir",
        str(tmp_path / "data"),
        "--model",
        str(model),
        "--output",
        str(tmp_path / "z"),
        "--max-steps",
        "1",
        "--no-progress",
        "--no-zero-shot",
    ]
    _fails(capsys, argv, "label 5 out of range")


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (("--max-steps", "0"), ("max_steps must be >= 1, got 0",)),
        (("--lr", "inf"), ("--lr", "finite", "'inf'")),
        (("--lr", "nan"), ("--lr", "finite", "'nan'")),
        (("--warmup-ratio", "nan"), ("--warmup-ratio", "finite")),
        (("--lr", "abc"), ("--lr", "'abc'")),
    ],
)
def test_settings_that_cannot_train_are_refused_before_loading_anything(
    toy, tmp_path, capsys, extra, needles
):
    _fails(capsys, _train_argv(toy, tmp_path / "x", *extra), *needles)
    assert not (tmp_path / "x").exists()  # refused at config validation, before the output dir or the model


def test_bad_yaml_values_and_missing_config_files(toy, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: abc\n")
    _fails(capsys, _train_argv(toy, tmp_path / "x", "--config", str(bad)), str(bad), "lr", "'abc'", "number")
    monkeypatch.chdir(tmp_path)
    err = _fails(capsys, _train_argv(toy, tmp_path / "x", "--config", "configs/x.yaml"), "does not exist")
    assert str(tmp_path / "configs" / "x.yaml") in err and "relative" in err and "current directory" in err


def test_python_m_sparta_train_reports_bad_input_as_one_line(tmp_path, capsys):
    from sparta.train.__main__ import main as train_main

    bad = tmp_path / "cell.yaml"
    bad.write_text("method: sparta\nmax_steps: 0\n")
    assert train_main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sparta train: error: max_steps must be >= 1"), err
    assert train_main([str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_empty_training_set_after_length_filter(toy, tmp_path, capsys):
    _fails(
        capsys, _train_argv(toy, tmp_path / "x", "--max-length", "2"), "longer than 2 tokens", "--max-length"
    )


def test_overwrite_and_resume_refusals(toy, tmp_path, runs, capsys):
    _fails(capsys, _train_argv(toy, runs / "sparta"), "already holds a finished run", "--overwrite")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(capsys, _train_argv(toy, empty, "--resume"), "no checkpoint")


@pytest.mark.parametrize("method", ["sparta", "lora"])
def test_eval_of_a_broken_adapter_dir(runs, tmp_path, capsys, toy, method):
    def copy(name: str) -> Path:
        return Path(shutil.copytree(runs / method, tmp_path / name))

    weights = "adapter_model.safetensors" if method == "lora" else None
    missing = copy("missing")
    shutil.rmtree(missing / "adapter")
    _fails(capsys, ["eval", str(missing)], "adapter")

    truncated = copy("truncated")
    target = truncated / "adapter" / (weights or _largest(truncated / "adapter"))
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    _fails(capsys, ["eval", str(truncated)])

    corrupt = copy("corrupt")
    target = corrupt / "adapter" / (weights or _largest(corrupt / "adapter"))
    data = bytearray(target.read_bytes())
    data[-16:] = (
        b"\xff" * 16
    )  # flip the last weights' bytes (sparta: checksum; lora: values load, so use JSON)
    target.write_bytes(bytes(data))
    if method == "lora":
        (corrupt / "adapter" / "adapter_config.json").write_text("{not json")
    _fails(capsys, ["eval", str(corrupt)])

    other = copy("other-base")  # the run.json points at a different base model of the same architecture
    base = save_model_dir(tmp_path / "other-model", chat=False, tied=False)
    torch.manual_seed(123)
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(torch.randn_like(p))
    lm.save_pretrained(base)
    info = json.loads((other / "run.json").read_text())
    info["model"] = info["model_path"] = str(base)
    (other / "run.json").write_text(json.dumps(info))
    if method == "sparta":
        _fails(capsys, ["eval", str(other)], "base model")
    else:  # a LoRA adapter has no record of its base weights: it loads onto any same-shaped model
        assert main(["eval", str(other)]) == 0

    (corrupt / "run.json").write_text("{")
    _fails(capsys, ["eval", str(corrupt)], "run.json", "not valid JSON")
    shutil.rmtree(copy("no-tokenizer") / "tokenizer")
    _fails(capsys, ["eval", str(tmp_path / "no-tokenizer")], "tokenizer")


@pytest.mark.parametrize("method", ["sparta", "lora"])
def test_eval_of_adapter_files_alone_says_what_the_directory_is(runs, tmp_path, capsys, method):
    bare = Path(shutil.copytree(runs / method / "adapter", tmp_path / "bare"))  # no run.json beside it
    config = bare / "adapter_config.json"
    config.write_text('{"adapter_type": "sparta",\n  "format_version": }\n')
    looks = f"{bare} looks like an adapter directory (adapter_config.json, adapter_model.safetensors"
    for extra in ((), ("--task", "sst2")):  # with a task it used to be called a model directory
        _fails(
            capsys,
            ["eval", str(bare), *extra],
            looks,
            f"its adapter config {config} is not valid JSON (line 2, column 21: Expecting value)",
            "pass the training run it was saved in",
        )
    _fails(capsys, ["predict", str(bare), "a good movie"], looks, "line 2, column 21")
    config.unlink()
    _fails(
        capsys,
        ["eval", str(bare)],
        f"{bare} looks like an adapter directory (adapter_model.safetensors;",
        f"{config} does not exist",
    )
    adapter = runs / method / "adapter"  # intact, but a run's part: the run is what opens
    _fails(
        capsys,
        ["eval", str(adapter)],
        "records no task",
        f"pass the training run {runs / method} that holds it",
    )


def _largest(folder: Path) -> str:
    return max(folder.iterdir(), key=lambda f: f.stat().st_size).name
