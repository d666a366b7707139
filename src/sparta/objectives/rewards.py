"""Rewards for reinforcement learning on verifiable answers: a registry of built-ins, user functions, weights.

A reward function scores one sampled completion: ``fn(completion: str, reference: str, **info) -> float``, where
`info` holds ``prompt`` (the prompt's text), ``tokens`` (the completion's length in tokens), ``max_new_tokens``,
``truncated`` (it hit the limit without a stop token) and ``task`` (the `TaskSpec`); a function that does not
need them takes ``**info`` and ignores it. A run's reward is the weighted sum of its functions, given as
``--rewards exact,format=0.2,length=0.1,mypkg.rewards:brevity=0.5`` (NAME or MODULE:FUNCTION, optionally
``=WEIGHT``, default 1).

Built-ins (`REWARDS`):

* ``exact``: 1 when the completion's answer equals the reference's (the task's parser: GSM8K's final number,
  `sparta.tasks.gsm8k`, for the arithmetic task and GSM8K), else 0;
* ``format``: 1 when the completion states its answer as asked, a ``#### <number>`` line, and stopped by
  itself (not cut at the token limit), else 0;
* ``length``: -tokens / max_new_tokens, in [-1, 0]: a penalty for long completions (weight it, e.g. 0.1).

A reward that raises, or returns something that is not a finite real number, stops the run with one error
naming the function and the completion: a silent zero would train on a wrong signal.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sparta.errors import SpartaError
from sparta.tasks import exact_match
from sparta.tasks.gsm8k import MARKER, NUMBER

RewardFn = Callable[..., float]


def exact_reward(completion: str, reference: str, *, task: Any = None, **info: Any) -> float:
    """1.0 when the completion's answer matches the reference's (the task's answer parser), else 0.0."""
    return (
        float(exact_match(task, completion, reference))
        if task is not None
        else float(completion.strip() == reference.strip())
    )


def format_reward(completion: str, reference: str, *, truncated: bool = False, **info: Any) -> float:
    """1.0 when the completion has a '#### <number>' answer line and stopped by itself, else 0.0."""
    parts = completion.split(MARKER)[1:]
    stated = any(NUMBER.match(part.strip()) for part in parts)
    return float(stated and not truncated)


def length_reward(
    completion: str, reference: str, *, tokens: int = 0, max_new_tokens: int = 1, **info
) -> float:  # noqa: ANN003
    """-tokens / max_new_tokens: 0 for an empty completion, -1 for one that used the whole budget."""
    return -tokens / max(1, max_new_tokens)


REWARDS: dict[str, RewardFn] = {"exact": exact_reward, "format": format_reward, "length": length_reward}


@dataclass(frozen=True)
class Reward:
    """One term of a run's reward: its name (as given), function and weight."""

    name: str
    fn: RewardFn
    weight: float = 1.0


def parse_rewards(specs: Sequence[str] | None) -> list[Reward]:
    """The run's rewards from ``NAME[=WEIGHT]`` / ``MODULE:FUNCTION[=WEIGHT]`` items (module docstring)."""
    if not specs:
        raise SpartaError(
            f"reinforcement learning needs at least one reward: give --rewards (built-ins: "
            f"{', '.join(REWARDS)}; or MODULE:FUNCTION)"
        )
    out = []
    for item in specs:
        name, _, weight = str(item).strip().partition("=")
        name = name.strip()
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise SpartaError(f"reward {item!r}: weight {weight!r} is not a number (NAME=WEIGHT)") from None
        if not math.isfinite(w):
            raise SpartaError(f"reward {item!r}: the weight must be a finite number")
        if name in [r.name for r in out]:
            raise SpartaError(f"reward {name!r} is given twice; give each reward once with its weight")
        out.append(Reward(name, resolve_reward(name), w))
    return out


def resolve_reward(name: str) -> RewardFn:
    """A built-in reward by name, or a user function ``module:function`` imported now."""
    if name in REWARDS:
        return REWARDS[name]
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise SpartaError(
            f"unknown reward {name!r}; choose one of {', '.join(REWARDS)}, or give a function as "
            "MODULE:FUNCTION"
        )
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError as err:
        raise SpartaError(f"reward {name!r}: cannot import module {module!r} ({err})") from None
    except AttributeError:
        raise SpartaError(f"reward {name!r}: module {module!r} has no function {attr!r}") from None
    if not callable(fn):
        raise SpartaError(f"reward {name!r} is not a function")
    return fn


def score(
    rewards: Sequence[Reward],
    completions: Sequence[str],
    references: Sequence[str],
    infos: Sequence[dict[str, Any]],
) -> tuple[list[float], dict[str, list[float]]]:
    """(weighted total per completion, {reward name: its unweighted value per completion})."""
    parts: dict[str, list[float]] = {}
    for reward in rewards:
        values = []
        for i, (completion, reference, info) in enumerate(zip(completions, references, infos, strict=True)):
            try:
                value = reward.fn(completion, reference, **info)
            except Exception as err:  # a user function may raise anything: one clear error naming it
                raise SpartaError(
                    f"reward {reward.name!r} raised {type(err).__name__}: {err} (on completion {i}: "
                    f"{completion[:80]!r}); fix the function"
                ) from None
            if not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise SpartaError(
                    f"reward {reward.name!r} returned {value!r} (on completion {i}: "
                    f"{completion[:80]!r}); a reward must return a finite number"
                )
            values.append(float(value))
        parts[reward.name] = values
    totals = [sum(r.weight * parts[r.name][i] for r in rewards) for i in range(len(completions))]
    return totals, parts
