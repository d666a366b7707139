"""Which tensors of a model SpaRTA adapts: the targeted Linear weights (optionally their biases and the norms
inside the transformer blocks), never the heads, each with its density."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from sparta.adapter.config import ALL_LINEAR, SpartaConfig, _compile, _matches
from sparta.errors import SpartaError

try:  # GPT-2 style transposed linear layers
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency
    Conv1D = ()  # type: ignore[assignment,misc]

LINEAR_TYPES = (nn.Linear, Conv1D) if Conv1D else (nn.Linear,)


@dataclass
class AdaptedParam:
    """One sparsely adapted tensor: `name` is the parameter's name in the base model."""

    name: str
    module_name: str
    attr: str  # "weight" or "bias"
    shape: tuple[int, ...]
    density: float
    kind: str  # "matrix" (SpartaLinear) or "vector" (SparseVectorDelta)


def _block_module_names(model: nn.Module) -> set[str]:
    """Names of modules that live inside a transformer block (a descendant of an nn.ModuleList)."""
    inside: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            inside.update(f"{name}.{sub}" if sub else name for sub, _ in module.named_modules() if sub)
    return inside


def is_head(name: str, heads: list[str]) -> bool:
    """Whether module `name` is one of the fully trained heads (`SpartaConfig.head_modules`)."""
    return any(_matches(h, name) for h in heads)


def in_head(name: str, heads: list[str]) -> bool:
    """Whether module `name` is a head or lies inside one (a head's own Linear layers are never sparse targets)."""
    parts = name.split(".")
    return any(is_head(".".join(parts[:i]), heads) for i in range(1, len(parts) + 1))


def _is_linear(module: nn.Module) -> bool:
    """A Linear or Conv1D layer, or a SpaRTA layer wrapping one (so an adapted model can take another adapter)."""
    return isinstance(module, LINEAR_TYPES) or isinstance(getattr(module, "base_layer", None), LINEAR_TYPES)


def check_target_names(names: list[str], linear_names: list[str]) -> None:
    """A SpartaError naming the targets that match no Linear module, and the Linear names there are (the one
    "targets match nothing" message, for SpaRTA and for the PEFT methods alike)."""
    unmatched = [t for t in names if not any(_matches(t, n) for n in linear_names)]
    if unmatched:
        suffixes = sorted({re.sub(r"^.*\.", "", n) for n in linear_names})
        raise SpartaError(
            f"target_modules {unmatched} match no Linear module; Linear module names available: "
            f"{', '.join(suffixes) or '(none)'}"
        )


def find_targets(model: nn.Module, config: SpartaConfig) -> list[AdaptedParam]:
    """The tensors SpaRTA adapts for `config`, in model order; a SpartaError if the targets match nothing."""
    in_blocks = _block_module_names(model)
    linear = [
        (n, m) for n, m in model.named_modules() if _is_linear(m) and not in_head(n, config.head_modules)
    ]
    if config.target_modules == ALL_LINEAR:
        chosen = [(n, m) for n, m in linear if n in in_blocks]
    elif isinstance(config.target_modules, list):
        # "all-linear" in a list: the Linears inside the blocks, plus the modules the other names match
        names = [t for t in config.target_modules if t != ALL_LINEAR]
        blocks = len(names) < len(config.target_modules)
        chosen = [
            (n, m) for n, m in linear if (blocks and n in in_blocks) or any(_matches(t, n) for t in names)
        ]
        check_target_names(names, [n for n, _ in linear])
    else:
        pattern = _compile(config.target_modules)
        chosen = [(n, m) for n, m in linear if pattern.fullmatch(n)]
    if not chosen:
        raise SpartaError(
            f"target_modules {config.target_modules!r} match no Linear module; {_available(linear)}"
        )
    targets = []
    for name, module in chosen:
        density = config.density_for(name)
        targets.append(
            AdaptedParam(f"{name}.weight", name, "weight", tuple(module.weight.shape), density, "matrix")
        )
        if config.include_biases and getattr(module, "bias", None) is not None:
            targets.append(
                AdaptedParam(f"{name}.bias", name, "bias", tuple(module.bias.shape), density, "vector")
            )
    if config.include_norms:
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            is_norm = "norm" in type(module).__name__.lower()
            if name in in_blocks and is_norm and isinstance(weight, nn.Parameter) and weight.dim() == 1:
                density = config.density_for(name)
                targets.append(
                    AdaptedParam(f"{name}.weight", name, "weight", tuple(weight.shape), density, "vector")
                )
    return targets


def _available(linear: list[tuple[str, nn.Module]]) -> str:
    suffixes = sorted({re.sub(r"^.*\.", "", n) for n, _ in linear})
    return f"Linear module names available: {', '.join(suffixes) or '(none)'}"
