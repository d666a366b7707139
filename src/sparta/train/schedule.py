"""How many optimizer steps a run takes, and when it warms up and evaluates: the one place that computes it
(the training loop and the experiment runner's time estimates both use `Schedule.plan`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class Schedule:
    """How many optimizer steps a run takes, and when it warms up and evaluates."""

    global_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup: int
    eval_every: int

    @classmethod
    def plan(cls, cfg: Any, n_train: int, world: int) -> Schedule:
        """Each step takes a global batch of batch_size examples per process, times grad_accum."""
        global_batch = cfg.batch_size * world
        steps_per_epoch = max(1, math.ceil(math.ceil(n_train / global_batch) / cfg.grad_accum))
        total = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_ratio * total)
        return cls(global_batch, steps_per_epoch, total, warmup, cfg.eval_every or steps_per_epoch)
