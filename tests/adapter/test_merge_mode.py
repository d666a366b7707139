"""The "functional" merge mode (weights stay W0, merged out of place per forward) against "inplace" and
Algorithm 1: same numbers, same gradients, same trajectories; switching modes; config and files."""

import json

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from sparta import SpartaConfig, SpartaError, SpartaModel, get_sparta_model
from sparta.adapter.layer import SpartaLinear
from sparta.adapter.reference import ReferenceSparta
from sparta.adapter.sampling import sample_indices
from tinyconfigs import tiny_classifier

torch.set_num_threads(1)


def _layer(kind: str, mode: str, dtype=torch.float32, seed=0) -> tuple[SpartaLinear, torch.Tensor]:
    torch.manual_seed(seed)
    base = nn.Linear(12, 8) if kind == "linear" else Conv1D(8, 12)
    base = base.to(dtype)
    w0 = base.weight.detach().clone()
    shape = tuple(base.weight.shape)
    flat = torch.from_numpy(sample_indices(shape[0] * shape[1], 0.3, 0, "w", shape))
    layer = SpartaLinear(base, flat, transposed=kind == "conv1d", delta_dtype=torch.float32, merge_mode=mode)
    return layer, w0


def _train_layer(layer: SpartaLinear, steps: int, dtype) -> list[torch.Tensor]:
    """Adam steps on a fixed stream of inputs; the outputs and input gradients of every step."""
    opt = torch.optim.Adam([layer.sparta_delta, layer.bias], lr=0.05)
    g = torch.Generator().manual_seed(1)
    seen = []
    for _ in range(steps):
        x = torch.randn(3, 5, 12, generator=g).to(dtype).requires_grad_(True)
        out = layer(x)
        out.float().pow(2).sum().backward()
        seen += [out.detach(), x.grad, layer.sparta_delta.grad.clone(), layer.bias.grad.clone()]
        opt.step()
        opt.zero_grad()
    return seen


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_functional_layer_equals_inplace_bitwise_and_never_writes_the_weight(kind, dtype):
    inplace, w0 = _layer(kind, "inplace", dtype)
    functional, _ = _layer(kind, "functional", dtype)
    for a, b in zip(_train_layer(inplace, 8, dtype), _train_layer(functional, 8, dtype), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(functional.weight, w0) and functional.weight.grad is None
    assert not torch.equal(inplace.weight, w0)  # the inplace layer did merge into its storage
    inplace.sync()
    merged = inplace.weight.detach().clone()
    functional.merge_weight()
    assert torch.equal(functional.weight, merged)


def test_functional_forward_keeps_no_merged_weight_for_backward():
    """What autograd saves is W0 itself (the parameter) and the delta: no weight-sized temporary."""
    layer, _ = _layer("linear", "functional")
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(torch.randn(4, 12, requires_grad=True))
    big = [t for t in saved if t.numel() == layer.weight.numel()]
    assert big and all(t.data_ptr() == layer.weight.data_ptr() for t in big)
    out.sum().backward()
    assert layer.sparta_delta.grad.abs().sum() > 0


def _models(dtype=torch.float32) -> tuple[SpartaModel, SpartaModel, ReferenceSparta]:
    config = dict(density=0.2, target_modules="all-linear")
    inplace = get_sparta_model(tiny_classifier(dtype=dtype), SpartaConfig(**config))
    functional = get_sparta_model(
        tiny_classifier(dtype=dtype), SpartaConfig(**config, merge_mode="functional")
    )
    indices = {n: i.clone() for n, i in inplace.delta_indices().items()}
    return inplace, functional, ReferenceSparta(tiny_classifier(dtype=dtype), indices, ["score.weight"])


def _step_batches(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(1, 128, (4, 10), generator=g),
            "labels": torch.randint(0, 3, (4,), generator=g),
        }
        for _ in range(n)
    ]


def test_functional_trajectory_equals_inplace_and_algorithm_1():
    inplace, functional, ref = _models()
    opts = [
        torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        for m in (inplace, functional)
    ]
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for batch in _step_batches(15):
        losses = []
        for model in (inplace, functional):
            loss = model(**batch).loss
            loss.backward()
            losses.append(loss.detach())
        loss_ref = ref.forward_backward(lambda m, b=batch: m(**b).loss)
        assert torch.equal(losses[0], losses[1])
        torch.testing.assert_close(losses[1], loss_ref, rtol=1e-4, atol=1e-5)
        for name, delta in functional.delta_parameters().items():
            assert torch.equal(delta.grad, inplace.delta_parameters()[name].grad)
            torch.testing.assert_close(delta.grad, ref.deltas[name].grad, rtol=1e-3, atol=1e-6)
        for opt in (*opts, opt_ref):
            opt.step()
            opt.zero_grad()
    for name, delta in functional.delta_parameters().items():
        torch.testing.assert_close(delta.detach(), ref.deltas[name].detach(), rtol=1e-3, atol=1e-5)
    assert any(d.abs().max() > 1e-3 for d in functional.delta_parameters().values())
    pretrained = tiny_classifier().state_dict()
    for name, layer in functional.sparta_layers():
        assert torch.equal(layer.weight, pretrained[f"{name}.weight"])


