"""Full fine-tuning: every parameter trains, embeddings included, as in the paper's Full FT ("all model
parameters are optimized"); a run keeps the whole model as a standard transformers directory. A causal LM's
head stays tied to its input embeddings unless --lm-head train unties it (then both train, separately)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from sparta.methods.base import Method, heads_of
from sparta.objectives.base import Heads


class Full(Method):
    name = "full"
    saves_model = True

    def apply(self, model: nn.Module, cfg: Any, objective: Any, heads: Heads | None = None) -> nn.Module:
        heads_of(
            model, cfg, objective, heads
        )  # (an LM head to train is untied first; everything trains anyway)
        model.requires_grad_(True)
        return model

    def save(self, model: nn.Module, directory: Path, cfg: Any) -> None:
        model.save_pretrained(str(directory))

    def load(self, base: nn.Module, directory: Path) -> nn.Module:
        return base  # the run's model/ directory is the model; the run layer loads it as any model directory
