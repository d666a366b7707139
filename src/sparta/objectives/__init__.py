"""Objectives: what training optimises and evaluation measures for one kind of task.

An objective is a small object with the same attributes for every kind (see `Classification` and the hooks of
`Objective`): how a split is encoded, the loss of a batch and what it is averaged over, the metrics of a split,
how a head starts, which modules train besides a method's targets, what `sparta.models.load_model` builds and
PEFT's task type. The training loop and the run layer ask it instead of testing task names, so a new kind of
task (language modelling, preference pairs) is one new module here and one line in `OBJECTIVES`.
"""

from __future__ import annotations

from sparta.errors import SpartaError
from sparta.objectives.base import Heads, Objective
from sparta.objectives.classification import Classification
from sparta.objectives.grpo import GRPO, PromptEncoded
from sparta.objectives.language_modelling import LanguageModelling, LMEncoded
from sparta.objectives.preference import PairEncoded, Preference

OBJECTIVES: dict[str, Objective] = {
    o.name: o for o in (Classification(), LanguageModelling(), Preference(), GRPO())
}
OBJECTIVE_NAMES = tuple(OBJECTIVES)


def get_objective(name: str):
    """The objective registered as `name`."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise SpartaError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}") from None


def objective_for(task, override: str | None = None) -> Objective:
    """The objective of a run: `override` (the run's --objective) if given, else the one the task names."""
    return get_objective(override or getattr(task, "objective", "classification"))


__all__ = [
    "OBJECTIVES",
    "OBJECTIVE_NAMES",
    "GRPO",
    "Classification",
    "Heads",
    "LMEncoded",
    "LanguageModelling",
    "Objective",
    "PairEncoded",
    "PromptEncoded",
    "Preference",
    "get_objective",
    "objective_for",
]
