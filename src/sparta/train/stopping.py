"""Early stopping on dev loss, keeping a copy of the best trainable state: shared by the training loop and by the
head re-fit after a merge (`sparta.merging.refit`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from sparta.methods import trainable_state


@dataclass
class EarlyStopping:
    """Tracks the lowest dev loss and keeps a copy of the trainable tensors at that point."""

    patience: int | None
    best_loss: float = math.inf
    best_step: int | None = None
    best_metrics: dict = field(default_factory=dict)
    best_state: dict | None = None
    bad_evals: int = 0

    def update(self, model: nn.Module, step: int, metrics: dict, keep_state: bool) -> bool:
        """Record an evaluation; True when training should stop."""
        if metrics["loss"] < self.best_loss:
            self.best_loss, self.best_step, self.best_metrics = metrics["loss"], step, metrics
            self.best_state = trainable_state(model) if keep_state else None
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        return self.patience is not None and self.bad_evals >= self.patience

    def state(self) -> dict:
        return {k: getattr(self, k) for k in ("best_loss", "best_step", "best_metrics", "bad_evals")}
