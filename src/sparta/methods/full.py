"""Full fine-tuning: every parameter trains, embeddings included, as in the paper's Full FT ("all model
parameters are optimized"); a run keeps the whole model as a standard transformers directory. A causal LM's
head stays tied to its input embeddings unless --lm-head train unties it (then both train, separately)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
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

    def keep_reference(self, model: nn.Module, reference: nn.Module | None = None) -> None:
        """A frozen copy of the whole model (or `reference`, the model it was trained from), held outside its
        modules (not a parameter, not in its state)."""
        if reference is not None:
            model.__dict__["_sparta_reference"] = reference.requires_grad_(False).eval()
        elif "_sparta_reference" not in model.__dict__:
            frozen = copy.deepcopy(model).requires_grad_(False).eval()
            model.__dict__["_sparta_reference"] = frozen

    @contextlib.contextmanager
    def reference(self, model: nn.Module) -> Iterator[nn.Module]:
        """The frozen copy `keep_reference` made; without one, the model itself, which is the reference only
        before its first step (what `--precompute-reference` uses, so that no copy is ever made)."""
        yield model.__dict__.get("_sparta_reference", model)
