import argparse

import pytest

from sparta.errors import SpartaError
from sparta.train.config import TrainConfig, add_train_arguments, config_from_args


def parse(argv):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_defaults_without_yaml_or_flags():
    cfg = parse([])
    assert cfg == TrainConfig()


def test_yaml_values_are_defaults_and_explicit_flags_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: lora\nlr: 5.0e-4\nbatch-size: 4\ntargets: [q_proj, k_proj]\nlora_r: 4\n")
    cfg = parse(["--config", str(path), "--lr", "2e-4", "--targets", "v_proj,o_proj"])
    assert cfg.method == "lora" and cfg.batch_size == 4 and cfg.lora_r == 4  # from YAML
    assert cfg.lr == 2e-4 and cfg.targets == ["v_proj", "o_proj"]  # flags win
    assert cfg.epochs == TrainConfig().epochs  # untouched default


def test_none_on_the_command_line_clears_a_yaml_value(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("max_steps: 50\nmax_grad_norm: 2.0\n")
    cfg = parse(["--config", str(path), "--max-steps", "none", "--max-grad-norm", "none", "--no-zero-shot"])
    assert cfg.max_steps is None and cfg.max_grad_norm is None and cfg.zero_shot is False


@pytest.mark.parametrize(
    ("text", "message"),
    [("lrr: 1\n", "unknown setting"), ("- a\n- b\n", "mapping"), ("method: adapterx\n", "unknown method")],
)
def test_bad_yaml_is_a_sparta_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpartaError, match=message):
        parse(["--config", str(path)])


def test_missing_yaml_and_bad_values_are_sparta_errors(tmp_path):
    with pytest.raises(SpartaError, match="does not exist"):
        parse(["--config", str(tmp_path / "nope.yaml")])
    with pytest.raises(SpartaError, match="density"):
        TrainConfig(density=0.0)
    with pytest.raises(SpartaError, match="scheduler"):
        TrainConfig(scheduler="exp")


def test_default_targets_follow_the_method():
    assert TrainConfig(method="sparta").target_modules == ["all-linear"]
    assert TrainConfig(method="lora").target_modules == ["q_proj", "v_proj"]
    assert TrainConfig(method="lora", targets="o_proj").target_modules == ["o_proj"]


def test_example_configs_are_valid():
    from pathlib import Path

    from sparta.train.config import load_yaml

    paths = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert paths
    for path in paths:
        TrainConfig.from_dict(load_yaml(path), source=str(path))


# -- one source for options: flags and YAML keys come from the fields ---------------------------------------------
def _actions():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return {a.dest: a for a in parser._actions if a.option_strings}


def test_every_field_has_a_flag_and_help():
    from dataclasses import fields

    actions = _actions()
    for f in fields(TrainConfig):
        if f.name == "extra":
            assert f.name not in actions  # a mapping: YAML only
            continue
        assert f.name in actions, f"{f.name} has no flag"
        assert len(actions[f.name].help or "") > 10, f"{f.name} has no help"


