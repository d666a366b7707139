"""Head only: every pretrained weight frozen, only the classification head trains (with an encoder's pooler,
which belongs to its head); its tensors are saved as one small safetensors file, by parameter name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sparta.adapter.targets import in_head
from sparta.errors import SpartaError
from sparta.methods.base import Method, one_line
from sparta.objectives.base import Heads
from sparta.objectives.heads import get_head

HEAD_FILE = "head.safetensors"


class Head(Method):
    name = "head"
    trains_head_only = True

    def apply(self, model: nn.Module, cfg: Any, objective: Any, heads: Heads | None = None) -> nn.Module:
        self.check(cfg, objective)
        model.requires_grad_(False)
        get_head(model).requires_grad_(True)
        for name, module in model.named_modules():
            if name and in_head(name, list(objective.head_modules)):
                module.requires_grad_(True)
        return model

    def save(self, model: nn.Module, directory: Path, cfg: Any) -> None:
        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(directory / HEAD_FILE))

    def load(self, base: nn.Module, directory: Path) -> nn.Module:
        try:
            tensors = load_file(str(directory / HEAD_FILE))
        except Exception as err:
            raise SpartaError(f"cannot load the head in {directory / HEAD_FILE}: {one_line(err)}") from None
        if set(tensors) == {
            "weight"
        }:  # files written before heads were saved by name: the head's weight alone
            tensors = {_name_of(base, get_head(base).weight): tensors["weight"]}
        params = dict(base.named_parameters())
        for name, value in tensors.items():
            if name not in params or params[name].shape != value.shape:
                have = tuple(params[name].shape) if name in params else "no such tensor"
                raise SpartaError(
                    f"{directory / HEAD_FILE} holds {name} {tuple(value.shape)}; this model has {have}: "
                    "load the base model the run was trained on, with its number of labels"
                )
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value.to(params[name].dtype))
        return base


def _name_of(model: nn.Module, param: nn.Parameter) -> str:
    return next(n for n, p in model.named_parameters() if p is param)
