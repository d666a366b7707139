"""`sparta train --task custom` on SFT and preference files of a user's own, through `sparta.cli.main`: the
objective told from the columns (and logged), columns named with flags or YAML keys, and one-line errors naming
the formats, the flags and `--objective` where the columns fit nothing."""

import argparse
import json
import random
from pathlib import Path

import pytest
import torch

from sparta.cli import main
from sparta.train import TrainConfig
from sparta.train.config import add_train_arguments, config_from_args
from tinylm import FILLER

torch.set_num_threads(1)  # tiny models: threads only add contention on a busy machine


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.sample(FILLER, rng.randint(2, 5)))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A {question, answer} file (the issue's), a {prompt, completion} file, preference pairs under other
    names, and a classification file."""
    root = tmp_path_factory.mktemp("columns")
    rng = random.Random(7)
    qa = [{"question": _sentence(rng), "answer": "Yes good ."} for _ in range(12)]
    return {
        "qa": _write(root / "qa.jsonl", qa),
        "pc": _write(root / "pc.jsonl", [{"prompt": r["question"], "completion": r["answer"]} for r in qa]),
        "pairs": _write(
            root / "pairs.jsonl", [{"q": r["question"], "good": "Yes good .", "bad": "No bad !"} for r in qa]
        ),
        "cls": _write(
            root / "cls.jsonl", [{"text": r["question"], "label": i % 2} for i, r in enumerate(qa)]
        ),
    }


def _train(train_file: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--task",
        "custom",
        "--train-file",
        str(train_file),
        "--model",
        str(model),
        "--output",
        str(out),
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
        "--no-progress",
        "--no-zero-shot",
        "--max-new-tokens",
        "2",
        *extra,
    ]


def _fails(capsys, argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sparta ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_a_prompt_completion_file_trains_as_sft_without_objective(
    files, instruct_model_dir, tmp_path, capsys
):
    out = tmp_path / "pc"
    assert main(_train(files["pc"], out, instruct_model_dir)) == 0
    log = capsys.readouterr().out
    assert "objective language-modelling, format prompt-completion: told from the columns 'prompt', " in log
    assert "--objective sets another" in log
    info = json.loads((out / "run.json").read_text())
    assert info["objective"] == "language-modelling" and info["task"]["objective"] == "language-modelling"
    assert main(["eval", str(out), "--split", "dev"]) == 0  # the run opens as what it was trained as
    assert "custom dev: loss=" in capsys.readouterr().out


def test_question_answer_columns_named_on_the_command_line(files, instruct_model_dir, tmp_path, capsys):
    # unnamed: the columns fit no format, and the message names the formats, their flags and --objective
    _fails(
        capsys,
        _train(files["qa"], tmp_path / "x", instruct_model_dir),
        "the columns 'question' and 'answer' fit no task format",
        "--objective",
        "--prompt-field",
        "--completion-field",
        "--messages-field",
        "'prompt' and 'completion'",
        "--chosen-field",
    )
    # asked for SFT: the message names the flags, not the Python keywords alone
    _fails(
        capsys,
        _train(files["qa"], tmp_path / "x", instruct_model_dir, "--objective", "language-modelling"),
        "cannot tell the data format from the columns",
        "--prompt-field and --completion-field",
        "--text-field",
        "--format",
    )
    assert not (tmp_path / "x").exists()
    out = tmp_path / "qa"
    argv = _train(
        files["qa"], out, instruct_model_dir, "--prompt-field", "question", "--completion-field", "answer"
    )
    assert main(argv) == 0
    assert "told from the columns 'question', 'answer'" in capsys.readouterr().out
    task = json.loads((out / "run.json").read_text())["task"]
    assert (task["prompt_field"], task["completion_field"], task["objective"]) == (
        "question",
        "answer",
        "language-modelling",
    )
    assert main(["eval", str(out), "--split", "dev"]) == 0


def test_columns_named_in_yaml(files, instruct_model_dir, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("prompt_field: question\ncompletion-field: reply\n")  # no 'reply' column in the file
    argv = _train(files["qa"], tmp_path / "x", instruct_model_dir, "--config", str(config))
    _fails(capsys, argv, "fit no task format", "'question' and 'reply' (--prompt-field, --completion-field)")
    args = _parser().parse_args(["--config", str(config), "--completion-field", "answer"])
    cfg = config_from_args(args)  # flags win over the YAML file, as for every option
    assert (cfg.prompt_field, cfg.completion_field) == ("question", "answer")
    assert _parser().parse_args(cfg.to_argv()).completion_field == "answer"


def test_preference_columns_named_on_the_command_line(files, instruct_model_dir, tmp_path, capsys):
    _fails(
        capsys,
        _train(files["pairs"], tmp_path / "x", instruct_model_dir),
        "the columns 'q', 'good' and 'bad' fit no task format",
        "'prompt', 'chosen' and 'rejected'",
        "--chosen-field, --rejected-field",
    )
    out = tmp_path / "dpo"
    names = ("--prompt-field", "q", "--chosen-field", "good", "--rejected-field", "bad")
    assert main(_train(files["pairs"], out, instruct_model_dir, *names)) == 0
    assert "objective preference: told from the columns 'q', 'good', 'bad'" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["objective"] == "preference" and results["data"]["pairs"]["train"]["dropped_invalid"] == {}
    _fails(
        capsys,
        _train(
            files["pairs"],
            tmp_path / "y",
            instruct_model_dir,
            *names,
            "--objective",
            "preference",
            "--text-field",
            "q",
        ),
        "text_field only applies to language-modelling tasks, not to a preference task",
    )


def test_sft_columns_are_refused_for_classification(files, base_model_dir, tmp_path, capsys):
    # --text-field (the SFT text column) for --text-fields (classification inputs): refused, not ignored
    _fails(
        capsys,
        _train(files["cls"], tmp_path / "x", base_model_dir, "--text-field", "text"),
        "text_field only applies to SFT on plain text, not to a classification task",
        "--text-fields",
    )
    _fails(
        capsys,
        _train(
            files["cls"],
            tmp_path / "x",
            base_model_dir,
            "--objective",
            "classification",
            "--prompt-field",
            "text",
        ),
        "prompt_field only applies",
    )
    # a built-in classification task reads its own columns: SFT column flags are refused there too
    argv = ["train", "--task", "sst2", "--prompt-field", "question", "--output", str(tmp_path / "y")]
    _fails(
        capsys, argv, "prompt_field only applies to SFT and preference tasks, not to a classification (sst2)"
    )
    assert not (tmp_path / "y").exists()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser


def test_the_column_flags_are_train_config_fields():
    flags = _parser().format_help()
    for name in (
        "--format",
        "--messages-field",
        "--prompt-field",
        "--completion-field",
        "--text-field",
        "--chosen-field",
        "--rejected-field",
    ):
        assert name in flags
    cfg = TrainConfig(format="text", text_field="body", chosen_field="good")
    assert config_from_args(_parser().parse_args(cfg.to_argv())) == cfg
