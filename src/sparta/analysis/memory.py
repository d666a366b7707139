"""Memory accounting of SpaRTA training: the paper's formula (section 5, Table 1) and this implementation's costs.

Paper (16-bit everything, m = k n trainable positions of an n-parameter model):
    storage = n x 16 bit, Full FT with Adam = 4 n x 16 bit,
    SpaRTA = m (4 x 16 + 2 x 16) bit + n x 16 bit  (delta, grad, 2 Adam moments; 2 x 16-bit indices; frozen model).

This implementation keeps per selected position more than the paper's 12 bytes (fp32 deltas and optimizer
state, a CSR column index, a flat position for merging, the original value); the byte counts live in ``IMPL``
below, the one place to update when the core changes.  Models are sized on the meta device (no weights loaded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
)

from sparta.adapter import SpartaConfig, find_targets, get_sparta_model
from sparta.adapter.config import DTYPES, check_density
from sparta.errors import SpartaError
from sparta.models import resolve_model

GB = 1e9
# the paper's Table 1 short names for sparta's dtypes (sparta.adapter.config.DTYPES), and their sizes
SHORT_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
LONG_NAMES = {short: long for long, short in SHORT_NAMES.items()}
DTYPE_BYTES = {SHORT_NAMES[name]: dtype.itemsize for name, dtype in DTYPES.items()}
TORCH_DTYPES = {dtype: SHORT_NAMES[name] for name, dtype in DTYPES.items()}
PAPER_SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.99)
PAPER_SIZES = {"2B": 2e9, "7B": 7e9}


@dataclass(frozen=True)
class PaperCosts:
    """Bits per item in the paper's section 5 (bfloat16 everywhere)."""

    model: int = 16  # per model parameter (frozen copy)
    delta: int = 16  # per trainable position
    grad: int = 16
    adam: int = 32  # exp_avg + exp_avg_sq
    index: int = 32  # two 16-bit integers (row, column)


@dataclass(frozen=True)
class ImplCosts:
    """Bytes per item of this implementation (training with fp32 deltas); edit here if the core changes."""

    delta: int = 4  # trainable delta, fp32
    grad: int = 4  # its gradient, fp32
    adam: int = 8  # exp_avg + exp_avg_sq, fp32
    col_index: int = 4  # CSR column index, int32
    flat_position: int = 8  # flat int64 position used to write merged values
    row_ptr: int = 4  # CSR row pointer, int32, (rows + 1) per targeted matrix
    # The head is fully trained in the weight dtype: weight + grad + 2 Adam moments + the core's saved copy.
    head_copies: int = 5
    # The saved original value of each selected position costs the weight dtype's bytes (2 bf16 / 4 fp32).
    # Adapter file on disk: deltas and head in the chosen delta dtype + the index encoding per position.
    index_file: dict[str, int] = field(default_factory=lambda: {"seed": 0, "coo16": 4, "flat32": 4})
    coo16_wide: int = 8  # coo16 falls back to two int32 when a dim exceeds 65536


PAPER = PaperCosts()
IMPL = ImplCosts()


# ---------------------------------------------------------------------------------------------- paper


def paper_training_bytes(n: float, density: float) -> dict[str, float]:
    """The paper's SpaRTA training memory, per component, in bytes (m = density * n)."""
    m = density * n
    parts = {
        "model": n * PAPER.model / 8,
        "delta": m * PAPER.delta / 8,
        "grad": m * PAPER.grad / 8,
        "adam": m * PAPER.adam / 8,
        "index": m * PAPER.index / 8,
    }
    parts["total"] = sum(parts.values())
    return parts


def paper_table(
    sizes: dict[str, float] = PAPER_SIZES, sparsities: tuple[float, ...] = PAPER_SPARSITIES
) -> list[dict[str, Any]]:
    """Table 1: storage, Full FT (Adam) and SpaRTA at each sparsity, in GB (1e9 bytes)."""
    rows = []
    for name, n in sizes.items():
        row: dict[str, Any] = {"model": name, "n": n, "storage": n * PAPER.model / 8 / GB}
        row["full_ft"] = 4 * n * PAPER.model / 8 / GB
        row["sparta"] = {s: paper_training_bytes(n, 1.0 - s)["total"] / GB for s in sparsities}
        rows.append(row)
    return rows


