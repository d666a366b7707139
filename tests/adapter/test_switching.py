"""Several adapters on one base model, switched in place: each active adapter gives exactly its own model, and
after any number of switches the weights are the pretrained ones bit for bit."""

from __future__ import annotations

import random

import pytest
import torch

from sparta import SpartaConfig, SpartaError, SpartaModel, get_sparta_model
from tinyconfigs import tiny_causal_lm, tiny_classifier

ADAPTERS = {  # name: (targets, density, seed)
    "a": ("all-linear", 0.05, 1),
    "b": (["v_proj", "o_proj"], 0.2, 2),
    "c": (["q_proj", "gate_proj"], 0.1, 3),
}


def save_adapter(make, path, targets, density, seed):
    model = get_sparta_model(make(), SpartaConfig(density=density, target_modules=targets, seed=seed))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*model.delta_parameters().values(), *model.head_parameters().values()]:
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(path)
    return path


@pytest.fixture(params=["classifier", "causal-lm"])
def setup(request, tmp_path):
    make = tiny_classifier if request.param == "classifier" else tiny_causal_lm
    paths = {n: save_adapter(make, tmp_path / n, *spec) for n, spec in ADAPTERS.items()}
    ids = torch.randint(1, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = {n: SpartaModel.from_pretrained(make(), p)(input_ids=ids).logits for n, p in paths.items()}
    return make, paths, ids, expected


def test_a_thousand_random_switches_keep_every_adapter_exact_and_w0_bitwise(setup):
    make, paths, ids, expected = setup
    w0 = {n: p.clone() for n, p in make().state_dict().items()}
    model = SpartaModel.from_pretrained(make(), paths["a"], adapter_name="a")
    model.load_adapter(paths["b"], "b")
    model.load_adapter(paths["c"], "c")
    assert sorted(model.adapter_names) == ["a", "b", "c"]
    rng = random.Random(0)
    for i in range(1000):
        name = rng.choice(list(ADAPTERS))
        model.set_adapter(name)
        assert model.active_adapter == name
        if i % 97 == 0:
            with torch.no_grad():
                assert torch.equal(model(input_ids=ids).logits, expected[name]), (i, name)
    for name in ADAPTERS:
        model.set_adapter(name)
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, expected[name])
    base = model.unload()
    for n, p in base.state_dict().items():
        assert torch.equal(p, w0[n]), n


def test_the_active_adapter_saves_as_itself(setup, tmp_path):
    make, paths, ids, expected = setup
    model = SpartaModel.from_pretrained(make(), paths["a"], adapter_name="a")
    model.load_adapter(paths["b"], "b")
    model.set_adapter("b")
    model.save_pretrained(tmp_path / "again")
    with torch.no_grad():
        again = SpartaModel.from_pretrained(make(), tmp_path / "again")(input_ids=ids).logits
    assert torch.equal(again, expected["b"])


def test_switching_errors_are_clear(setup):
    make, paths, _, _ = setup
    model = SpartaModel.from_pretrained(make(), paths["a"], adapter_name="a")
    model.load_adapter(paths["b"], "b")
    with pytest.raises(SpartaError, match="loaded already"):
        model.load_adapter(paths["c"], "b")
    with pytest.raises(SpartaError, match="no adapter named 'x'"):
        model.set_adapter("x")
    with pytest.raises(SpartaError, match="is the active adapter"):
        model.delete_adapter("a")
    model.delete_adapter("b")
    assert model.adapter_names == ["a"]


def test_an_adapter_of_another_base_model_is_refused(setup, tmp_path):
    make, paths, _, _ = setup
    other = save_adapter(lambda: make(seed=5), tmp_path / "other", "all-linear", 0.05, 1)
    model = SpartaModel.from_pretrained(make(), paths["a"])
    with pytest.raises(SpartaError):
        model.load_adapter(other, "other")
    assert model.adapter_names == ["default"]
