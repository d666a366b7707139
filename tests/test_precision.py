"""Mixed precision: the choice of precision, SpaRTA's layer under autocast, and training, resuming and evaluating
in bf16-mixed and fp16-mixed on the tiny models (numerics against fp32 within stated tolerances)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sparta import precision
from sparta.adapter.layer import SpartaLinear
from sparta.errors import SpartaError
from sparta.runs import evaluate, open_model
from sparta.train import TrainConfig, train
from sparta.train.config import config_from_args, load_yaml

CPU = torch.device("cpu")


class Stop(Exception):
    """Raised from `train`'s per-step hook: the run stops there, as an interrupted process would."""


def stop_at(step: int):  # noqa: ANN201
    def hook(now: int) -> None:
        if now == step:
            raise Stop

    return hook


@pytest.fixture
def bf16_cpu(monkeypatch):  # noqa: ANN201
    """Report bf16 instructions on any CPU: torch computes bf16 without them too (emulated, slower),
    so the bf16-mixed paths run on the tiny models wherever the tests run."""
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: "avx512_bf16")


# -- choosing a precision ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("bf16", "bf16-mixed"),
        ("no", "fp32"),
        ("fp16", "fp16-mixed"),
        ("16-mixed", "fp16-mixed"),
        ("BF16-mixed", "bf16-mixed"),
        ("32-true", "fp32"),
    ],
)
def test_accelerate_and_lightning_spellings_are_accepted(given, canonical):
    assert precision.normalise(given) == canonical
    assert TrainConfig(precision=given).precision == canonical


def test_an_unknown_precision_names_the_choices():
    with pytest.raises(SpartaError, match=r"unknown precision 'bf8'.*fp32, bf16-mixed, fp16-mixed"):
        TrainConfig(precision="bf8")


def test_mixed_precision_flag_and_yaml_key(tmp_path):
    import argparse

    from sparta.train.config import add_train_arguments

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    assert config_from_args(parser.parse_args(["--mixed-precision", "bf16"])).precision == "bf16-mixed"
    assert config_from_args(parser.parse_args(["--precision", "fp16-mixed"])).precision == "fp16-mixed"
    (tmp_path / "run.yaml").write_text("mixed_precision: no\n")
    assert TrainConfig.from_dict(load_yaml(tmp_path / "run.yaml")).precision == "fp32"
    args = parser.parse_args(["--config", str(tmp_path / "run.yaml"), "--precision", "bf16"])
    assert config_from_args(args).precision == "bf16-mixed"  # the flag wins over the YAML file


def test_default_follows_the_cpu_and_the_launch_setting(monkeypatch):
    monkeypatch.delenv(precision.LAUNCH_VARIABLE, raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: "avx512_bf16")
    chosen = precision.resolve(None, CPU)
    assert (chosen.name, chosen.reason) == ("bf16-mixed", "default on a CPU with avx512_bf16")
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: None)
    assert precision.resolve(None, CPU).name == "fp32"
    monkeypatch.setenv(precision.LAUNCH_VARIABLE, "fp16")  # `accelerate launch --mixed_precision fp16`
    chosen = precision.resolve(None, CPU)
    assert (chosen.name, chosen.reason) == ("fp16-mixed", "ACCELERATE_MIXED_PRECISION=fp16")
    assert precision.resolve("fp32", CPU).name == "fp32"  # asked for beats the launch setting


def test_bf16_on_a_cpu_without_bf16_falls_back_to_fp32_with_the_reason(monkeypatch, toy_config, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: None)
    chosen = precision.resolve("bf16-mixed", CPU)
    assert chosen.name == "fp32" and "fell back to fp32" in chosen.reason and "AVX512-BF16" in chosen.reason
    with caplog.at_level("INFO", logger="sparta"):
        results = train(toy_config(precision="bf16-mixed", max_steps=2))
    assert results["precision"]["name"] == "fp32" == results["config"]["precision"]
    assert "fell back to fp32" in caplog.text


def test_the_cpu_flags_are_read_from_cpuinfo():
    found = precision.cpu_bf16_instructions()
    assert found in (None, "avx512_bf16", "amx_bf16")


# -- SpaRTA's layer under autocast ---------------------------------------------------------------------------------
def _layer(seed: int = 0) -> tuple[nn.Linear, SpartaLinear]:
    g = torch.Generator().manual_seed(seed)
    base = nn.Linear(48, 40)
    with torch.no_grad():
        base.weight.copy_(torch.randn(40, 48, generator=g) * 0.1)
    original = base.weight.detach().clone()
    flat = torch.randperm(40 * 48, generator=g)[:300].sort().values
    layer = SpartaLinear(base, flat, transposed=False, delta_dtype=torch.float32)
    layer.weight.requires_grad_(False)
    with torch.no_grad():
        layer.sparta_delta.normal_(0, 0.01, generator=g)
    return original, layer


def test_delta_gradient_under_bf16_autocast_matches_fp32_and_stays_fp32():
    """bf16 compute rounds operands to 8 bits of mantissa; the fp32-accumulated delta gradient stays within 2%
    (relative to its norm) of the fp32 one, and the input is saved in bf16 for the native kernel."""
    _, layer = _layer()
    x = torch.randn(2, 64, 48, generator=torch.Generator().manual_seed(3), requires_grad=True)
    target = torch.randn(2, 64, 40, generator=torch.Generator().manual_seed(4))

    def grads(mixed: bool):
        layer.sparta_delta.grad = None
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            out = layer(x)
        assert out.dtype == (torch.bfloat16 if mixed else torch.float32)
        ((out.float() - target) ** 2).sum().backward()
        return layer.sparta_delta.grad.clone(), x.grad.clone()

    want_delta, want_x = grads(False)
    got_delta, got_x = grads(True)
    assert got_delta.dtype == torch.float32 and got_x.dtype == torch.float32
    assert (got_delta - want_delta).norm() / want_delta.norm() < 0.02
    assert (got_x - want_x).norm() / want_x.norm() < 0.02


