"""What one adapted module does.

`SpartaLinear` replaces a Linear (or transformers' transposed `Conv1D`) whose weight W0 gets a sparse delta at
the sampled positions phi:

* forward: ``F.linear(x, W)`` with ``W = W0 + scatter(phi, delta)`` already merged in place, so the forward
  costs exactly what the base layer costs (no extra matmul, no second weight);
* backward: the input gradient as usual, and the delta gradient *only at phi*, as a sampled dense-dense product
  (``torch.sparse.sampled_addmm``): for each selected (i, j), ``sum_n grad_out[n, i] * x[n, j]``. No dense
  weight-gradient tensor is ever formed;
* sync: after the deltas change (an optimizer step, a load), the merged positions are rewritten from the saved
  original values, ``W[phi] = W0[phi] + delta``, never by subtracting the old delta, so nothing drifts and
  ``unload()`` restores W0 bit for bit in any dtype.

That is the default ``"inplace"`` merge mode. In ``"functional"`` mode (for engines that shard parameters: FSDP,
DeepSpeed ZeRO-3) the weight Parameter always holds exactly W0 and is never written; each forward builds
``W = W0 + scatter(phi, delta)`` out of place as a temporary, and the backward rebuilds it rather than keeping it
alive in between. Both modes compute the same numbers and the same delta gradients.

`SparseVectorDelta` is a parametrization for 1-D parameters (biases, norm weights): tiny tensors for which a
fresh ``W0.index_put(phi, W0[phi] + delta)`` per forward costs nothing and keeps W0 untouched.
"""

from __future__ import annotations

import threading
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from sparta.adapter import native
from sparta.adapter.config import check_merge_mode

# sampled_addmm on a CSR pattern is all we use of the beta sparse API; its once-per-process notice is noise here.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

_SAMPLED_DTYPES = (torch.float32, torch.float64)


# CPU operand buffers up to this many elements are kept for reuse (128 MB in fp32); larger ones are made fresh.
_KEEP_MAX_ELEMENTS = 32 * 2**20


class _Workspace(threading.local):
    """Reusable operand buffers for the sampled products, per thread, one per slot and dtype, grown to the
    largest size seen. On CPU a fresh tensor per call pays for new pages in every backward of every layer, which
    is much of what a transposed copy costs; other devices have a caching allocator, so there (and for operands
    above `_KEEP_MAX_ELEMENTS`) a plain new tensor is used.

    The "input" slot also caches the transposed layer input: q/k/v (and gate/up) share one input, so their
    backward passes reuse a single copy. The key includes the source's version counter (an in-place change is a
    miss) and the entry keeps a reference to the source, so its memory cannot be reused while cached."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self.cached: tuple[torch.Tensor, tuple, torch.Tensor] | None = None

    def transposed(self, act: torch.Tensor, dtype: torch.dtype, slot: str) -> torch.Tensor:
        """The contiguous (K, N) transpose of an (N, K) activation, in `dtype`, using `slot`'s buffer."""
        key = (act.data_ptr(), act.shape, act.stride(), act._version, act.device, dtype)
        if slot == "input" and self.cached is not None and self.cached[1] == key:
            return self.cached[2]
        numel = act.numel()
        if act.device.type == "cpu" and numel <= _KEEP_MAX_ELEMENTS:
            buffer = self.buffers.get((slot, dtype))
            if buffer is None or buffer.numel() < numel:
                if slot == "input":
                    self.cached = None  # let the old buffer go before a bigger one is made
                buffer = self.buffers[(slot, dtype)] = torch.empty(numel, dtype=dtype)
            out = buffer[:numel].view(act.shape[1], act.shape[0]).copy_(act.t())
        else:
            out = act.t().to(dtype).contiguous()
        if slot == "input":
            self.cached = (act, key, out)
        return out

    def clear(self) -> None:
        """Release every buffer and the cached input (and the native kernel's tiles)."""
        self.buffers.clear()
        self.cached = None
        native.release()