def format_paper_table(rows: list[dict[str, Any]]) -> str:
    sparsities = list(rows[0]["sparta"])
    head = ["model n", "storage", "Full FT 0%"] + [f"SpaRTA {s:.0%}" for s in sparsities]
    body = [
        [r["model"], f"{r['storage']:g}", f"{r['full_ft']:g}"]
        + [f"{round(r['sparta'][s], 1):g}" for s in sparsities]
        for r in rows
    ]
    note = (
        "GB (1e9 bytes), bf16 everywhere: storage = 2n B, Full FT = 4 x 2n B, "
        "SpaRTA = m (4x16 + 2x16)/8 + 2n B with m = (1 - sparsity) n"
    )
    return _table(head, body) + "\n" + note


# ---------------------------------------------------------------------------------------------- sizing


@dataclass
class ModelSize:
    """Parameter counts of a model, read from its architecture on the meta device."""

    name: str
    n: int  # all parameters (tied weights counted once)
    dtype: str  # bf16 | fp16 | fp32
    targets: list[tuple[str, int, int]]  # (module name, rows, cols) of targeted Linear weights
    head: int = 0  # parameters of the task head (fully trained)
    head_names: list[str] = field(default_factory=list)
    n_target: int = -1  # targeted parameters; by default the sum over `targets`

    def __post_init__(self) -> None:
        if self.n_target < 0:
            self.n_target = sum(r * c for _, r, c in self.targets)


def parse_count(text: str | float | int) -> int:
    """'7e9', '7B', '135M', '2.5k' -> an integer parameter count."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMbBgGtT]?)\s*", str(text))
        scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
        try:
            value = float(match.group(1)) * scale[match.group(2).lower()] if match else float("nan")
        except ValueError:
            value = float("nan")
    if not value > 0 or value != value:
        raise SpartaError(f"--params must be a positive count such as 7e9, 7B or 135M, got {text!r}")
    return int(round(value))


def load_config(model: str | Path) -> Any:
    """The HF config of a registry alias, a local model directory or a hub id (offline: from the local cache)."""
    resolved = resolve_model(str(model))
    try:
        return AutoConfig.from_pretrained(resolved.path)
    except Exception as err:  # noqa: BLE001 - any loading failure is a user-facing problem here
        raise SpartaError(
            f"cannot read a model config for {str(model)!r} ({type(err).__name__}); "
            "give a local model directory or a known model name (see `sparta models list`)"
        ) from None


def size_model(
    model: str | Path | Any,
    targets: str | list[str] = "all-linear",
    num_labels: int = 2,
    head_modules: tuple[str, ...] = ("score", "classifier"),
    dtype: str | None = None,
) -> ModelSize:
    """Count the parameters of a sequence-classification model built from its config on the meta device.

    `model`: a local directory, a known model name, a hub id, or a transformers config object.
    `targets`: "all-linear" (every Linear inside the transformer blocks) or module-name suffixes, as SpartaConfig.
    """
    config = model if isinstance(model, PretrainedConfig) else load_config(model)
    name = str(model) if not isinstance(model, PretrainedConfig) else type(config).__name__
    config.num_labels = num_labels
    try:
        with torch.device("meta"):
            net = AutoModelForSequenceClassification.from_config(config)
    except ValueError:  # no sequence-classification class for this architecture: size the LM instead
        with torch.device("meta"):
            net = AutoModelForCausalLM.from_config(config)
    if dtype is None:
        cfg_dtype = getattr(config, "dtype", None)
        cfg_dtype = getattr(torch, cfg_dtype, None) if isinstance(cfg_dtype, str) else cfg_dtype
        dtype = TORCH_DTYPES.get(cfg_dtype, "fp32")
    return size_module(net, name, targets, head_modules, dtype)


def size_module(
    net: nn.Module,
    name: str,
    targets: str | list[str] = "all-linear",
    head_modules: tuple[str, ...] = ("score", "classifier"),
    dtype: str | None = None,
) -> ModelSize:
    """Parameter counts of a (meta or real) model, with the targets chosen by the core's `find_targets`."""
    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    found = find_targets(
        net, SpartaConfig(density=1.0, target_modules=targets, head_modules=list(head_modules))
    )
    matrices = [(t.name, t.shape[0], t.shape[1]) for t in found if len(t.shape) == 2]
    heads = [n for n, _ in net.named_modules() if n and n.split(".")[-1] in head_modules]
    head = sum(p.numel() for h in heads for p in net.get_submodule(h).parameters())
    if dtype is None:
        dtype = TORCH_DTYPES.get(next(net.parameters()).dtype, "fp32")
    if dtype not in DTYPE_BYTES:
        raise SpartaError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    n = sum(p.numel() for p in net.parameters())
    return ModelSize(name=name, n=n, dtype=dtype, targets=matrices, head=head, head_names=heads)


