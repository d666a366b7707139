"""`sparta train` on a custom task with a mistyped label: a one-line error naming the row, `--labels` to mean it,
and the class list with counts (and the process count) at the start of the run."""

import json

import pytest
import torch

from sparta.cli import main  # noqa: E402
from sparta.errors import SpartaError  # noqa: E402
from sparta.tasks import build_task  # noqa: E402
from sparta.train.config import TrainConfig  # noqa: E402
from sparta.train.setup import check_resumable, task_args  # noqa: E402
from tinylm import save_model_dir, toy_examples  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def typo(tmp_path_factory):
    """A base model and a 64-row train file with 0/1 labels, one of them (line 10) mistyped."""
    root = tmp_path_factory.mktemp("labels")
    model = save_model_dir(root / "model", chat=False, tied=False)
    rows = toy_examples(64, 31)
    rows[9]["label"] = "entailmnet"
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model, train


def _argv(typo, out, *extra):
    model, train = typo
    return [
        "train",
        "--task",
        "custom",
        "--train-file",
        str(train),
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
        "--max-eval-samples",
        "6",
        *extra,
    ]


def test_a_mistyped_label_stops_the_run_with_one_line(typo, tmp_path, capsys):
    assert main(_argv(typo, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{typo[1]}: line 10: label 'entailmnet' is not an integer" in err
    assert not (tmp_path / "run" / "results.json").exists()


def test_labels_flag_trains_the_named_classes_and_the_run_logs_them(typo, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(typo, out, "--labels", "0,1,entailmnet")) == 0
    log = capsys.readouterr().out
    counts = [line for line in log.splitlines() if line.startswith("classes (training examples): ")]
    assert len(counts) == 1
    shown = dict(part.rsplit(" ", 1) for part in counts[0].split(": ", 1)[1].split(", "))
    assert list(shown) == ["0", "1", "entailmnet"] and shown["entailmnet"] == "1"
    results = json.loads((out / "results.json").read_text())
    assert sum(map(int, shown.values())) == results["data"]["train"]
    assert json.loads((out / "run.json").read_text())["label_names"] == ["0", "1", "entailmnet"]
    assert "processes: 1 (no distributed launch)" in log.splitlines()[0]


def test_a_label_error_keeps_the_run_that_overwrite_would_replace(typo, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(typo, out, "--labels", "0,1,entailmnet")) == 0
    before = (out / "results.json").read_bytes()
    assert main(_argv(typo, out, "--overwrite")) == 2  # the label check fails before anything is cleared
    assert "is not an integer" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before and (out / "adapter").is_dir()


def test_config_fields_reach_the_task():
    cfg = TrainConfig(task="custom", train_file="x.jsonl", labels="neg, pos", allow_rare_labels=True)
    assert cfg.labels == ["neg", "pos"]
    args = task_args(cfg)
    assert args["label_names"] == ("neg", "pos") and args["allow_rare_labels"] is True
    assert "label_names" not in task_args(TrainConfig()) and "allow_rare_labels" not in task_args(
        TrainConfig()
    )


def test_allow_rare_labels_flag(typo, tmp_path):
    import argparse

    from sparta.train.config import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    model, train = typo
    cfg = config_from_args(
        parser.parse_args(["--task", "custom", "--train-file", str(train), "--allow-rare-labels"])
    )
    assert cfg.allow_rare_labels is True
    # the typo is still a mixed int/string column: only --labels says the third class is meant
    with pytest.raises(SpartaError, match="is not an integer"):
        build_task(task_args(cfg))


def test_a_checkpoint_from_before_the_label_settings_still_resumes(tmp_path):
    cfg = TrainConfig(task="custom", train_file="x.jsonl")
    saved = {k: v for k, v in cfg.to_dict().items() if k not in ("labels", "allow_rare_labels")}
    check_resumable(cfg, saved, tmp_path)  # the new settings at their defaults: the same run
    with pytest.raises(SpartaError, match="allow_rare_labels: None -> True"):
        check_resumable(
            TrainConfig(task="custom", train_file="x.jsonl", allow_rare_labels=True), saved, tmp_path
        )
