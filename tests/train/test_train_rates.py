"""Default learning rates: one table per objective and method, SpaRTA's by density, resolved once per run."""

from pathlib import Path

import pytest

from sparta.errors import SpartaError
from sparta.train.config import METHODS, TrainConfig
from sparta.train.rates import OBJECTIVES, TABLE, default_lr, markdown_table, resolve_lr

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_method_has_a_classification_default_and_each_objective_a_table():
    assert set(TABLE) == set(OBJECTIVES)
    for method in METHODS:
        rate = default_lr(method, "classification", 0.005)
        assert 0 < rate.lr < 0.1 and rate.source
    for objective in ("preference", "grpo"):
        for method in ("sparta", "lora", "full"):
            assert default_lr(method, objective).source.startswith("convention")
    for method in ("sparta", "lora", "full"):  # measured on GSM8K
        assert default_lr(method, "language-modelling").source.startswith("measured")


def test_the_sparta_default_follows_the_measured_densities():
    assert default_lr("sparta", density=460_800 / 13_271_040).lr == 3e-3  # Wv,Wo at the LoRA budget (3.47%)
    assert default_lr("sparta", density=0.01).lr == 1e-3  # all-linear 1%
    assert default_lr("sparta", density=0.005).lr == 1e-3  # the CLI default density
    assert default_lr("sparta", density=0.02).lr == 3e-3 and default_lr("sparta", density=1.0).lr == 3e-3


def test_resolve_fills_only_an_unset_rate_and_says_which_default_it_took():
    cfg, note = resolve_lr(TrainConfig(method="sparta", density=0.0347))
    assert cfg.lr == 3e-3 and "lr 3e-3" in note and "sparta" in note and "density 0.0347" in note
    cfg, note = resolve_lr(TrainConfig(method="lora", density=0.5))
    assert cfg.lr == 3e-3 and "density" not in note  # the density is SpaRTA's alone
    given = TrainConfig(method="full", lr=1e-5)
    assert resolve_lr(given) == (given, None)


def test_missing_defaults_are_sparta_errors():
    with pytest.raises(SpartaError, match="no default learning rate for head.*--lr"):
        default_lr("head", "preference")
    with pytest.raises(SpartaError, match="unknown objective"):
        default_lr("sparta", "translation")


def test_the_readme_lists_the_table():
    assert markdown_table() in README.read_text()
