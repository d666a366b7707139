"""Head only: every pretrained weight frozen, only the classification head trains (saved as one small file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sparta.errors import SpartaError
from sparta.methods.base import Method, one_line
from sparta.objectives.heads import get_head

HEAD_FILE = "head.safetensors"


class Head(Method):
    name = "head"

    def apply(self, model: nn.Module, cfg: Any, objective: Any) -> nn.Module:
        model.requires_grad_(False)
        get_head(model).requires_grad_(True)
        return model

    def save(self, model: nn.Module, directory: Path, cfg: Any) -> None:
        save_file({"weight": get_head(model).weight.detach().contiguous().cpu()}, str(directory / HEAD_FILE))

    def load(self, base: nn.Module, directory: Path) -> nn.Module:
        head = get_head(base)
        try:
            weight = load_file(str(directory / HEAD_FILE))["weight"]
        except Exception as err:
            raise SpartaError(f"cannot load the head in {directory / HEAD_FILE}: {one_line(err)}") from None
        if weight.shape != head.weight.shape:
            raise SpartaError(
                f"{directory / HEAD_FILE} holds a {tuple(weight.shape)} head; "
                f"this model needs {tuple(head.weight.shape)}"
            )
        with torch.no_grad():
            head.weight.copy_(weight.to(head.weight.dtype))
        return base
