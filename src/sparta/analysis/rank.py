"""Ranks of weight changes (paper Appendix A, Tables 7-8): full fine-tunes, PEFT LoRA and SpaRTA adapters.

For every 2-D weight present in both models with the same shape (names matched up to the task model's prefix:
``bert.encoder...`` in a classifier is ``encoder...`` in its base), the rank of W_ft - W_base is counted from the
singular values of the delta, computed exactly in float64 from the stored weights. Tensors are streamed one
pair at a time from (possibly sharded) safetensors files, so memory stays at a couple of matrices.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from sparta.analysis.sources import SafetensorsDir, check_adapter_base, match_names, resolve_inputs
from sparta.errors import SpartaError

RULES = ("torch", "storage")
_EPS = {
    "F64": torch.finfo(torch.float64).eps,
    "F32": torch.finfo(torch.float32).eps,
    "BF16": torch.finfo(torch.bfloat16).eps,
    "F16": torch.finfo(torch.float16).eps,
}
_LAYER = re.compile(r"^(.*?)\.(\d+)\.(.+)$")


# ---------------------------------------------------------------------------------------------- tolerance


def describe_rule(rule: str = "torch", tol: float | None = None) -> str:
    """The tolerance rule, in words, for the report."""
    if tol is not None:
        return f"rank = #singular values > {tol:g} x sigma_max (--tol)"
    if rule == "storage":
        return (
            "rank = #singular values > eps(stored dtype)/2 x ||W_ft||_F, a bound on the spectral norm of the rounding "
            "of W_ft to its stored dtype (bf16: eps = 2^-7): a lower bound on the rank of the change beyond storage rounding"
        )
    return (
        "rank = #singular values > max(rows, cols) x eps(float32) x sigma_max (torch.linalg.matrix_rank's default "
        "rtol for float32); deltas are computed exactly in float64 from the stored weights"
    )


def singular_values(delta: torch.Tensor, method: str = "svd") -> torch.Tensor:
    """Descending singular values in float64: "svd" (svdvals) or "gram" (sqrt of eigvalsh of the smaller Gram
    matrix: about 4x faster, accurate to ~sqrt(max(dims) * eps64) * sigma_max)."""
    d = delta.to(torch.float64)
    if method == "svd":
        return torch.linalg.svdvals(d)
    gram = d.T @ d if d.shape[0] >= d.shape[1] else d @ d.T
    return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).sqrt()


def rank_of(
    delta: torch.Tensor, rule: str = "torch", tol: float | None = None, noise_bound: float = 0.0
) -> tuple[int, float, float]:
    """(rank, sigma_max, threshold) of a 2-D delta. `noise_bound` is the absolute threshold of the storage rule.

    The Gram route is used when the threshold is well above its resolution, else an SVD."""
    if rule not in RULES:
        raise SpartaError(f"unknown tolerance rule {rule!r}; choose one of {', '.join(RULES)}")
    resolution = 100 * (max(delta.shape) * _EPS["F64"]) ** 0.5
    for method in ("gram", "svd"):
        sv = singular_values(delta, method)
        smax = float(sv[0]) if sv.numel() else 0.0
        if tol is not None:
            threshold = tol * smax
        elif rule == "storage":
            threshold = noise_bound
        else:
            threshold = max(delta.shape) * _EPS["F32"] * smax
        if threshold >= resolution * smax:
            break
    return int((sv > threshold).sum()), smax, threshold


# ---------------------------------------------------------------------------------------------- records


@dataclass
class RankRecord:
    """The rank of one weight change."""

    name: str
    shape: tuple[int, int]
    rank: int
    sigma_max: float
    threshold: float
    dtype: str = ""
    bound: int | None = None  # LoRA r: the rank cannot exceed it

    @property
    def deficiency(self) -> int:
        return min(self.shape) - self.rank

    def split(self) -> tuple[str, int | None]:
        """(matrix name without the layer index, layer) e.g. ('self_attn.q_proj', 3)."""
        stem = self.name.removesuffix(".weight")
        match = _LAYER.match(stem)
        return (match.group(3), int(match.group(2))) if match else (stem, None)


@dataclass
class RankReport:
    source: str  # "full" | "lora" | "sparta"
    base: str
    finetuned: str
    rule: str
    records: list[RankRecord] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def groups(self) -> list[dict[str, Any]]:
        """Rows like the paper's Tables 7-8: one per (matrix, dims, rank), with the layers it covers."""
        order: dict[str, int] = {}
        buckets: dict[tuple, list[RankRecord]] = {}
        for rec in sorted(self.records, key=lambda r: _natural(r.name)):
            matrix, _ = rec.split()
            order.setdefault(matrix, len(order))
            buckets.setdefault((matrix, rec.shape, rec.rank, rec.bound), []).append(rec)
        rows = []
        for (matrix, shape, rank, bound), recs in buckets.items():
            layers = sorted({r.split()[1] for r in recs if r.split()[1] is not None})
            rows.append(
                {
                    "matrix": matrix,
                    "dims": list(shape),
                    "layers": format_layers(layers),
                    "rank": rank,
                    "deficiency": min(shape) - rank,
                    "bound": bound,
                    "count": len(recs),
                }
            )
        rows.sort(key=lambda g: (order[g["matrix"]], g["dims"], g["rank"]))
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "base": self.base,
            "finetuned": self.finetuned,
            "tolerance": self.rule,
            "groups": self.groups(),
            "matrices": [{**asdict(r), "deficiency": r.deficiency} for r in self.records],
            "skipped": self.skipped,
        }

    def format(self) -> str:
        with_bound = any(r.bound is not None for r in self.records)
        head = ["weight matrix", "dims", "layer(s)", "rank", "rank deficiency"] + (
            ["r"] if with_bound else []
        )
        body = []
        for g in self.groups():
            deficiency = str(g["deficiency"]) + (
                " (full rank)" if g["deficiency"] == 0 else " (unchanged)" if g["rank"] == 0 else ""
            )
            row = [g["matrix"], f"[{g['dims'][0]}, {g['dims'][1]}]", g["layers"], str(g["rank"]), deficiency]
            body.append(row + ([str(g["bound"] if g["bound"] is not None else "-")] if with_bound else []))
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        lines = [
            f"delta ranks ({self.source}): {self.finetuned} vs {self.base}",
            f"tolerance: {self.rule}",
            "",
        ]
        for row in [head, ["-" * w for w in widths], *body]:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        skipped = ", ".join(f"{v} {k}" for k, v in self.skipped.items() if v)
        lines.append(f"{len(self.records)} matrices" + (f"; skipped: {skipped}" if skipped else ""))
        return "\n".join(lines)


