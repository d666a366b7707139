"""How many optimizer steps a run takes, when it warms up and when it evaluates: computed here once.

The training loop plans its run with `Schedule.plan`, and the experiment runner's time estimates and the density
search use the same function, so their step counts cannot drift apart (a last, partial batch is a step of its own;
fractional epochs round up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sparta.train.config import TrainConfig


@dataclass
class Schedule:
    """How many optimizer steps a run takes, and when it warms up and evaluates."""

    global_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup: int
    eval_every: int

    @classmethod
    def plan(cls, cfg: TrainConfig, n_train: int, world: int = 1) -> Schedule:
        """Each step takes a global batch of batch_size examples per process, times grad_accum."""
        global_batch = cfg.batch_size * world
        steps_per_epoch = max(1, math.ceil(math.ceil(n_train / global_batch) / cfg.grad_accum))
        total = (
            cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(steps_per_epoch * cfg.epochs))
        )
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_ratio * total)
        return cls(global_batch, steps_per_epoch, total, warmup, cfg.eval_every or steps_per_epoch)

    @property
    def evaluations(self) -> int:
        """Dev evaluations of a run that does not stop early (every `eval_every` steps and after the last)."""
        return math.ceil(self.total_steps / self.eval_every)
