"""The merged multi-head model: one backbone (the bare transformer of the merged checkpoint) and one linear head
per task, each reading the final hidden state of the last real token of its task's input, as in training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel

from sparta.errors import SpartaError
from sparta.fileio import read_json
from sparta.models import quiet_transformers
from sparta.runs.layout import MERGED_FILE, MERGED_FORMAT


def read_merged(path: str | Path) -> dict[str, Any]:
    """A merged directory's merged.json, checked to be one."""
    file = Path(path) / MERGED_FILE
    if not file.is_file():
        raise SpartaError(f"{path} is not a merged model directory ({MERGED_FILE} is missing)")
    document = read_json(file)
    if document.get("kind") != "sparta-merged" or document.get("format") != MERGED_FORMAT:
        raise SpartaError(f"{file} is not a sparta merged-model description (format {MERGED_FORMAT})")
    return document


def pool_last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state (B, d) of each row's last position where `mask` is 1 (right or left padding)."""
    positions = torch.arange(mask.shape[-1], device=mask.device)
    last = (positions * mask.to(positions.dtype)).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def load_head(file: str | Path, dtype: torch.dtype = torch.float32) -> nn.Linear:
    """A linear head from a safetensors file of "weight" (C, d) and optionally "bias" (C,)."""
    tensors = load_file(str(file))
    weight = tensors["weight"]
    head = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in tensors, dtype=dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
        if "bias" in tensors:
            head.bias.copy_(tensors["bias"])
    return head


class MultiHeadModel(nn.Module):
    """A merged backbone (bare transformer) and one linear head per task: forward -> {task: logits}."""

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Linear], pad_token_id: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.pad_token_id = pad_token_id

    @classmethod
    def from_dir(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> MultiHeadModel:
        path = Path(path)
        document = read_merged(path)
        with quiet_transformers():
            backbone = AutoModel.from_pretrained(str(path), dtype=dtype)
        heads = {task["name"]: load_head(path / task["head_file"], dtype) for task in document["tasks"]}
        return cls(backbone, heads, document.get("pad_token_id")).eval()

    def pooled(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw
    ) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = (
                (input_ids != self.pad_token_id).long() if self.pad_token_id is not None else None
            )
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        return pool_last(hidden, mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        tasks: list[str] | None = None,
        **kw,
    ) -> dict[str, torch.Tensor]:
        """One backbone pass; every head (or those in `tasks`) applied to the pooled state."""
        pooled = self.pooled(input_ids, attention_mask, **kw)
        return {t: self.heads[t](pooled) for t in (tasks or list(self.heads))}