def test_the_saved_input_is_bf16_under_autocast():
    _, layer = _layer()
    x = torch.randn(8, 48, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    saved_x = out.grad_fn.saved_tensors[0]
    assert saved_x.dtype == torch.bfloat16 and torch.equal(saved_x, x.detach().bfloat16())


def test_unload_after_autocast_steps_is_w0_bitwise():
    original, layer = _layer()
    optimizer = torch.optim.AdamW([layer.sparta_delta], lr=1e-2)
    for step in range(5):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (
                layer(torch.randn(16, 48, generator=torch.Generator().manual_seed(step)))
                .float()
                .square()
                .mean()
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert layer.sparta_delta.dtype == torch.float32 and layer.sparta_delta.abs().sum() > 0
    layer.sync(force=True)
    assert not torch.equal(layer.weight, original)
    layer.write_original()
    assert torch.equal(layer.restore().weight, original)


# -- training in mixed precision -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "lr"), [("sparta", 1e-2), ("lora", 1e-2), ("full", 1e-3)])
def test_bf16_mixed_training_keeps_fp32_state_and_matches_fp32(bf16_cpu, toy_config, tmp_path, method, lr):
    fp32 = train(toy_config(method=method, lr=lr, precision="fp32", output=str(tmp_path / "fp32")))
    mixed = train(toy_config(method=method, lr=lr, precision="bf16-mixed", output=str(tmp_path / "bf16")))
    assert mixed["precision"] == {"name": "bf16-mixed", "reason": "asked for"}
    assert json.loads((tmp_path / "bf16" / "run.json").read_text())["precision"] == "bf16-mixed"
    assert mixed["dtype"] == "float32"  # the weights stay fp32; only the compute is bf16
    # the same run up to bf16 rounding: every logged train loss within 3% of fp32's
    for a, b in zip(fp32["history"], mixed["history"], strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) <= 0.03 * a["train_loss"]
    assert (
        abs(mixed["metrics"]["test"]["loss"] - fp32["metrics"]["test"]["loss"])
        <= 0.03 * fp32["metrics"]["test"]["loss"]
    )


def test_fp16_mixed_uses_a_loss_scaler_that_resumes(toy_config, tmp_path):
    cfg = toy_config(precision="fp16-mixed", max_steps=6, save_every=3, output=str(tmp_path / "run"))
    with pytest.raises(Stop):
        train(cfg, on_step=stop_at(4))
    state = json.loads((tmp_path / "run" / "checkpoint-3" / "state.json").read_text())
    assert state["scaler"]["scale"] > 1  # GradScaler's dynamic scale (65536 at the start)
    resumed = train(
        toy_config(
            precision="fp16-mixed", max_steps=6, save_every=3, output=str(tmp_path / "run"), resume=True
        )
    )
    whole = train(toy_config(precision="fp16-mixed", max_steps=6, output=str(tmp_path / "whole")))
    assert resumed["metrics"] == whole["metrics"] and resumed["history"] == whole["history"]


def test_bf16_mixed_resume_is_bitwise_and_refuses_another_precision(bf16_cpu, toy_config, tmp_path):
    whole = train(toy_config(precision="bf16-mixed", max_steps=8, output=str(tmp_path / "whole")))
    cfg = toy_config(precision="bf16-mixed", max_steps=8, save_every=3, output=str(tmp_path / "run"))
    with pytest.raises(Stop):
        train(cfg, on_step=stop_at(5))
    with pytest.raises(SpartaError, match=r"precision: 'bf16-mixed' -> 'fp32'"):
        train(
            toy_config(precision="fp32", max_steps=8, save_every=3, output=str(tmp_path / "run"), resume=True)
        )
    resumed = train(
        toy_config(
            precision="bf16-mixed", max_steps=8, save_every=3, output=str(tmp_path / "run"), resume=True
        )
    )
    assert resumed["resumed_from_step"] == 3
    assert resumed["metrics"] == whole["metrics"] and resumed["history"] == whole["history"]
    adapter = "adapter/adapter_model.safetensors"
    assert (tmp_path / "run" / adapter).read_bytes() == (tmp_path / "whole" / adapter).read_bytes()


def test_evaluation_of_a_run_uses_its_precision_unless_told(bf16_cpu, toy_config, tmp_path):
    results = train(toy_config(precision="bf16-mixed", output=str(tmp_path / "run")))
    trained = results["metrics"]["test"]
    loaded = open_model(tmp_path / "run")
    assert loaded.precision.name == "bf16-mixed"
    again = evaluate(loaded, split="test")
    assert again == pytest.approx(trained, rel=1e-5)
    as_fp32 = evaluate(open_model(tmp_path / "run", precision="fp32"), split="test")
    assert as_fp32["loss"] == pytest.approx(trained["loss"], rel=0.03)
    # the reloaded run computed in bf16 like its training did: nearer that than the fp32 evaluation is
    assert abs(again["loss"] - trained["loss"]) < abs(as_fp32["loss"] - trained["loss"])