# ---------------------------------------------------------------------------------------------- implementation


def sparta_training_bytes(size: ModelSize, density: float, m: float | None = None) -> dict[str, float]:
    """This implementation's training memory, per component, in bytes.

    `m`: the number of selected positions; by default its expectation density * n_target.
    """
    density = check_density(density)
    wb = DTYPE_BYTES[size.dtype]
    m = density * size.n_target if m is None else m
    rows = sum(r + 1 for _, r, _ in size.targets)
    parts = {
        "model": (size.n - size.head) * wb,
        "delta": m * IMPL.delta,
        "grad": m * IMPL.grad,
        "adam": m * IMPL.adam,
        "index": m * (IMPL.col_index + IMPL.flat_position) + rows * IMPL.row_ptr,
        "original": m * wb,
        "head": size.head * wb * IMPL.head_copies,
    }
    parts["total"] = sum(parts.values())
    return parts


def adapter_file_bytes(size: ModelSize, density: float, delta_dtype: str | None = None) -> dict[str, float]:
    """Expected size on disk of a saved adapter for each index encoding (deltas + index + head)."""
    db = DTYPE_BYTES[delta_dtype or size.dtype]
    out = {}
    for fmt, per in IMPL.index_file.items():
        total = size.head * db
        # Without matrix shapes (--params), every position is assumed to fit the 16-bit coo encoding.
        for _, r, c in size.targets or [("all", size.n_target, 1)]:
            idx = IMPL.coo16_wide if fmt == "coo16" and max(r, c) > 65536 and size.targets else per
            total += density * r * c * (db + idx)
        out[fmt] = total
    return out


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def measure_training_state(
    model: nn.Module,
    density: float,
    targets: str | list[str] = "all-linear",
    seed: int = 0,
    name: str = "model",
) -> dict[str, Any]:
    """Wrap a sequence-classification `model` (in place) with SpaRTA, run one AdamW step on a tiny batch, and
    compare the bytes actually held for training with :func:`sparta_training_bytes`.

    Measured: trainable parameters + their grads + AdamW state tensors + the SpaRTA modules' buffers + the
    core's saved head copy; frozen: the other parameters. Predicted with the actual number of positions m.
    """
    density = check_density(density)
    size = size_module(model, name, targets)
    config = SpartaConfig(
        density=density, target_modules=targets if targets == "all-linear" else list(targets), seed=seed
    )
    sm = get_sparta_model(model, config)
    params = [p for p in sm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    cfg = model.config
    if getattr(cfg, "pad_token_id", None) is None:
        cfg.pad_token_id = 0
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (2, 8), generator=gen)
    labels = torch.randint(0, max(cfg.num_labels, 1), (2,), generator=gen)
    sm(input_ids=ids, labels=labels).loss.backward()
    optimizer.step()
    trainable = {id(p) for p in params}
    measured = {
        "params": sum(_nbytes(p) for p in params),
        "grads": sum(_nbytes(p.grad) for p in params if p.grad is not None),
        # AdamW's per-parameter 0-dim `step` counters are left out (4 B per tensor, not per position).
        "optimizer": sum(_nbytes(t) for st in optimizer.state.values() for t in st.values() if t.dim() > 0),
        "buffers": sum(
            _nbytes(b) for n, b in sm.base_model.named_buffers() if n.rsplit(".", 1)[-1].startswith("sparta_")
        ),
        "head_copy": sum(_nbytes(t) for t in getattr(sm, "_head_original", {}).values()),
    }
    frozen = sum(_nbytes(p) for p in sm.base_model.parameters() if id(p) not in trainable)
    m = sum(p.numel() for p in sm.delta_parameters().values())
    predicted = sparta_training_bytes(size, density, m=m)
    expected = sparta_training_bytes(size, density)
    return {
        "m": m,
        "expected_m": density * size.n_target,
        "measured": sum(measured.values()),
        "predicted": predicted["total"] - predicted["model"],
        "predicted_expected_m": expected["total"] - expected["model"],
        "measured_parts": measured,
        "frozen_measured": frozen,
        "frozen_predicted": predicted["model"],
    }


