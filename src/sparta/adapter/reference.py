"""The paper's Algorithm 1, written plainly, as the yardstick for the fast path in tests.

Each step: merge (theta_phi += delta), forward and backward with an ordinary dense weight gradient, gather the
gradient at phi, unmerge (theta_phi -= delta, outside the graph), then the optimizer updates delta. It
materialises a dense gradient per adapted weight and unmerges by subtracting: exactly what SpartaLinear avoids.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class ReferenceSparta:
    """Algorithm 1 on a plain model, for the weights named in `indices` ({param name: flat int64 positions})."""

    def __init__(self, model: nn.Module, indices: dict[str, torch.Tensor], head_params: list[str] = ()):
        self.model = model
        self.indices = {name: idx.to(torch.int64) for name, idx in indices.items()}
        self.weights = {name: model.get_parameter(name) for name in self.indices}
        self.deltas = {
            name: torch.zeros(idx.numel(), dtype=torch.float32, device=idx.device, requires_grad=True)
            for name, idx in self.indices.items()
        }
        for p in model.parameters():
            p.requires_grad_(False)
        for w in self.weights.values():
            w.requires_grad_(True)  # Algorithm 1 back-propagates into the (merged) weights
        self.head = [model.get_parameter(n) for n in head_params]
        for p in self.head:
            p.requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.deltas.values()) + self.head

    def forward_backward(self, loss_fn: Callable[[nn.Module], torch.Tensor]) -> torch.Tensor:
        """Steps 1-4 of Algorithm 1: merge, loss, gradients w.r.t. delta, unmerge. Returns the loss."""
        with torch.no_grad():
            for name, w in self.weights.items():
                w.view(-1)[self.indices[name]] += self.deltas[name].to(w.dtype)
        loss = loss_fn(self.model)
        loss.backward()
        with torch.no_grad():
            for name, w in self.weights.items():
                grad = w.grad.reshape(-1)[self.indices[name]].float()
                delta = self.deltas[name]
                delta.grad = grad if delta.grad is None else delta.grad + grad
                w.grad = None
                w.view(-1)[self.indices[name]] -= delta.to(w.dtype)
        return loss.detach()
