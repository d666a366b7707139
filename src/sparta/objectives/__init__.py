"""Objectives: what training optimises and evaluation measures for one kind of task.

An objective is a small object with the same attributes for every kind (see `Classification`): how a split is
encoded, the loss of a batch and what it is averaged over, the metrics of a split, how a head starts, what
`sparta.models.load_model` builds and PEFT's task type. The training loop and the run layer ask it instead of
testing task names, so a new kind of task (language modelling, preference pairs) is one new module here and one
line in `OBJECTIVES`.
"""

from __future__ import annotations

from sparta.errors import SpartaError
from sparta.objectives.classification import Classification

OBJECTIVES = {"classification": Classification()}


def get_objective(name: str):
    """The objective registered as `name`."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise SpartaError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}") from None


def objective_for(task) -> object:
    """The objective a task implies (every built-in and custom task classifies today)."""
    return get_objective(getattr(task, "objective", "classification"))


__all__ = ["OBJECTIVES", "Classification", "get_objective", "objective_for"]