@dataclass
class Accounting:
    """Side-by-side accounting: the paper's rule and this implementation's, per component (bytes)."""

    size: ModelSize
    density: float
    paper: dict[str, float]
    sparta: dict[str, float]
    full_ft: float
    adapter_file: dict[str, float]
    measured: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        s = self.size
        return {
            "model": s.name,
            "dtype": s.dtype,
            "n": s.n,
            "n_target": s.n_target,
            "target_matrices": len(s.targets),
            "head_params": s.head,
            "density": self.density,
            "m_paper": self.density * s.n,
            "m": self.density * s.n_target,
            "paper_bytes": self.paper,
            "sparta_bytes": self.sparta,
            "full_ft_bytes": self.full_ft,
            "adapter_file_bytes": self.adapter_file,
            "measured": self.measured,
            "costs": {"paper_bits": PAPER.__dict__, "sparta_bytes": {**IMPL.__dict__}},
        }


def account(size: ModelSize, density: float) -> Accounting:
    density = check_density(density)
    return Accounting(
        size=size,
        density=density,
        paper=paper_training_bytes(size.n, density),
        sparta=sparta_training_bytes(size, density),
        full_ft=4 * size.n * PAPER.model / 8,
        adapter_file=adapter_file_bytes(size, density),
    )


def format_accounting(acc: Accounting) -> str:
    s, wb = acc.size, DTYPE_BYTES[acc.size.dtype]
    unit, div = ("GB", GB) if acc.paper["total"] >= GB else ("MB", 1e6)

    def v(x: float) -> str:
        return f"{x / div:,.3f}"

    p, q = acc.paper, acc.sparta
    rows = [
        ["frozen model", "n x 16 bit", v(p["model"]), f"(n - head) x {wb} B ({s.dtype})", v(q["model"])],
        ["deltas", "m x 16 bit", v(p["delta"]), f"m x {IMPL.delta} B (fp32)", v(q["delta"])],
        ["delta gradients", "m x 16 bit", v(p["grad"]), f"m x {IMPL.grad} B (fp32)", v(q["grad"])],
        [
            "Adam exp_avg + exp_avg_sq",
            "m x 2x16 bit",
            v(p["adam"]),
            f"m x {IMPL.adam} B (fp32)",
            v(q["adam"]),
        ],
        [
            "indices",
            "m x 2x16 bit",
            v(p["index"]),
            f"m x ({IMPL.col_index} B col int32 + {IMPL.flat_position} B flat int64) + {IMPL.row_ptr} B x (rows+1)/matrix",
            v(q["index"]),
        ],
        ["saved original values", "-", "-", f"m x {wb} B ({s.dtype})", v(q["original"])],
        [
            "head (param+grad+Adam+copy)",
            "in n",
            "-",
            f"c d x {IMPL.head_copies} x {wb} B ({s.dtype})",
            v(q["head"]),
        ],
        ["total", "", v(p["total"]), "", v(q["total"])],
        ["Full FT with Adam", "4 n x 16 bit", v(acc.full_ft), "", ""],
    ]
    per_pos = IMPL.delta + IMPL.grad + IMPL.adam + IMPL.col_index + IMPL.flat_position + wb
    lines = [
        f"{s.name}: n = {s.n:,} parameters ({s.dtype}); "
        + (
            f"targeted Linear weights: {s.n_target:,} in {len(s.targets)} matrices; "
            f"head: {s.head:,} ({', '.join(s.head_names) or 'none'})"
            if s.targets
            else "all parameters targeted (matrix shapes and head unknown: no row pointers, no head)"
        ),
        f"density k = {acc.density:g}: paper m = k n = {acc.density * s.n:,.0f}; "
        f"sparta m = k n_target = {acc.density * s.n_target:,.0f} (expected)",
        "",
        _table(["component", "paper rule", f"paper {unit}", "sparta rule", f"sparta {unit}"], rows),
        "",
        f"per selected position: paper {(PAPER.delta + PAPER.grad + PAPER.adam + PAPER.index) // 8} B, "
        f"sparta {per_pos} B",
        "adapter file on disk ("
        + ", ".join(f"{fmt}: {v(b)} {unit}" for fmt, b in acc.adapter_file.items())
        + f"; deltas and head in {s.dtype})",
    ]
    if acc.measured:
        m = acc.measured
        lines.append(
            f"measured training state (trainable params + grads + AdamW state + adapter buffers + head copy) "
            f"after one step: {m['measured']:,} B; predicted {m['predicted']:,.0f} B with the actual m = {m['m']:,} "
            f"(ratio {m['measured'] / m['predicted']:.4f}), {m['predicted_expected_m']:,.0f} B with the expected m"
        )
        lines.append(
            f"frozen weights: measured {m['frozen_measured']:,} B, predicted {m['frozen_predicted']:,.0f} B"
        )
    return "\n".join(lines)


def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)])
