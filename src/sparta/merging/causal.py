"""Merging language-modelling (SFT) adapters: their weighted deltas added into one causal LM, with no task heads.

``W = W0 + sum_i w_i * scatter(phi_i, delta_i)`` as for classifiers; an adapter whose run trained the LM head
fully adds its change of the head, ``w_i * (H_i - H0)``, and one that trained it sparsely adds its deltas there
like anywhere else. Either way the merged head is untied from the input embedding first, as those runs untied it
(`sparta.runs.untie_lm_head`). The merged directory is a plain ``AutoModelForCausalLM`` checkpoint (with the
tokenizer and a generation config that stops at end-of-turn) plus merged.json, whose task entries say where each
adapter came from; it opens with `sparta.runs.open_model` and generates.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparta.adapter.io import read_heads
from sparta.errors import SpartaError
from sparta.merging.sources import AdapterSource
from sparta.runs import untie_lm_head


def check_one_objective(sources: list[AdapterSource]) -> bool:
    """Whether the adapters are all SFT (language-modelling) adapters; a SpartaError when kinds are mixed."""
    kinds = {s.causal_lm for s in sources}
    if len(kinds) > 1:
        which = ", ".join(f"{s.name} ({s.objective})" for s in sources)
        raise SpartaError(
            f"cannot merge classification adapters with language-modelling (SFT) adapters ({which}): a merge is a "
            "multi-head classifier or one causal LM; merge each kind separately"
        )
    return kinds == {True}


def lm_head_name(model: nn.Module) -> str | None:
    """The parameter name of the model's LM head weight (e.g. "lm_head.weight")."""
    head = model.get_output_embeddings()
    return next((f"{n}.weight" for n, m in model.named_modules() if head is not None and m is head), None)


def prepare_lm_head(
    model: nn.Module, sources: list[AdapterSource], sparse: list[dict]
) -> torch.Tensor | None:
    """When an adapter changes the LM head (trained fully or sparsely), untie the head from the input embedding
    and return its pretrained weight, which fully trained heads are measured from; else None (nothing to do)."""
    name = lm_head_name(model)
    if name is None or not any(name in s.head or name in sp for s, sp in zip(sources, sparse, strict=True)):
        return None
    original = model.get_parameter(name).detach().clone()
    untie_lm_head(model)
    return original


@torch.no_grad()
def add_lm_heads(
    model: nn.Module, sources: list[AdapterSource], weights: list[float], original: torch.Tensor
) -> None:
    """Add ``w_i * (H_i - H0)`` to the LM head for each adapter that trained the head fully."""
    name = lm_head_name(model)
    param = model.get_parameter(name)
    for source, weight in zip(sources, weights, strict=True):
        if name in source.head:
            trained = read_heads(source.path)[name].to(param.dtype)
            param.add_(weight * (trained - original))


def lm_entry(source: AdapterSource, weight: float) -> dict[str, Any]:
    """The merged.json entry of one SFT adapter: where it came from, its task and input format, its deltas."""
    info, doc = source.info, source.document
    return {
        "name": source.name,
        "source": str((source.run_dir or source.path).resolve()),
        "weight": weight,
        "task": info.get("task"),  # get_task arguments; None for a bare adapter
        "instruct": info.get("instruct"),  # None for a bare adapter: the base model's own
        "template": info.get("template"),
        "padding_side": info.get("padding_side", "right"),
        "max_length": info.get("max_length"),
        "loss_on": info.get("loss_on"),
        "lm_head": info.get("lm_head", "frozen" if not source.head else "train"),
        "seed": info.get("seed", doc["config"]["seed"]),
        "adapter_seed": doc["config"]["seed"],
        "density": doc["config"]["density"],
        "deltas": source.count,
    }
