"""The reward registry: built-ins, weights, user functions, and one clear error for a broken reward."""

from __future__ import annotations

import pytest

from sparta.errors import SpartaError
from sparta.objectives.rewards import parse_rewards, score
from sparta.tasks import get_task

TASK = get_task("arithmetic")


def _info(tokens: int = 4, truncated: bool = False) -> dict:
    return {"prompt": "", "tokens": tokens, "max_new_tokens": 8, "truncated": truncated, "task": TASK}


def test_built_in_rewards_and_weights():
    rewards = parse_rewards(["exact", "format=0.5", "length=0.1"])
    completions = ["3 + 4 = 7\n#### 7", "It is 7.", "#### 8", "#### 7"]
    infos = [_info(8), _info(2), _info(4), _info(8, truncated=True)]
    totals, parts = score(rewards, completions, ["#### 7"] * 4, infos)
    assert parts == {
        "exact": [1.0, 1.0, 0.0, 1.0],
        "format": [1.0, 0.0, 1.0, 0.0],
        "length": [-1.0, -0.25, -0.5, -1.0],
    }
    assert totals == pytest.approx([1.4, 0.975, 0.45, 0.9])


def test_user_reward_and_its_errors():
    (good,) = parse_rewards(["tinyrewards:good=2"])
    assert good.weight == 2.0
    assert score([good], ["good movie good"], ["x"], [_info()])[0] == [4.0]
    for name, message in (
        ("tinyrewards:raises", "raised ValueError"),
        ("tinyrewards:not_a_number", "returned"),
    ):
        with pytest.raises(SpartaError, match=f"reward '{name}' {message}"):
            score(parse_rewards([name]), ["a"], ["b"], [_info()])
    with pytest.raises(SpartaError, match="cannot import module 'no_such_module'"):
        parse_rewards(["no_such_module:f"])
    with pytest.raises(SpartaError, match="given twice"):
        parse_rewards(["exact", "exact=2"])