def format_layers(layers: list[int]) -> str:
    """[0, 1, 2, 3, 5, 7, 8] -> '0-3,5,7,8' (runs of three or more merged, as in the paper's tables)."""
    if not layers:
        return "-"
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    parts = []
    for run in runs:
        parts += [f"{run[0]}-{run[-1]}"] if len(run) >= 3 else [str(x) for x in run]
    return ",".join(parts)


def _natural(name: str) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


# ---------------------------------------------------------------------------------------------- analyses


def full_model_ranks(
    base: str | Path, finetuned: str | Path, rule: str = "torch", tol: float | None = None
) -> RankReport:
    """Ranks of W_ft - W_base for every 2-D weight present in both model directories with the same shape."""
    b, f = SafetensorsDir(base, "base model"), SafetensorsDir(finetuned, "fine-tuned model")
    report = RankReport("full", str(base), str(finetuned), describe_rule(rule, tol))
    skipped = {"not 2-D": 0, "shape mismatch": 0, "only in one model": 0}
    pairs = match_names(f.names(), b.names())  # fine-tuned name -> base name
    skipped["only in one model"] = len(f.files) + len(b.files) - 2 * len(pairs)
    for name in sorted(pairs, key=_natural):
        base_name = pairs[name]
        shape = b.shape(base_name)
        if len(shape) != 2:
            skipped["not 2-D"] += 1
            continue
        if f.shape(name) != shape:
            skipped["shape mismatch"] += 1
            continue
        delta = f.get(name).to(torch.float64)  # W_ft, then W_ft - W_base in place (exact in float64)
        dtype = f.dtype(name)
        bound = (
            _EPS.get(dtype, _EPS["F32"]) / 2 * float(torch.linalg.matrix_norm(delta))
            if rule == "storage"
            else 0.0
        )
        delta.sub_(b.get(base_name))
        rank, smax, thr = rank_of(delta, rule, tol, bound)
        report.records.append(RankRecord(name, shape, rank, smax, thr, dtype))  # type: ignore[arg-type]
        del delta
    report.skipped = skipped
    if not report.records:
        raise SpartaError(
            f"no 2-D weight with the same name and shape in both {base} and {finetuned}; are they the same architecture?"
        )
    return report


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches the end of the module name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def lora_ranks(base: str | Path, adapter: str | Path, tol: float | None = None) -> RankReport:
    """Ranks of scaling * B @ A for every LoRA module of a PEFT adapter directory (each is at most r)."""
    config = _adapter_config(adapter)
    if config.get("use_dora"):
        raise SpartaError(
            "DoRA adapters change the weight norms as well; merge the adapter into the base "
            "(PeftModel.merge_and_unload + save_pretrained) and compare full models instead"
        )
    file = Path(adapter) / "adapter_model.safetensors"
    if not file.is_file():
        raise SpartaError(f"{adapter} has no adapter_model.safetensors (save the adapter with safetensors)")
    base_dir = SafetensorsDir(base, "base model")
    report = RankReport("lora", str(base), str(adapter), describe_rule("torch", tol))
    with safe_open(str(file), framework="pt") as fh:
        keys = list(fh.keys())
        a_keys = sorted((k for k in keys if ".lora_A." in k), key=_natural)
        for a_key in a_keys:
            b_key = a_key.replace(".lora_A.", ".lora_B.")
            if b_key not in keys:
                raise SpartaError(f"{file} has {a_key} but no {b_key}")
            a, b = fh.get_tensor(a_key).to(torch.float64), fh.get_tensor(b_key).to(torch.float64)
            if a.dim() != 2 or b.dim() != 2:
                continue  # convolution LoRA: not a matrix change
            module = a_key.split(".lora_A.")[0].removeprefix("base_model.model.")
            r = a.shape[0]
            alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", r))
            scaling = alpha / (r**0.5 if config.get("use_rslora") else r)
            delta = (b @ a) * scaling
            if config.get("fan_in_fan_out"):
                delta = delta.T
            name = f"{module}.weight"
            if name in base_dir.files and base_dir.shape(name) != tuple(delta.shape):
                raise SpartaError(
                    f"{name}: the adapter's change is {tuple(delta.shape)} but the base weight is "
                    f"{base_dir.shape(name)}; is {base} the adapter's base model?"
                )
            rank, smax, thr = rank_of(delta, "torch", tol)
            report.records.append(RankRecord(name, tuple(delta.shape), rank, smax, thr, "lora", bound=r))  # type: ignore[arg-type]
        report.skipped = {
            "non-LoRA tensors (e.g. modules_to_save)": len([k for k in keys if ".lora_" not in k])
        }
    if not report.records:
        raise SpartaError(f"{file} holds no LoRA matrices (lora_A/lora_B)")
    return report


