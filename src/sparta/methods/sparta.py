"""SpaRTA: sparse deltas on a random `density` of each targeted weight, plus the fully trained head.

The run's `index_seed` (default: its `seed`) picks phi; adapters meant to be merged are trained with different
index seeds so that their positions barely overlap. Files: `adapter_config.json` + `adapter_model.safetensors`
(`sparta.adapter.io`), with the run's index encoding and delta precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparta.adapter import native
from sparta.adapter.config import ALL_LINEAR, DTYPE_NAMES, INDEX_FORMATS, SpartaConfig, check_density
from sparta.adapter.model import SpartaModel, get_sparta_model
from sparta.methods.base import Method, TargetOptions, heads_of, targets_of
from sparta.objectives.base import Heads
from sparta.options import option


@dataclass
class SpartaOptions(TargetOptions):
    """SpaRTA's options: how many of each target's weights train, where they are, how the adapter is saved."""

    density: float = option(
        0.005, group="method", help="SpaRTA: fraction of each targeted weight that is trainable"
    )
    index_seed: int | None = option(
        None,
        group="run",
        help="seed of the SpaRTA index sampling when it should differ from --seed (e.g. adapters meant for merging)",
    )
    save_index_format: str = option(
        "seed",
        group="method",
        choices=INDEX_FORMATS,
        help="SpaRTA adapter index encoding (seed: regenerated from the seed, no index bytes)",
    )
    save_delta_dtype: str = option(
        "float32", group="method", choices=DTYPE_NAMES, help="SpaRTA adapter delta/head precision on disk"
    )

    def validate(self) -> None:
        check_density(self.density)


class Sparta(Method):
    name = "sparta"
    default_targets = (ALL_LINEAR,)
    adapts_sparse_heads = True  # an extra SpaRTA target (--lm-head sparse)
    uses_density = True
    sparse_adapter = True
    options = SpartaOptions

    def apply(self, model: nn.Module, cfg: Any, objective: Any, heads: Heads | None = None) -> nn.Module:
        heads = heads_of(model, cfg, objective, heads)
        targets = targets_of(cfg, self)
        # a sparse LM head is one more target (beside "all-linear", which means the Linears inside the blocks)
        extra = [name for name in heads.sparse if name not in targets]
        config = SpartaConfig(
            density=cfg.density,
            target_modules=ALL_LINEAR if targets == [ALL_LINEAR] and not extra else targets + extra,
            seed=cfg.seed if cfg.index_seed is None else cfg.index_seed,
            head_modules=list(heads.full),
        )
        return get_sparta_model(model, config)

    def save(self, model: nn.Module, directory: Path, cfg: Any) -> None:
        index_format = cfg.save_index_format if cfg is not None else "seed"
        delta_dtype = cfg.save_delta_dtype if cfg is not None else "float32"
        model.save_pretrained(directory, index_format=index_format, delta_dtype=delta_dtype)

    def load(self, base: nn.Module, directory: Path) -> nn.Module:
        return SpartaModel.from_pretrained(base, str(directory))

    def describe(self, model: nn.Module, device: torch.device) -> list[str]:
        return [f"delta-gradient kernel: {native.status()}"] if device.type == "cpu" else []

    def weight_sync(self, model: nn.Module) -> Any:
        """The changed deltas as merged values at phi (positions known from the seed: `DeltaSync`)."""
        from sparta.adapter.sync import DeltaSync

        return DeltaSync(model)

    @contextlib.contextmanager
    def reference(self, model: nn.Module) -> Iterator[nn.Module]:
        """The same model with its adapter disabled: W0 at phi and the original head, restored on exit."""
        with model.disable_adapter():
            yield model
