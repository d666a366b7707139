"""The plug-in contracts: every registered method (`sparta.methods.METHODS`) with every registered objective
(`sparta.objectives.OBJECTIVES`) has the hooks `Method` and `Objective` declare and trains a few steps through
`sparta.train.train` on a tiny model, its saved run opening again through `Method.load`; a combination a
plug-in's own `check` refuses is refused by the run too, with a SpartaError. This is the checklist of a new
method or objective (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sparta.errors import SpartaError
from sparta.methods import METHODS, Method
from sparta.objectives import OBJECTIVES, Objective
from sparta.runs import open_model
from sparta.train import TrainConfig, train
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
