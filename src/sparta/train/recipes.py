"""Which recipe trains a run: the objective says (`Objective.recipe`), this table maps it to the recipe module.

"steps" is the training loop over fixed examples (`sparta.train.loop`: classification, SFT, DPO); "rollouts" is
online reinforcement learning on the model's own samples (`sparta.train.grpo`). `sparta train`, `python -m
sparta.train` and the experiment runner call `train` here, so `--objective grpo` (or a task whose objective it
is, such as arithmetic) runs the GRPO recipe with no other change. A new recipe is one module and one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sparta.train import grpo, loop
from sparta.train.config import TrainConfig
from sparta.train.setup import choose_task

RECIPES: dict[str, Callable[..., dict[str, Any]]] = {"steps": loop.train, "rollouts": grpo.train}


def train(cfg: TrainConfig, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run `cfg` with its objective's recipe; returns the results dict (see `loop.train`, `grpo.train`)."""
    _, _, objective = choose_task(cfg, quiet=True)  # (the recipe logs its choice after the process count)
    return RECIPES[objective.recipe](cfg, on_step)