_WORKSPACE = _Workspace()


def sampled_dot(
    row_act: torch.Tensor,
    col_act: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    *,
    cached: str | None = None,
) -> torch.Tensor:
    """For each (i, j) of the CSR pattern (crow, col): ``sum_n row_act[n, i] * col_act[n, j]``.

    `row_act` is (N, R) and `col_act` is (N, C). On CPU, fp32 and bf16 operands go to sparta's native kernel
    (`sparta.adapter.native`: reads them in place, sums in fp32). Otherwise `torch.sparse.sampled_addmm` runs on
    contiguous (R, N) and (C, N) operands, which turns every entry into one contiguous dot product; its kernels
    have no bfloat16/float16 on CPU (and not everywhere on CUDA), so other dtypes are computed in float32.
    `cached` ("row" or "col") names the operand that is a layer input, whose transpose may be shared.
    """
    nnz = col.numel()
    dtype = row_act.dtype if row_act.dtype in _SAMPLED_DTYPES else torch.float32
    if nnz == 0 or row_act.shape[0] == 0:
        return torch.zeros(nnz, dtype=dtype, device=row_act.device)
    if native.supports(row_act, col_act, crow, col):
        return native.sampled_dot(row_act, col_act, crow, col)
    a = _WORKSPACE.transposed(row_act, dtype, "input" if cached == "row" else "row")
    b = _WORKSPACE.transposed(col_act, dtype, "input" if cached == "col" else "col")
    pattern = torch.sparse_csr_tensor(
        crow,
        col,
        torch.zeros(nnz, dtype=dtype, device=a.device),
        size=(a.shape[0], b.shape[0]),
        check_invariants=False,
    )
    return torch.sparse.sampled_addmm(pattern, a, b.t(), beta=0.0).values()


class _SyncState:
    """Mutable flags shared between a SpartaLinear and its autograd nodes."""

    __slots__ = ("key", "dirty", "disabled")

    def __init__(self) -> None:
        # (delta version, delta data_ptr, weight data_ptr) at the last sync
        self.key: tuple[int, int, int] | None = None
        # set by every backward: an optimizer step may follow (fused optimizers do not bump _version)
        self.dirty = True
        self.disabled = False


