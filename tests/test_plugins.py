"""The plug-in contracts: every registered method (`sparta.methods.METHODS`) with every registered objective
(`sparta.objectives.OBJECTIVES`) has the hooks `Method` and `Objective` declare, its own options (its `options`
dataclass) are `TrainConfig` fields, flags and YAML keys that round-trip, and it trains a few steps through
`sparta.train.train` on a tiny model, its saved run opening again through `Method.load`; a combination a
plug-in's own `check` refuses is refused by the run too, with a SpartaError. This is the checklist of a new
method or objective (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from sparta import options
from sparta.errors import SpartaError
from sparta.methods import METHODS, Method
from sparta.objectives import OBJECTIVES, Objective
from sparta.options import option
from sparta.runs import open_model
from sparta.train import TrainConfig, train
from sparta.train.config import PLUGIN_OPTIONS, SharedConfig, add_train_arguments, config_from_args, load_yaml
from tinylm import FILLER
from tinysft import write_toy_sft_files

torch.set_num_threads(1)


def _pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"prompt": " ".join(rng.sample(FILLER, 3)), "chosen": "Yes good .", "rejected": "No bad !"}
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def data_files(tmp_path_factory, toy_task_files) -> dict[str, dict[str, str]]:
    """{objective: {train, dev, test: file}} of a tiny custom task of each objective read from files."""
    root = tmp_path_factory.mktemp("plugins")
    pairs = {}
    for split, n, seed in (("train", 8, 1), ("dev", 4, 2), ("test", 4, 3)):
        pairs[split] = root / f"pairs-{split}.jsonl"
        pairs[split].write_text("".join(json.dumps(r) + "\n" for r in _pairs(n, seed)))
    return {
        "classification": {k: str(v) for k, v in toy_task_files.items()},
        "language-modelling": write_toy_sft_files(root / "sft", sizes=(16, 8, 8)),
        "preference": {k: str(v) for k, v in pairs.items()},
    }


@pytest.fixture
def run_settings(data_files, base_model_dir, instruct_model_dir, tied_instruct_model_dir, tmp_path):
    """The TrainConfig fields of a two-step run of `objective` (a custom task from files, or GRPO's arithmetic)."""

    def make(objective: str, method: str) -> dict:
        common = dict(
            objective=objective,
            method=method,
            output=str(tmp_path / "run"),
            max_steps=2,
            eval_every=2,
            lr=1e-2,
            density=0.2,
            progress=False,
            device="cpu",
            max_new_tokens=3,
            max_eval_samples=4,
        )
        if objective == "grpo":
            return common | dict(
                task="arithmetic",
                model=str(instruct_model_dir),
                batch_size=2,
                num_generations=2,
                rewards=["tinyrewards:good"],
            )
        files = {f"{split}_file": path for split, path in data_files[objective].items()}
        model = base_model_dir if objective == "classification" else tied_instruct_model_dir
        return common | files | dict(task="custom", model=str(model), batch_size=4)

    return make


def test_every_registered_plug_in_gives_the_declared_hooks():
    assert Objective.__abstractmethods__ >= {
        "encode",
        "units",
        "batch_loss",
        "evaluate",
        "metrics",
        "metric_names",
        "init_head",
    }
    assert Method.__abstractmethods__ == {"apply", "save", "load"}
    for name, objective in OBJECTIVES.items():
        assert objective.name == name and objective.model_kind in ("classification", "causal-lm")
        assert objective.peft_task_type in ("SEQ_CLS", "CAUSAL_LM") and objective.recipe in (
            "steps",
            "rollouts",
        )
        assert all(callable(getattr(objective, hook)) for hook in Objective.__abstractmethods__)
    for name, method in METHODS.items():
        assert method.name == name and isinstance(method, Method)


def test_a_plug_in_without_a_declared_hook_cannot_be_made():
    class Halfway(Method):
        name = "halfway"

        def apply(self, model, cfg, objective, heads=None):  # noqa: ANN001, ANN201
            return model

    with pytest.raises(TypeError, match="save"):
        Halfway()
    with pytest.raises(TypeError, match="encode"):
        type("NoEncode", (Objective,), {"name": "no-encode"})()


PLUG_INS = {
    **{f"method {n}": m for n, m in METHODS.items()},
    **{f"objective {n}": o for n, o in OBJECTIVES.items()},
}


def _parse(argv: list[str]) -> Any:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def _another_value(f: dataclasses.Field, kind: options.Kind) -> Any:
    """A valid value of the option `f` other than its default."""
    default = options.default_of(f)
    if f.metadata.get("choices"):
        return next(c for c in reversed(f.metadata["choices"]) if c != default)
    if kind.base in ("bool", "bool|str"):
        return not default
    if kind.base == "int":
        return (default or 1) + 1
    if kind.base == "float":
        return default / 2 if default else 0.25
    if kind.base == "list":
        return ["q_proj", "o_proj"]
    return "other"


@pytest.mark.parametrize("plug_in", list(PLUG_INS))
def test_every_plug_in_s_options_are_flags_and_yaml_keys_that_round_trip(plug_in, tmp_path):
    part = PLUG_INS[plug_in].options
    if part is None:
        pytest.skip(f"the {plug_in} has no options of its own")
    assert dataclasses.is_dataclass(part) and callable(getattr(part, "validate", None))
    gathered = {f.name: f for f in dataclasses.fields(TrainConfig)}
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    flags = {a.dest for a in parser._actions}
    kinds = options.kinds(part)
    changed = {}
    for f in dataclasses.fields(part):
        mine = (f.metadata, options.default_of(f))
        assert (gathered[f.name].metadata, options.default_of(gathered[f.name])) == mine, f.name
        assert f.name in flags and len(f.metadata["help"]) > 10 and f.metadata["group"]
        changed[f.name] = _another_value(f, kinds[f.name])
    cfg = TrainConfig(**changed)
    assert options.select(part, cfg) == part(**changed)  # what the plug-in reads of the run settings
    assert _parse(cfg.to_argv()) == cfg  # through the flags
    (tmp_path / "run.yaml").write_text(cfg.to_yaml())
    assert TrainConfig.from_dict(load_yaml(tmp_path / "run.yaml")) == cfg  # through YAML


def test_a_new_plug_in_s_options_join_the_config_and_one_option_declared_twice_is_refused():
    @dataclasses.dataclass
    class Widgets:
        widgets: int = option(3, group="method", help="how many widgets the new method adds")

        def validate(self) -> None:
            if self.widgets < 0:
                raise SpartaError("widgets must be >= 0")

    config = options.compose("Config", SharedConfig, (*PLUGIN_OPTIONS, Widgets), module=__name__, doc="")
    assert config(widgets=4).to_argv()[-2:] == ["--widgets", "4"]
    assert config.from_dict({"widgets": "5", "beta": 0.2}).widgets == 5
    with pytest.raises(SpartaError, match="widgets must be"):
        config(widgets=-1)
    with pytest.raises(SpartaError, match="beta must be"):
        config(beta=0)

    @dataclasses.dataclass
    class AnotherBeta:
        beta: float = option(0.5, group="optim", help="a second declaration of --beta")

    with pytest.raises(TypeError, match="beta is declared twice"):
        options.compose("Config", SharedConfig, (*PLUGIN_OPTIONS, AnotherBeta), module=__name__, doc="")


@pytest.mark.parametrize("objective_name", list(OBJECTIVES))
@pytest.mark.parametrize("method_name", list(METHODS))
def test_every_method_trains_every_objective_it_accepts(run_settings, method_name, objective_name):
    method, objective = METHODS[method_name], OBJECTIVES[objective_name]
    values = run_settings(objective_name, method_name)
    settings = SimpleNamespace(**dataclasses.asdict(TrainConfig()) | values)
    try:
        objective.check(settings)
        method.check(settings, objective)
    except SpartaError as refusal:
        with pytest.raises(SpartaError):
            train(TrainConfig(**values))
        assert not Path(values["output"]).exists()
        pytest.skip(f"refused by its plug-ins: {refusal}")
    result = train(TrainConfig(**values))
    assert (result["method"], result["objective"], result["steps"]) == (method_name, objective_name, 2)
    assert set(result["metrics"]) == {"dev", "test"} and all(result["metrics"].values())
    saved = Path(result["adapter_path"])
    assert saved.name == ("model" if method.saves_model else "adapter") and any(saved.iterdir())
    loaded = open_model(saved.parent, device="cpu")  # the run opens again: `Method.load` on a fresh base
    assert loaded.causal_lm == (objective.model_kind == "causal-lm")
