"""Weight sync: what a training step's update costs to send to a separate generator, and the update itself.

In online RL the generator (vLLM, another process) must get the trained weights after every step; TRL pushes
every parameter. A SpaRTA generator holds W0 and knows phi (the positions are a function of the adapter's seed),
so an update is the m merged values W0[phi] + delta, and only the entries that changed since the last sync:
`DeltaSync.changes()` yields them per adapted weight (`WeightUpdate`: flat positions into that weight, the new
values in the weight's dtype; `positions_known` when they are all of phi, which costs no index bytes). A
generator applies one with ``weight.view(-1)[update.positions] = update.values``. `TrainableSync` is the same for
any other model: each trainable tensor that changed, whole (LoRA: its adapter tensors; full: every parameter).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

INDEX_BYTES = 4  # a position sent as int32


@dataclass
class WeightUpdate:
    """New values of one tensor at `positions` (flat, into the named weight); see the module docstring."""

    name: str
    positions: torch.Tensor
    values: torch.Tensor
    positions_known: bool

    @property
    def nbytes(self) -> int:
        index = 0 if self.positions_known else self.positions.numel() * INDEX_BYTES
        return self.values.numel() * self.values.element_size() + index


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of every parameter of `model` (what pushing the whole model costs)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


class DeltaSync:
    """The SpaRTA updates since the last sync of a `SpartaModel` (the generator starts at W0 and the original
    head: the first sync sends every delta that moved from zero)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._sent = {name: torch.zeros_like(d.detach()) for name, d in model.delta_parameters().items()}
        self._sent_heads = {name: p.detach().clone() for name, p in model._head_original.items()}

    @property
    def model_bytes(self) -> int:
        """Bytes of the base model's parameters (deltas excluded): a full-model push."""
        deltas = {id(d) for d in self.model.delta_parameters().values()}
        return sum(
            p.numel() * p.element_size() for p in self.model.base_model.parameters() if id(p) not in deltas
        )

    @torch.no_grad()
    def changes(self) -> Iterator[WeightUpdate]:
        """Yield the changed merged values of every adapted weight and head tensor, and mark them sent."""
        for target, holder in self.model._holders():
            delta = holder.sparta_delta.detach()
            changed = delta != self._sent[target.name]
            if not bool(changed.any()):
                continue
            flat = holder.sparta_flat
            if target.kind == "matrix":
                original, dtype = holder.sparta_orig, holder.weight.dtype
            else:  # a vector: W0 is the parametrization's original, never written
                module = self.model.base_model.get_submodule(target.module_name)
                weight = module.parametrizations[target.attr].original
                original, dtype = weight.detach().reshape(-1)[flat], weight.dtype
            merged = (original.to(delta.dtype) + delta).to(dtype)
            every = bool(changed.all())
            keep = slice(None) if every else changed
            yield WeightUpdate(target.name, flat[keep], merged[keep], positions_known=every)
            self._sent[target.name] = delta.clone()
        for name, p in self.model.head_parameters().items():
            if not torch.equal(p.detach(), self._sent_heads[name]):
                values = p.detach().reshape(-1).clone()
                yield WeightUpdate(name, torch.arange(values.numel(), device=values.device), values, True)
                self._sent_heads[name] = p.detach().clone()


class TrainableSync:
    """The trainable tensors of any model that changed since the last sync, whole (the first sync: since now)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._sent = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @property
    def model_bytes(self) -> int:
        return parameter_bytes(self.model)

    @torch.no_grad()
    def changes(self) -> Iterator[WeightUpdate]:
        for name, p in self.model.named_parameters():
            if name in self._sent and not torch.equal(p.detach(), self._sent[name]):
                values = p.detach().reshape(-1).clone()
                yield WeightUpdate(name, torch.arange(values.numel(), device=values.device), values, True)
                self._sent[name] = p.detach().clone()