def _oriented(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    return weight.t() if transposed else weight


def merged_weight(weight: torch.Tensor, flat: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """A new tensor: `weight` with ``weight[phi] + delta`` at phi (summed in the delta's dtype, then cast, as
    `SpartaLinear.sync` does). `weight` is not written and no graph is recorded."""
    with torch.no_grad():
        w = weight.reshape(-1)
        values = (w[flat].to(delta.dtype) + delta).to(w.dtype)
        return w.index_put((flat,), values).view_as(weight)


def _compute_input(x: torch.Tensor) -> torch.Tensor:
    """The layer input as the forward's matmul reads it: in autocast's dtype when autocast is on (bf16/fp16).

    Casting it here, not inside `F.linear`, lets backward keep the low-precision copy: half the saved
    activation of an fp32 input, and bf16 operands for the native delta-gradient kernel, which reads bf16 in
    place and sums in fp32 (an fp32 input next to a bf16 output gradient would need fp32 copies of both)."""
    device = x.device.type
    if x.is_floating_point() and torch.is_autocast_enabled(device):
        return x.to(torch.get_autocast_dtype(device))
    return x


def _linear_grads(ctx, grad_out, x, weight, crow, col):  # noqa: ANN001, ANN202
    """(grad_x, grad_bias, grad_delta) of y = x W^T + b, the delta gradient at phi only (W: the merged weight)."""
    grad_x = grad_bias = grad_delta = None
    if ctx.needs_input_grad[0]:
        # under autocast grad_out may be bf16 while the frozen weight is fp32
        grad_x = grad_out @ _oriented(weight, ctx.transposed).to(grad_out.dtype)
    g2 = grad_out.reshape(-1, grad_out.shape[-1])
    if ctx.needs_input_grad[2]:
        grad_bias = g2.sum(0, dtype=torch.float32).to(ctx.bias_dtype)
    if ctx.needs_input_grad[3]:
        x2 = x.reshape(-1, x.shape[-1])
        if ctx.transposed:
            grad_delta = sampled_dot(x2, g2, crow, col, cached="row")
        else:
            grad_delta = sampled_dot(g2, x2, crow, col, cached="col")
        grad_delta = grad_delta.to(ctx.delta_dtype)
    return grad_x, grad_bias, grad_delta


def _save_meta(ctx, bias, delta, transposed) -> None:  # noqa: ANN001
    ctx.transposed = transposed
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.delta_dtype = delta.dtype


class _SparseDeltaLinearFn(torch.autograd.Function):
    """y = x W^T + b with W already merged; gradients for x, b (if needed) and the deltas at phi only."""

    @staticmethod
    def forward(ctx, x, weight, bias, delta, crow, col, transposed, state):  # noqa: ANN001
        x = _compute_input(x)
        # under autocast the weight is cast once here and that copy kept for the input gradient, as a plain
        # Linear under autocast keeps its cast weight (no second cast in backward)
        weight = weight.to(x.dtype) if x.dtype != weight.dtype and x.is_floating_point() else weight
        ctx.save_for_backward(x, weight, crow, col)
        _save_meta(ctx, bias, delta, transposed)
        ctx.state = state
        return F.linear(x, _oriented(weight, transposed), bias)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001
        x, weight, crow, col = ctx.saved_tensors
        grad_x, grad_bias, grad_delta = _linear_grads(ctx, grad_out, x, weight, crow, col)
        if grad_delta is not None:
            ctx.state.dirty = True  # an optimizer step may follow (fused optimizers do not bump _version)
        return grad_x, None, grad_bias, grad_delta, None, None, None, None


class _FunctionalSparseDeltaLinearFn(torch.autograd.Function):
    """As `_SparseDeltaLinearFn`, but `weight` is W0: the merged W is built out of place in forward and rebuilt
    in backward (only when the input needs a gradient), never kept alive in between. What autograd saves is W0
    and the delta themselves, which FSDP frees after forward and re-gathers for backward as usual; keeping the
    merged copy instead would hold one full weight per adapted layer from forward to backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, delta, flat, crow, col, transposed):  # noqa: ANN001
        x = _compute_input(x)
        ctx.save_for_backward(x, weight, delta, flat, crow, col)
        _save_meta(ctx, bias, delta, transposed)
        return F.linear(x, _oriented(merged_weight(weight, flat, delta), transposed), bias)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001
        x, weight, delta, flat, crow, col = ctx.saved_tensors
        merged = merged_weight(weight, flat, delta) if ctx.needs_input_grad[0] else None
        grad_x, grad_bias, grad_delta = _linear_grads(ctx, grad_out, x, merged, crow, col)
        return grad_x, None, grad_bias, grad_delta, None, None, None, None


class SpartaLinear(nn.Module):
    """A Linear (or Conv1D) layer with a sparse trainable delta on its frozen weight.

    The wrapped layer's own ``weight``/``bias`` Parameters are moved here (no copy); the original module is kept
    aside, holding no parameters meanwhile (an engine that replaces this layer's Parameters, such as FSDP, must
    not find a stale reference there), and gets them back from :meth:`restore`. `merge_mode` is ``"inplace"``
    (the delta merged into the weight storage) or ``"functional"`` (the weight stays W0; see the module doc).
    """

    def __init__(
        self,
        base: nn.Module,
        flat_indices: torch.Tensor,
        *,
        transposed: bool,
        delta_dtype: torch.dtype,
        merge_mode: str = "inplace",
    ):
        super().__init__()
        object.__setattr__(self, "_base", base)  # hidden: not a submodule, no duplicate parameters
        self.weight: nn.Parameter = base.weight
        self.bias: nn.Parameter | None = base.bias
        base.weight = None
        if self.bias is not None:
            base.bias = None
        self.transposed = transposed
        self.merge_mode = check_merge_mode(merge_mode)
        rows, cols = self.weight.shape
        device = self.weight.device
        flat = flat_indices.to(device=device, dtype=torch.int64)
        nnz = flat.numel()
        index_dtype = torch.int32 if max(nnz, rows, cols) < 2**31 - 1 else torch.int64
        if device.type == "meta":
            crow = torch.empty(rows + 1, dtype=index_dtype, device=device)
            col = torch.empty(nnz, dtype=index_dtype, device=device)
            orig = torch.empty(nnz, dtype=self.weight.dtype, device=device)
        else:
            counts = torch.bincount(flat // cols, minlength=rows)
            crow = torch.zeros(rows + 1, dtype=torch.int64, device=device)
            torch.cumsum(counts, 0, out=crow[1:])
            crow = crow.to(index_dtype)
            col = (flat % cols).to(index_dtype)
            orig = self.weight.detach().reshape(-1)[flat].clone()
        self.register_buffer("sparta_flat", flat, persistent=False)
        self.register_buffer("sparta_crow", crow, persistent=False)
        self.register_buffer("sparta_col", col, persistent=False)
        self.register_buffer("sparta_orig", orig, persistent=False)
        self.sparta_delta = nn.Parameter(torch.zeros(nnz, dtype=delta_dtype, device=device))
        self._state = _SyncState()

    def set_positions(self, flat_indices: torch.Tensor, delta: torch.Tensor) -> None:
        """Move this layer's adapter to other positions phi' with other deltas, in place and in O(m).

        The pretrained values go back at the old phi first (from `sparta_orig`, never by subtracting), so the
        weight is bitwise W0 in between; then W0 is read at phi' and W0 + delta' merged there on the next forward.
        Used to switch between adapters loaded for one base model (`SpartaModel.set_adapter`)."""
        self.write_original()
        rows, cols = self.weight.shape
        device = self.weight.device
        flat = flat_indices.to(device=device, dtype=torch.int64)
        counts = torch.bincount(flat // cols, minlength=rows)
        crow = torch.zeros(rows + 1, dtype=torch.int64, device=device)
        torch.cumsum(counts, 0, out=crow[1:])
        index_dtype = self.sparta_crow.dtype
        self.sparta_flat = flat
        self.sparta_crow = crow.to(index_dtype)
        self.sparta_col = (flat % cols).to(index_dtype)
        self.sparta_orig = self.weight.detach().reshape(-1)[flat].clone()
        requires_grad = self.sparta_delta.requires_grad
        self.sparta_delta = nn.Parameter(
            delta.to(device=device, dtype=self.sparta_delta.dtype).clone(), requires_grad=requires_grad
        )
        self._state.key, self._state.dirty = None, True
        self.sync(force=True)

    @property
    def base_layer(self) -> nn.Module:
        return self._base

    def extra_repr(self) -> str:
        rows, cols = self.weight.shape
        nnz = self.sparta_delta.numel()
        return (
            f"weight={tuple(self.weight.shape)}, nnz={nnz}, density={nnz / (rows * cols):.4g}, "
            f"merge_mode={self.merge_mode}"
        )

    # -- keeping W = W0 + delta at phi -------------------------------------------------------------------------
    def _sync_key(self) -> tuple[int, int, int]:
        return (self.sparta_delta._version, self.sparta_delta.data_ptr(), self.weight.data_ptr())

    def sync(self, force: bool = False) -> None:
        """Rewrite W[phi] = W0[phi] + delta (computed in the delta's precision, then cast) if anything changed.

        Only in inplace mode: a functional layer's weight is W0 at all times."""
        if self.merge_mode != "inplace" or self._state.disabled or self.weight.device.type == "meta":
            return
        if not (force or self._state.dirty or self._state.key != self._sync_key()):
            return
        with torch.no_grad():
            merged = (self.sparta_orig.to(self.sparta_delta.dtype) + self.sparta_delta).to(self.weight.dtype)
            self.weight.view(-1).index_copy_(0, self.sparta_flat, merged)
        self._state.dirty = False
        self._state.key = self._sync_key()

    def write_original(self) -> None:
        """Put the exact pretrained values back at phi (the weight is then bitwise W0; functional: it is)."""
        if self.merge_mode != "inplace":
            return
        with torch.no_grad():
            self.weight.view(-1).index_copy_(0, self.sparta_flat, self.sparta_orig)
        self._state.key = None

    def merge_weight(self) -> None:
        """Write W0[phi] + delta into the weight storage in either mode (to hand the layer back merged)."""
        with torch.no_grad():
            merged = (self.sparta_orig.to(self.sparta_delta.dtype) + self.sparta_delta).to(self.weight.dtype)
            self.weight.view(-1).index_copy_(0, self.sparta_flat, merged)
        self._state.key = None

    def set_disabled(self, disabled: bool) -> None:
        """Run as the base layer (W0) while disabled; re-merge the deltas when enabled again."""
        if disabled and not self._state.disabled:
            self.write_original()
        self._state.disabled = disabled
        if not disabled:
            self.sync(force=True)

    def set_merge_mode(self, mode: str) -> None:
        """Switch between "inplace" and "functional"; the weight storage is W0 in between (bitwise)."""
        check_merge_mode(mode)
        if mode == self.merge_mode:
            return
        self.write_original()
        self.merge_mode = mode
        self._state.key, self._state.dirty = None, True  # inplace: merge again in the next forward

    def restore(self) -> nn.Module:
        """The original module, holding this layer's current Parameters (merged or not: see the caller)."""
        base = self._base
        base.weight = self.weight
        if self.bias is not None or getattr(base, "bias", None) is not None:
            base.bias = self.bias
        return base

    # -- forward -------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._state.disabled:
            weight = self.weight.t() if self.transposed else self.weight
            return F.linear(x, weight, self.bias)
        if self.merge_mode == "functional":
            return self._functional_forward(x)
        self.sync()
        if not (self.sparta_delta.requires_grad and torch.is_grad_enabled()):
            weight = self.weight.t() if self.transposed else self.weight
            return F.linear(x, weight, self.bias)
        return _SparseDeltaLinearFn.apply(
            x,
            self.weight,
            self.bias,
            self.sparta_delta,
            self.sparta_crow,
            self.sparta_col,
            self.transposed,
            self._state,
        )

    def _functional_forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.sparta_delta.requires_grad and torch.is_grad_enabled()):
            weight = merged_weight(self.weight, self.sparta_flat, self.sparta_delta)
            return F.linear(x, _oriented(weight, self.transposed), self.bias)
        return _FunctionalSparseDeltaLinearFn.apply(
            x,
            self.weight,
            self.bias,
            self.sparta_delta,
            self.sparta_flat,
            self.sparta_crow,
            self.sparta_col,
            self.transposed,
        )


class SparseVectorDelta(nn.Module):
    """Parametrization of a 1-D parameter: ``W0.index_put(phi, W0[phi] + delta)``; W0 itself is never written."""

    def __init__(self, original: torch.Tensor, flat_indices: torch.Tensor, *, delta_dtype: torch.dtype):
        super().__init__()
        flat = flat_indices.to(device=original.device, dtype=torch.int64)
        self.register_buffer("sparta_flat", flat, persistent=False)
        self.sparta_delta = nn.Parameter(torch.zeros(flat.numel(), dtype=delta_dtype, device=original.device))
        self.disabled = False

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        if self.disabled:
            return original
        values = (original[self.sparta_flat].to(self.sparta_delta.dtype) + self.sparta_delta).to(
            original.dtype
        )
        return original.index_put((self.sparta_flat,), values)