def test_the_existing_flag_spellings_keep_their_meaning(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("zero_shot: true\nrestore-best: false\nmax_steps: 5\nresume: true\n")
    cfg = parse(
        [
            "--config",
            str(path),
            "--no-zero-shot",
            "--no-progress",
            "--overwrite",
            "--resume",
            "--dtype",
            "bfloat16",
            "--label-words",
            "No, Yes",
            "--text-fields",
            "a,b",
        ]
    )
    assert (cfg.zero_shot, cfg.progress, cfg.overwrite, cfg.resume) == (False, False, True, True)
    assert cfg.restore_best is False and cfg.max_steps == 5 and cfg.dtype == "bfloat16"
    assert cfg.label_words == ["No", "Yes"] and cfg.text_fields == ["a", "b"]
    assert parse(["--resume", "runs/x"]).resume == "runs/x"
    assert parse(["--restore-best", "false"]).restore_best is False
    assert parse(["--config", str(path), "--restore-best", "true", "--resume", "none"]).restore_best is True
    assert parse(["--config", str(path), "--resume", "none"]).resume is None
    assert parse(["--dtype", "none"]).dtype is None


def test_a_config_round_trips_through_yaml_and_through_flags(tmp_path):
    from sparta.train.config import load_yaml

    cfg = TrainConfig(
        task="custom",
        method="lora",
        train_file="a b/train.jsonl",
        label_words=["No", "Yes"],
        targets=["q_proj", "o_proj"],
        density=0.0347222222,
        lr=3e-3,
        max_steps=40,
        max_grad_norm=None,
        restore_best=False,
        zero_shot=False,
        progress=False,
        overwrite=True,
        resume="runs/old",
        dtype="bfloat16",
        template="-{text}",
        index_seed=1000,
        extra={"note": "x"},
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    assert TrainConfig.from_dict(load_yaml(path)) == cfg
    assert parse(["--config", str(path)]) == cfg
    flags = TrainConfig(**{**cfg.to_dict(), "extra": {}})
    assert parse(flags.to_argv()) == flags
    with pytest.raises(SpartaError, match="extra.*YAML"):
        cfg.to_argv()


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("lr: abc\n", ["lr", "'abc'", "a finite number"]),
        ("batch_size: 2.5\n", ["batch_size", "2.5", "an integer"]),
        ("batch-size: many\n", ["batch_size", "'many'", "an integer"]),
        ("restore_best: maybe\n", ["restore_best", "'maybe'", "true or false"]),
        ("density: yes\n", ["density", "True", "a finite number"]),
        ("targets: {a: 1}\n", ["targets", "{'a': 1}", "a list"]),
        ("extra: [1]\n", ["extra", "[1]", "a mapping"]),
        ("lr: .inf\n", ["lr", "inf", "a finite number"]),
        ("seed: null\n", ["seed", "None", "an integer"]),
    ],
)
def test_yaml_values_are_checked_like_flags(tmp_path, text, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpartaError) as err:
        parse(["--config", str(path)])
    for needle in [str(path), *needles]:
        assert needle in str(err.value)


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--lr", "abc"], ["--lr", "'abc'", "a finite number"]),
        (["--lr", "inf"], ["--lr", "'inf'", "finite"]),
        (["--lr", "nan"], ["--lr", "'nan'", "finite"]),
        (["--density=-inf"], ["--density", "finite"]),
        (["--max-grad-norm", "1e999"], ["--max-grad-norm", "finite"]),
        (["--max-steps", "1.5"], ["--max-steps", "an integer"]),
        (["--restore-best", "maybe"], ["--restore-best", "true or false"]),
    ],
)
def test_bad_flag_values_are_sparta_errors_naming_the_flag(argv, needles):
    with pytest.raises(SpartaError) as err:
        parse(argv)
    for needle in needles:
        assert needle in str(err.value)


def test_non_finite_settings_and_zero_steps_are_refused_by_the_config_itself():
    import math

    for value in (math.inf, -math.inf, math.nan):
        with pytest.raises(SpartaError, match="lr: expected a finite number"):
            TrainConfig(lr=value)
    with pytest.raises(SpartaError, match="warmup_ratio: expected a finite number"):
        TrainConfig(warmup_ratio=math.nan)
    with pytest.raises(SpartaError, match="max_steps must be >= 1, got 0"):
        parse(["--max-steps", "0"])
    with pytest.raises(SpartaError, match="max_steps must be >= 1"):
        TrainConfig(max_steps=-3, epochs=1)
    assert parse(["--max-steps", "1"]).max_steps == 1


def test_a_missing_relative_config_names_the_path_it_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpartaError) as err:
        parse(["--config", "configs/x.yaml"])
    message = str(err.value)
    assert str(tmp_path / "configs" / "x.yaml") in message and "current directory" in message
    with pytest.raises(SpartaError) as err:
        parse(["--config", str(tmp_path / "abs.yaml")])
    assert str(tmp_path / "abs.yaml") in str(err.value) and "current directory" not in str(err.value)
    (tmp_path / "configs").mkdir()
    with pytest.raises(SpartaError, match="is a directory"):
        parse(["--config", "configs"])
