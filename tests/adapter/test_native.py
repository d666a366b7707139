"""The native CPU delta-gradient kernel (sampled_dot.c) against the dense product, and its fallbacks."""

import platform
from pathlib import Path

import pytest
import torch
from torch import nn

from sparta.adapter import native
from sparta.adapter.layer import SpartaLinear, sampled_dot
from sparta.adapter.sampling import sample_indices

needs_kernel = pytest.mark.skipif(not native.available(), reason=native.status())


def _pattern(rows: int, cols: int, density: float, name: str = "w"):
    flat = torch.from_numpy(sample_indices(rows * cols, density, 0, name, (rows, cols)))
    crow = torch.zeros(rows + 1, dtype=torch.int32)
    crow[1:] = torch.bincount(flat // cols, minlength=rows).cumsum(0)
    return flat // cols, (flat % cols).to(torch.int32), crow


@needs_kernel
# token counts below, at and past one 128-token tile, an 8-row block (fp32) and a 16-token block (bf16 tiles);
# widths that are and are not multiples of 8
@pytest.mark.parametrize("n_tokens", [1, 7, 8, 17, 127, 128, 129, 300])
@pytest.mark.parametrize(("rows", "cols"), [(5, 9), (16, 24), (13, 40), (48, 7)])
def test_kernel_equals_dense_product_at_the_pattern(n_tokens, rows, cols):
    g = torch.Generator().manual_seed(n_tokens * 100 + rows)
    a, b = torch.randn(n_tokens, rows, generator=g), torch.randn(n_tokens, cols, generator=g)
    r, c, crow = _pattern(rows, cols, 0.3)
    torch.testing.assert_close(
        native.sampled_dot(a, b, crow, c), (a.t() @ b)[r, c.long()], rtol=1e-5, atol=1e-4
    )


@needs_kernel
@pytest.mark.parametrize("n_tokens", [1, 15, 16, 150, 300])
@pytest.mark.parametrize(("rows", "cols"), [(24, 40), (13, 9)])
def test_bf16_operands_are_read_in_place_and_summed_in_fp32(n_tokens, rows, cols):
    """bf16 operands, on the CPU's bf16 dot products where it has them (else widened): the fp32 sums of their
    exact products, on shapes with token and column remainders."""
    g = torch.Generator().manual_seed(3 + n_tokens)
    a = torch.randn(n_tokens, rows, generator=g).to(torch.bfloat16)
    b = torch.randn(n_tokens, cols, generator=g).to(torch.bfloat16)
    r, c, crow = _pattern(rows, cols, 0.25)
    got = native.sampled_dot(a, b, crow, c)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, (a.float().t() @ b.float())[r, c.long()], rtol=1e-5, atol=1e-4)


@needs_kernel
def test_widened_bf16_build_equals_the_bf16_dot_product_build(monkeypatch, tmp_path):
    """On a CPU with AVX512-BF16, a build without it (bf16 widened to fp32 while tiling) gives the same sums."""
    if "AVX512-BF16" not in native.status():
        pytest.skip(native.status())
    g = torch.Generator().manual_seed(8)
    a = torch.randn(200, 24, generator=g).to(torch.bfloat16)
    b = torch.randn(200, 40, generator=g).to(torch.bfloat16)
    r, c, crow = _pattern(24, 40, 0.3)
    with_dot = native.sampled_dot(a, b, crow, c)
    _fresh_state(monkeypatch, tmp_path)
    monkeypatch.setattr(native, "FLAGS", [*native.FLAGS, "-mno-avx512bf16"])
    assert "widened" in native.status()
    torch.testing.assert_close(native.sampled_dot(a, b, crow, c), with_dot, rtol=1e-5, atol=1e-4)


@needs_kernel
def test_row_strided_views_and_empty_rows():
    """Operands that are column slices of wider tensors (row stride > width) are read in place; rows of the
    pattern without entries leave nothing behind."""
    g = torch.Generator().manual_seed(4)
    wide_a, wide_b = torch.randn(70, 30, generator=g), torch.randn(70, 50, generator=g)
    a, b = wide_a[:, 3:19], wide_b[:, 10:42]
    assert not a.is_contiguous() and native.supports(
        a, b, torch.zeros(1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32)
    )
    r, c, crow = _pattern(16, 32, 0.2)
    keep = r % 3 != 0  # drop every third row's entries
    r, c = r[keep], c[keep]
    crow = torch.zeros(17, dtype=torch.int32)
    crow[1:] = torch.bincount(r, minlength=16).cumsum(0)
    torch.testing.assert_close(
        native.sampled_dot(a, b, crow, c), (a.t() @ b)[r, c.long()], rtol=1e-5, atol=1e-4
    )


