"""A verifiable arithmetic task generated from a seed: no data files, a difficulty knob, exact answers.

GSM8K is too hard for a 135M model to learn from its own samples (SmolLM2-135M-Instruct: 2.4% exact match
zero-shot), so reinforcement learning with verifiable rewards needs a task whose difficulty can be set to where
the base model is right some of the time. A problem is an integer expression,
evaluated with the usual precedence:

* difficulty 1: a + b, operands 1..9 (81 problems); 2: a + b, operands 1..20 (400);
* difficulty 3: a + b or a - b, operands 1..20; 4: the same, operands 1..99;
* difficulty 5: two operations among +, -, operands 1..50;
* difficulty d >= 6: d - 3 operations among +, -, * (exactly one *, its operands 2..12), the others 1..10 (d - 3).

The question asks for the value; the reference completion works it step by step and ends ``#### <value>``, so
the GSM8K answer parser (`sparta.tasks.gsm8k`) scores it. Each split is drawn from its own stream of the
task's `generator_seed`, among the problems that belong to that split: a stable hash of the question puts 70%
of all problems in train, 10% in dev and 20% in test, so held-out accuracy is on problems training never sees
(difficulty 1 has only 81 problems: its held-out splits repeat their few problems). The same seed and
difficulty give the same problems everywhere.
"""

from __future__ import annotations

import hashlib
import random

from sparta.errors import SpartaError

INSTRUCTION = "Compute the value. End your answer with a line '#### <number>'."
SPLIT_STREAMS = {"train": 0, "dev": 1, "test": 2}
MAX_DIFFICULTY = 8


def _operands_and_ops(rng: random.Random, difficulty: int) -> tuple[list[int], list[str]]:
    if difficulty <= 4:
        top = (9, 20, 20, 99)[difficulty - 1]
        return [rng.randint(1, top), rng.randint(1, top)], ["+" if difficulty <= 2 else rng.choice("+-")]
    if difficulty == 5:
        return [rng.randint(1, 50) for _ in range(3)], [rng.choice("+-") for _ in range(2)]
    n = difficulty - 3
    ops = [rng.choice("+-") for _ in range(n)]
    ops[rng.randrange(n)] = "*"
    nums = [rng.randint(1, 10 * n) for _ in range(n + 1)]
    star = ops.index("*")
    nums[star], nums[star + 1] = rng.randint(2, 12), rng.randint(2, 12)
    return nums, ops


def _worked(nums: list[int], ops: list[str]) -> tuple[str, int]:
    """(the step-by-step solution ending '#### value', the value): products first, then left to right."""
    nums, ops, lines = list(nums), list(ops), []
    while "*" in ops:
        k = ops.index("*")
        product = nums[k] * nums[k + 1]
        lines.append(f"{nums[k]} * {nums[k + 1]} = {product}")
        nums[k : k + 2], ops[k : k + 1] = [product], []
    value = nums[0]
    for op, n in zip(ops, nums[1:], strict=True):
        new = value + n if op == "+" else value - n
        lines.append(f"{value} {op} {n} = {new}")
        value = new
    return "\n".join([*lines, f"#### {value}"]), value


def problem(rng: random.Random, difficulty: int) -> dict[str, str]:
    """One problem row: {"question", "answer"} (prompt-completion, the answer worked and ending '#### N')."""
    nums, ops = _operands_and_ops(rng, difficulty)
    expression = " ".join([str(nums[0]), *(f"{op} {n}" for op, n in zip(ops, nums[1:], strict=True))])
    answer, _ = _worked(nums, ops)
    return {"question": f"What is {expression}? {INSTRUCTION}", "answer": answer}


def check_difficulty(difficulty: int) -> None:
    if not isinstance(difficulty, int) or not 1 <= difficulty <= MAX_DIFFICULTY:
        raise SpartaError(
            f"arithmetic difficulty must be an integer in 1..{MAX_DIFFICULTY}, got {difficulty!r}"
        )


def split_of(question: str) -> str:
    """The split a problem belongs to, fixed by its text: 20% test, 10% dev, 70% train (a stable hash)."""
    bucket = int(hashlib.sha256(question.encode()).hexdigest()[:8], 16) % 10
    return "test" if bucket < 2 else "dev" if bucket == 2 else "train"


def generate_splits(sizes: dict[str, int], difficulty: int, seed: int) -> dict[str, list[dict[str, str]]]:
    """{split: problems} for `sizes` ({"train": n, "dev": n, "test": n}), each drawn from its own stream of
    `seed` among the problems `split_of` gives that split: no held-out problem ever occurs in train."""
    check_difficulty(difficulty)
    out: dict[str, list[dict[str, str]]] = {}
    for split in ("train", "dev", "test"):
        rng = random.Random(f"sparta-arithmetic/{seed}/{difficulty}/{SPLIT_STREAMS[split]}")
        rows: list[dict[str, str]] = []
        while len(rows) < sizes.get(split, 0):
            row = problem(rng, difficulty)
            if split_of(row["question"]) == split:
                rows.append(row)
        out[split] = rows
    return out
