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