def _load_sparse_deltas(adapter: Path) -> Iterator[tuple[str, tuple[int, ...], torch.Tensor]]:
    """The core's reader of SpaRTA adapters: (param_name, shape, dense delta) per adapted tensor."""
    from sparta.adapter.io import iter_dense_deltas

    yield from iter_dense_deltas(adapter)


def sparta_ranks(base: str | Path, adapter: str | Path, tol: float | None = None) -> RankReport:
    """Ranks of the dense deltas of a SpaRTA adapter (random sparse matrices: usually full rank), after checking
    that `base` is the adapter's base model (its stored fingerprint: names, shapes, sampled values)."""
    from sparta.adapter.io import read_adapter_config

    check_adapter_base(read_adapter_config(Path(adapter)), SafetensorsDir(base, "base model"), Path(adapter))
    report = RankReport("sparta", str(base), str(adapter), describe_rule("torch", tol))
    skipped = {"not 2-D": 0}
    for name, shape, delta in _load_sparse_deltas(Path(adapter)):
        if len(shape) != 2:
            skipped["not 2-D"] += 1
            continue
        rank, smax, thr = rank_of(delta, "torch", tol)
        report.records.append(RankRecord(name, tuple(shape), rank, smax, thr, "sparta"))  # type: ignore[arg-type]
    report.skipped = skipped
    if not report.records:
        raise SpartaError(f"the SpaRTA adapter {adapter} adapts no 2-D weight")
    return report


def _adapter_config(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads((Path(path) / "adapter_config.json").read_text())
    except (OSError, ValueError) as err:
        raise SpartaError(f"cannot read {Path(path) / 'adapter_config.json'}: {err}") from None


def delta_ranks(
    base: str | Path | None, finetuned: str | Path, rule: str = "torch", tol: float | None = None
) -> RankReport:
    """Dispatch: a PEFT LoRA adapter, a SpaRTA adapter, a full fine-tuned model directory, or a `sparta train` run
    dir holding one of them. `base=None`: the base model the run or the adapter records."""
    if rule not in RULES:
        raise SpartaError(f"unknown tolerance rule {rule!r}; choose one of {', '.join(RULES)}")
    if tol is not None and not tol > 0:
        raise SpartaError(f"--tol must be a positive relative tolerance, got {tol}")
    inputs = resolve_inputs(base, finetuned)
    if inputs.kind == "sparta":
        return sparta_ranks(inputs.base, inputs.finetuned, tol)
    if inputs.kind == "lora":
        return lora_ranks(inputs.base, inputs.finetuned, tol)
    return full_model_ranks(inputs.base, inputs.finetuned, rule, tol)