@needs_kernel
def test_row_bands_on_several_threads_give_the_same_result(monkeypatch):
    """With OpenMP, each thread takes a band of rows (about nnz / threads entries): 1, 2 and 3 bands agree."""
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(300, 64, generator=g), torch.randn(300, 48, generator=g)
    r, c, crow = _pattern(64, 48, 0.4)
    assert c.numel() > 3 * 256  # enough entries for 3 bands
    want = (a.t() @ b)[r, c.long()]
    for threads in (1, 2, 3):
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        torch.testing.assert_close(native.sampled_dot(a, b, crow, c), want, rtol=1e-5, atol=1e-4)


@needs_kernel
def test_unsupported_operands_take_the_torch_path():
    a, b = torch.randn(10, 4), torch.randn(10, 6)
    r, c, crow = _pattern(4, 6, 0.5)
    assert native.supports(a, b, crow, c)
    assert not native.supports(a.half(), b.half(), crow, c)
    assert not native.supports(a.double(), b.double(), crow, c)
    assert not native.supports(a, b.bfloat16(), crow, c)
    assert not native.supports(a, b, crow.long(), c.long())
    assert not native.supports(a.t().contiguous().t(), b, crow, c)  # column-major rows
    got = sampled_dot(a.double(), b.double(), crow, c)  # through layer.sampled_dot: sampled_addmm in fp64
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, (a.double().t() @ b.double())[r, c.long()])


def _fresh_state(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_status", None)
    monkeypatch.setenv("SPARTA_KERNEL_DIR", str(tmp_path / "kernels"))


def test_build_failure_falls_back_and_says_why(monkeypatch, tmp_path):
    _fresh_state(monkeypatch, tmp_path)
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    assert not native.available()
    assert "unavailable" in native.status() and "false failed" in native.status()
    a, b = torch.randn(9, 5), torch.randn(9, 7)
    r, c, crow = _pattern(5, 7, 0.4)
    torch.testing.assert_close(sampled_dot(a, b, crow, c), (a.t() @ b)[r, c.long()])


def test_disabled_by_environment(monkeypatch, tmp_path):
    _fresh_state(monkeypatch, tmp_path)
    monkeypatch.setenv("SPARTA_NATIVE", "0")
    assert not native.available() and "SPARTA_NATIVE=0" in native.status()


@needs_kernel
def test_build_into_an_empty_kernel_dir(monkeypatch, tmp_path):
    _fresh_state(monkeypatch, tmp_path)
    assert native.available(), native.status()
    built = list((tmp_path / "kernels").glob("sampled_dot-*.so"))
    assert len(built) == 1 and not list((tmp_path / "kernels").glob("tmp*"))  # no build leftovers


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_delta_gradient_native_equals_torch_path(dtype, monkeypatch):
    torch.manual_seed(0)
    base = nn.Linear(40, 24).to(dtype)
    flat = torch.from_numpy(sample_indices(24 * 40, 0.2, 0, "layer", (24, 40)))
    layer = SpartaLinear(base, flat, transposed=False, delta_dtype=torch.float32)
    x = torch.randn(3, 50, 40).to(dtype)

    def delta_grad() -> torch.Tensor:
        layer.sparta_delta.grad = None
        layer(x).float().square().sum().backward()
        return layer.sparta_delta.grad.clone()

    fast = delta_grad()
    monkeypatch.setattr(native, "available", lambda: False)
    torch.testing.assert_close(fast, delta_grad(), rtol=1e-5, atol=1e-4)


@needs_kernel
@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc/self/maps (Linux)")
def test_one_openmp_runtime_in_the_process():
    """The OpenMP build resolves libgomp.so.1 to the copy torch loaded: no second runtime, no second thread pool."""
    if "OpenMP" not in native.status():
        pytest.skip(native.status())
    runtimes = {
        line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libgomp" in line
    }
    assert len(runtimes) == 1, runtimes


@needs_kernel
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="-mno-avx2 is an x86 flag")
def test_scalar_build_without_avx2_gives_the_same_numbers(monkeypatch, tmp_path):
    """The portable path (no AVX2 8 x 8 blocks), built on purpose, on shapes with scalar remainders."""
    _fresh_state(monkeypatch, tmp_path)
    monkeypatch.setattr(native, "FLAGS", [*native.FLAGS, "-mno-avx2"])
    assert native.available(), native.status()
    g = torch.Generator().manual_seed(6)
    for n_tokens, rows, cols in [(70, 13, 40), (9, 16, 24)]:
        a, b = torch.randn(n_tokens, rows, generator=g), torch.randn(n_tokens, cols, generator=g)
        r, c, crow = _pattern(rows, cols, 0.3)
        want = (a.t() @ b)[r, c.long()]
        torch.testing.assert_close(native.sampled_dot(a, b, crow, c), want, rtol=1e-5, atol=1e-4)
        got16 = native.sampled_dot(a.bfloat16(), b.bfloat16(), crow, c)
        want16 = (a.bfloat16().float().t() @ b.bfloat16().float())[r, c.long()]
        torch.testing.assert_close(got16, want16, rtol=1e-5, atol=1e-4)
