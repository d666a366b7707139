import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from sparta.adapter import layer as layer_module
from sparta.adapter import native
from sparta.adapter.layer import SpartaLinear, sampled_dot
from sparta.adapter.sampling import sample_indices


def _indices(shape, density=0.2, name="w"):
    n = shape[0] * shape[1]
    return torch.from_numpy(sample_indices(n, density, 0, name, shape))


def test_sampled_dot_matches_dense_product_at_pattern():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 9, generator=g)
    flat = _indices((5, 9), 0.3)
    rows, cols = flat // 9, flat % 9
    crow = torch.zeros(6, dtype=torch.int32)
    crow[1:] = torch.bincount(rows, minlength=5).cumsum(0)
    got = sampled_dot(a, b, crow, cols.to(torch.int32))
    torch.testing.assert_close(got, (a.t() @ b)[rows, cols])


def _pattern(rows, cols, density, name):
    flat = _indices((rows, cols), density, name)
    crow = torch.zeros(rows + 1, dtype=torch.int32)
    crow[1:] = torch.bincount(flat // cols, minlength=rows).cumsum(0)
    return flat // cols, flat % cols, crow


@pytest.mark.parametrize("keep_max", [None, 100])
def test_sampled_dot_reused_buffers_stay_correct_across_sizes_and_inputs(keep_max, monkeypatch):
    """The CPU workspace reuses operand buffers and caches the transposed input: every call must still see its own
    operands (bigger then smaller token counts, another input, the same input changed in place, other dtypes);
    with a small `_KEEP_MAX_ELEMENTS` the larger operands take the fresh-tensor path instead."""
    monkeypatch.setattr(native, "available", lambda: False)  # the workspace serves the torch path only
    if keep_max is not None:
        monkeypatch.setattr(layer_module, "_KEEP_MAX_ELEMENTS", keep_max)
    layer_module._WORKSPACE.clear()
    g = torch.Generator().manual_seed(1)
    rows, cols, crow = _pattern(6, 10, 0.3, "ws")
    col = cols.to(torch.int32)
    x_big = torch.randn(40, 10, generator=g)
    for n, grad_dtype in [(40, torch.float32), (7, torch.float32), (40, torch.bfloat16), (3, torch.float64)]:
        x = x_big[:n].to(grad_dtype) if grad_dtype == torch.float64 else x_big[:n]
        grad = torch.randn(n, 6, generator=g).to(grad_dtype)
        got = sampled_dot(grad, x, crow, col, cached="col")
        want = (grad.to(x.dtype).t() @ x).to(got.dtype)[rows, cols]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    x = torch.randn(9, 10, generator=g)
    grad = torch.randn(9, 6, generator=g)
    first = sampled_dot(grad, x, crow, col, cached="col")
    torch.testing.assert_close(sampled_dot(grad, x, crow, col, cached="col"), first)  # a cache hit
    x.mul_(2.0)  # same storage, new version: must not reuse the cached transpose
    torch.testing.assert_close(sampled_dot(grad, x, crow, col, cached="col"), 2.0 * first)
    y = torch.randn(9, 10, generator=g)
    torch.testing.assert_close(sampled_dot(grad, y, crow, col, cached="col"), (grad.t() @ y)[rows, cols])


@pytest.mark.parametrize("layer_type", ["linear", "conv1d"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_delta_gradient_equals_dense_gradient_at_indices(layer_type, with_bias):
    torch.manual_seed(0)
    if layer_type == "linear":
        base = nn.Linear(12, 8, bias=with_bias)
    else:
        base = Conv1D(8, 12)  # weight (12, 8): transposed storage
        if not with_bias:
            base.bias = None
    flat = _indices(tuple(base.weight.shape))
    reference = base.weight.detach().clone().requires_grad_(True)
    x = torch.randn(3, 5, 12, requires_grad=True)

    layer = SpartaLinear(base, flat, transposed=layer_type == "conv1d", delta_dtype=torch.float32)
    out = layer(x)
    out.pow(2).sum().backward()

    x_ref = x.detach().clone().requires_grad_(True)
    bias = None if layer.bias is None else layer.bias.detach()
    w = reference.t() if layer_type == "conv1d" else reference
    torch.nn.functional.linear(x_ref, w, bias).pow(2).sum().backward()

    torch.testing.assert_close(out, torch.nn.functional.linear(x_ref, w, bias))
    torch.testing.assert_close(layer.sparta_delta.grad, reference.grad.reshape(-1)[flat])
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert layer.weight.grad is None  # no dense weight gradient


def test_bf16_layer_gradients_close_to_fp32_reference():
    torch.manual_seed(0)
    base = nn.Linear(16, 16, bias=False).to(torch.bfloat16)
    flat = _indices((16, 16))
    w32 = base.weight.detach().float().requires_grad_(True)
    layer = SpartaLinear(base, flat, transposed=False, delta_dtype=torch.float32)
    x = torch.randn(4, 16)
    layer(x.to(torch.bfloat16)).float().sum().backward()
    torch.nn.functional.linear(x, w32).sum().backward()
    assert layer.sparta_delta.grad.dtype == torch.float32
    torch.testing.assert_close(layer.sparta_delta.grad, w32.grad.reshape(-1)[flat], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sync_writes_original_plus_delta_and_restores_exactly(dtype):
    torch.manual_seed(0)
    base = nn.Linear(10, 6).to(dtype)
    w0 = base.weight.detach().clone()
    flat = _indices((6, 10), 0.5)
    layer = SpartaLinear(base, flat, transposed=False, delta_dtype=torch.float32)
    opt = torch.optim.Adam([layer.sparta_delta], lr=0.1)
    for _ in range(30):
        layer(torch.randn(2, 10, dtype=dtype)).float().sum().backward()
        opt.step()
        opt.zero_grad()
    layer.sync()
    expected = w0.reshape(-1).clone()
    expected[flat] = (w0.reshape(-1)[flat].float() + layer.sparta_delta.detach()).to(dtype)
    assert torch.equal(layer.weight.detach().reshape(-1), expected)
    untouched = torch.ones(60, dtype=torch.bool)
    untouched[flat] = False
    assert torch.equal(layer.weight.detach().reshape(-1)[untouched], w0.reshape(-1)[untouched])
    layer.write_original()
    assert torch.equal(layer.weight.detach(), w0)


def test_fused_optimizer_step_is_seen_by_the_next_forward():
    # fused optimizers do not bump the version counter; the backward marks the layer dirty instead
    torch.manual_seed(0)
    base = nn.Linear(8, 8, bias=False)
    layer = SpartaLinear(base, _indices((8, 8), 0.5), transposed=False, delta_dtype=torch.float32)
    opt = torch.optim.AdamW([layer.sparta_delta], lr=0.5, fused=True)
    x = torch.randn(2, 8)
    layer(x).sum().backward()
    opt.step()
    y = layer(x)
    dense = layer.sparta_orig + layer.sparta_delta.detach()
    w = layer.weight.detach().clone().reshape(-1)
    w[layer.sparta_flat] = dense
    torch.testing.assert_close(y, x @ w.view(8, 8).t())