def test_functional_mode_under_bf16_autocast_matches_inplace(batch):
    inplace, functional, _ = _models()
    with torch.no_grad():  # the same nonzero deltas in both models
        for name, delta in inplace.delta_parameters().items():
            delta.copy_(torch.randn(delta.shape, generator=torch.Generator().manual_seed(len(name))) * 1e-2)
            functional.delta_parameters()[name].copy_(delta)

    def grads(model: SpartaModel, autocast: bool) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=batch["input_ids"]).logits
        nn.functional.cross_entropy(logits.float(), batch["labels"]).backward()
        return torch.cat([p.grad for p in model.delta_parameters().values()])

    bf16 = grads(functional, True)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert torch.equal(bf16, grads(inplace, True))
    fp32 = grads(functional, False)
    assert nn.functional.cosine_similarity(fp32, bf16, dim=0) > 0.99
    assert (bf16 - fp32).norm() < 0.1 * fp32.norm()


def _train(model: SpartaModel, batches: list[dict]) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    for b in batches:
        model(**b).loss.backward()
        opt.step()
        opt.zero_grad()


@torch.no_grad()
def _logits(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(input_ids=batch["input_ids"]).logits


def test_switching_modes_round_trips(batch):
    pretrained = tiny_classifier().state_dict()
    model = get_sparta_model(tiny_classifier(), SpartaConfig(density=0.3))
    _train(model, _step_batches(5))
    trained = _logits(model, batch)
    base = _logits(tiny_classifier(), batch)
    model.set_merge_mode("functional")
    assert model.sparta_config.merge_mode == "functional"
    for name, layer in model.sparta_layers():
        assert layer.merge_mode == "functional" and torch.equal(layer.weight, pretrained[f"{name}.weight"])
    assert torch.equal(_logits(model, batch), trained)
    with model.disable_adapter():
        assert torch.equal(_logits(model, batch), base)
    assert torch.equal(_logits(model, batch), trained)
    _train(model, _step_batches(2))  # training goes on in functional mode
    trained = _logits(model, batch)
    model.set_merge_mode("inplace")
    assert torch.equal(_logits(model, batch), trained)
    assert any(not torch.equal(layer.weight, pretrained[f"{n}.weight"]) for n, layer in model.sparta_layers())
    with pytest.raises(SpartaError, match="merge_mode must be one of inplace, functional"):
        model.set_merge_mode("lazy")


@pytest.mark.parametrize("merge", [True, False])
def test_unload_and_merge_and_unload_from_functional_mode(batch, merge):
    models = []
    for mode in ("inplace", "functional"):
        model = get_sparta_model(tiny_classifier(), SpartaConfig(density=0.3, merge_mode=mode))
        _train(model, _step_batches(4))
        models.append(model.merge_and_unload() if merge else model.unload())
    for (n, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters(), strict=True):
        assert torch.equal(a, b), n
    assert torch.equal(_logits(models[0], batch), _logits(models[1], batch))
    if not merge:
        for n, p in tiny_classifier().named_parameters():
            assert torch.equal(models[1].get_parameter(n), p), n


def test_merge_mode_is_saved_and_old_configs_load_as_inplace(tmp_path, batch):
    model = get_sparta_model(tiny_classifier(), SpartaConfig(density=0.3, merge_mode="functional"))
    _train(model, _step_batches(3))
    model.save_pretrained(tmp_path / "a")
    document = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert document["config"]["merge_mode"] == "functional"
    loaded = SpartaModel.from_pretrained(tiny_classifier(), tmp_path / "a")
    assert all(layer.merge_mode == "functional" for _, layer in loaded.sparta_layers())
    assert torch.equal(_logits(loaded, batch), _logits(model, batch))

    del document["config"]["merge_mode"]  # an adapter written before the field existed
    document.pop("weights_sha256")
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(document))
    old = SpartaModel.from_pretrained(tiny_classifier(), tmp_path / "a")
    assert old.sparta_config.merge_mode == "inplace"
    assert all(layer.merge_mode == "inplace" for _, layer in old.sparta_layers())
    assert torch.equal(_logits(old, batch), _logits(model, batch))


@pytest.mark.parametrize("mode", ["lazy", None, 1])
def test_unknown_merge_mode_is_a_clear_error(mode):
    with pytest.raises(SpartaError, match=r"merge_mode must be one of inplace, functional, got"):
        SpartaConfig(merge_mode=mode)
