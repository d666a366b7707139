"""Directories written by sparta before the architecture change (tests/fixtures/v1, made at commit 1bb09b3) still
load and give the same probabilities: every method's run dir, a merged multi-head model and an export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sparta.runs import examples_from_texts, open_model, predict, predict_tasks

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v1"


def _close(a: list[list[float]], b: list[list[float]]) -> bool:
    return all(
        math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7)
        for ra, rb in zip(a, b, strict=True)
        for x, y in zip(ra, rb, strict=True)
    )


EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED["runs"]))
def test_v1_run_dirs_load_and_give_the_same_probabilities(v1_dir, name):
    run = open_model(v1_dir / name, device="cpu")
    preds = predict(run, examples_from_texts(run.task, EXPECTED["texts"]))
    got = [[p["probabilities"][k] for k in run.task.label_names] for p in preds]
    assert _close(got, EXPECTED["runs"][name])


def test_v1_merged_model_loads_and_gives_the_same_probabilities(v1_dir):
    merged = open_model(v1_dir / "merged", device="cpu")
    got: dict[str, list] = {}
    for p in predict_tasks(merged, EXPECTED["texts"]):
        for task, v in p.items():
            got.setdefault(task, []).append(list(v["probabilities"].values()))
    assert set(got) == set(EXPECTED["merged"])
    for task, rows in got.items():
        assert _close(rows, EXPECTED["merged"][task])
