"""Metrics against hand-computed cases and independent formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparta.errors import SpartaError
from sparta.tasks import compute_metrics
from sparta.tasks.metrics import f1_score, matthews_corrcoef

LABELS = [1, 1, 1, 0, 0, 0, 1, 0]
PREDS = [1, 0, 1, 0, 1, 0, 1, 1]  # tp=3, fn=1, tn=2, fp=2


def test_binary_cases_by_hand():
    out = compute_metrics("cola", PREDS, LABELS)
    assert set(out) == {"accuracy", "mcc"}
    assert out["accuracy"] == pytest.approx(5 / 8)
    assert out["mcc"] == pytest.approx((3 * 2 - 2 * 1) / math.sqrt(5 * 4 * 4 * 3))
    out = compute_metrics("mrpc", PREDS, LABELS, loss=0.25)
    assert out == pytest.approx({"accuracy": 5 / 8, "f1": 2 * 3 / (2 * 3 + 2 + 1), "loss": 0.25})
    assert set(compute_metrics("sst2", PREDS, LABELS)) == {"accuracy"}


def test_degenerate_cases():
    y = np.array([0, 1, 1, 0])
    assert matthews_corrcoef(y, y) == pytest.approx(1.0)
    assert matthews_corrcoef(y, 1 - y) == pytest.approx(-1.0)
    assert matthews_corrcoef(y, np.ones(4, dtype=int)) == 0.0  # constant predictions
    assert f1_score(np.zeros(4, dtype=int), np.zeros(4, dtype=int)) == 0.0  # no positives anywhere
    assert f1_score(y, y) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_mcc_matches_correlation_of_one_hot(seed):
    """Multi-class MCC equals the Pearson correlation of the one-hot label and prediction matrices."""
    rng = np.random.default_rng(seed)
    labels, preds = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    preds[:20] = labels[:20]
    x, y = np.eye(3)[labels], np.eye(3)[preds]
    x, y = x - x.mean(0), y - y.mean(0)
    expected = (x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum())
    assert compute_metrics("mnli", preds, labels)["accuracy"] == pytest.approx(np.mean(preds == labels))
    assert matthews_corrcoef(labels, preds) == pytest.approx(expected)


def test_logits_and_tensors():
    logits = torch.tensor([[2.0, -1.0], [0.1, 0.3], [-3.0, 4.0], [1.0, 0.0]], dtype=torch.bfloat16)
    labels = torch.tensor([0, 0, 1, 1])
    assert compute_metrics("qqp", logits, labels) == pytest.approx({"accuracy": 0.5, "f1": 0.5})
    assert compute_metrics("sst2", np.array([1.0, 0.0]), [1, 1])["accuracy"] == 0.5  # integral floats are ids


def test_errors():
    with pytest.raises(SpartaError, match="3 predictions for 2 labels"):
        compute_metrics("sst2", [1, 0, 1], [1, 0])
    with pytest.raises(SpartaError, match="non-zero"):
        compute_metrics("sst2", [], [])
    with pytest.raises(SpartaError, match="shape"):
        compute_metrics("sst2", np.zeros((2, 2, 2)), [0, 1])
    with pytest.raises(SpartaError, match="integer predictions"):
        compute_metrics("sst2", [0.2, 0.7], [0, 1])
