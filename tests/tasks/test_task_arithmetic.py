"""The generated arithmetic task: reproducible from its seed, held-out problems never in train, answers right."""

from __future__ import annotations

import pytest

from sparta.errors import SpartaError
from sparta.tasks import get_task, load_splits
from sparta.tasks.arithmetic import split_of
from sparta.tasks.gsm8k import extract_answer


@pytest.mark.parametrize("difficulty", [1, 2, 3, 5, 6, 8])
def test_answers_are_the_value_of_the_expression(difficulty):
    splits = load_splits(
        get_task("arithmetic", difficulty=difficulty, train_cap=200, dev_size=20, test_size=30)
    )
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [200, 20, 30]
    for row in splits["train"] + splits["test"]:
        expression = row["question"].removeprefix("What is ").split("?")[0]
        assert set(expression) <= set("0123456789+-* ")
        assert extract_answer(row["answer"]) == str(eval(expression))  # noqa: S307 - digits and + - * only


def test_splits_are_reproducible_and_held_out_problems_never_occur_in_train():
    task = get_task("arithmetic", difficulty=3, train_cap=2000, dev_size=100, test_size=200)
    a, b = load_splits(task), load_splits(task)
    assert a == b
    train = {r["question"] for r in a["train"]}
    assert not train & {r["question"] for r in a["dev"] + a["test"]}
    assert all(split_of(r["question"]) == "test" for r in a["test"])
    other = load_splits(get_task("arithmetic", difficulty=3, train_cap=2000, generator_seed=1))
    assert other["train"] != a["train"]


def test_difficulty_out_of_range_is_an_error():
    with pytest.raises(SpartaError, match="difficulty must be an integer in 1..8"):
        get_task("arithmetic", difficulty=0)
