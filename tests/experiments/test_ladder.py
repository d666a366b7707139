"""experiments/ladder.py, the rate bracket the GSM8K and DPO drivers choose their rates with."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"  # scripts, not a package: run from there
sys.path.insert(0, str(EXPERIMENTS))
ladder = importlib.import_module("ladder")


def _bowl(best: float):  # noqa: ANN202
    """A dev loss lowest at `best`, and the rates it was asked for."""
    asked: list[float] = []

    def dev_loss(lr: float) -> float:
        asked.append(lr)
        return (math.log10(lr) - math.log10(best)) ** 2

    return dev_loss, asked


@pytest.mark.parametrize(
    ("best", "probed"),
    [
        (1e-3, [3e-4, 1e-3, 3e-3]),  # inside the start: three probes, a worse neighbour each side
        (1e-2, [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]),  # above: two more, until 1e-2 is bracketed
        (1e-5, [3e-4, 1e-3, 3e-3, 1e-4, 3e-5]),  # far below: stops after two more, at the lowest probed
    ],
)
def test_the_bracket_extends_past_an_end_at_most_twice(best, probed):
    dev_loss, asked = _bowl(best)
    chosen = ladder.choose_rate([3e-4, 1e-3, 3e-3], dev_loss)
    assert asked == probed and chosen == min(probed, key=dev_loss)
    if len(probed) < 5 or best == 1e-2:
        assert chosen == best


@pytest.mark.parametrize("driver", ["gsm8k_sft", "dpo_hh"])
def test_the_drivers_start_from_rates_of_the_ladder(driver):
    """Each driver's start rates lie on the ladder, which the bracket steps through."""
    start = importlib.import_module(driver).START
    assert set(start) == {"sparta", "lora", "full"}
    assert all(rate in ladder.LADDER for rates in start.values() for rate in rates)
