"""Schedule.plan: how many optimizer steps a run takes, its warmup and its evaluation interval."""

import pytest

from sparta.train.config import TrainConfig
from sparta.train.schedule import Schedule


@pytest.mark.parametrize(
    ("n_train", "batch", "accum", "world", "epochs", "steps_per_epoch", "total"),
    [
        (2000, 16, 1, 1, 1.0, 125, 125),  # the SST-2 acceptance runs
        (2001, 16, 1, 1, 1.0, 126, 126),  # a last, partial batch is a step of its own
        (100, 16, 2, 1, 1.0, 4, 4),  # 7 micro-batches -> 4 steps (the last one has a single micro-batch)
        (100, 8, 1, 2, 1.0, 7, 7),  # 2 processes: global batch 16
        (100, 16, 1, 1, 2.5, 7, 18),  # fractional epochs round up
    ],
)
def test_steps_follow_data_batch_accumulation_and_processes(
    n_train, batch, accum, world, epochs, steps_per_epoch, total
):
    cfg = TrainConfig(batch_size=batch, grad_accum=accum, epochs=epochs)
    plan = Schedule.plan(cfg, n_train, world)
    assert plan.global_batch == batch * world
    assert (plan.steps_per_epoch, plan.total_steps) == (steps_per_epoch, total)
    assert plan.eval_every == steps_per_epoch  # unset: once per epoch


def test_max_steps_warmup_and_eval_every_settings_win():
    plan = Schedule.plan(TrainConfig(max_steps=40, warmup_ratio=0.1, eval_every=5), 2000, 1)
    assert (plan.total_steps, plan.warmup, plan.eval_every) == (40, 4, 5)
    plan = Schedule.plan(TrainConfig(max_steps=40, warmup_ratio=0.1, warmup_steps=7), 2000, 1)
    assert plan.warmup == 7  # explicit warmup steps beat the ratio
    assert Schedule.plan(TrainConfig(warmup_ratio=0.1), 2000, 1).warmup == round(0.1 * 125)
