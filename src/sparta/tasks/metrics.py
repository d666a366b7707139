"""Classification metrics in numpy: accuracy, Matthews correlation (CoLA) and binary F1 (MRPC, QQP); and the
exact match of a generated answer for language-modelling tasks (GSM8K: the final numbers)."""

from __future__ import annotations

import numpy as np

from sparta.errors import SpartaError
from sparta.tasks.gsm8k import answers_match
from sparta.tasks.specs import LANGUAGE_MODELLING, TaskSpec, get_task


def _array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, any dtype or device
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    return float(np.mean(labels == preds))


def matthews_corrcoef(labels: np.ndarray, preds: np.ndarray) -> float:
    """Multi-class MCC (Gorodkin's R_K, as scikit-learn); 0 when a marginal is constant."""
    k = int(max(labels.max(), preds.max())) + 1
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (labels, preds), 1)
    t, p, c, s = cm.sum(1), cm.sum(0), np.trace(cm), cm.sum()
    denom = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denom) if denom > 0 else 0.0


def f1_score(labels: np.ndarray, preds: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive class; 0 when there are no positive labels or predictions."""
    tp = np.sum((preds == positive) & (labels == positive))
    fp = np.sum((preds == positive) & (labels != positive))
    fn = np.sum((preds != positive) & (labels == positive))
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn > 0 else 0.0


_METRICS = {"accuracy": accuracy, "mcc": matthews_corrcoef, "f1": f1_score}


def compute_metrics(
    task: str | TaskSpec, logits_or_preds, labels, loss: float | None = None
) -> dict[str, float]:
    """The task's metrics (fractions, not percent) from logits (N, C) or predicted ids (N,) and labels (N,);
    ``loss`` is passed through as "loss" when given."""
    task = get_task(task)
    if task.objective == LANGUAGE_MODELLING:
        raise SpartaError(
            f"task {task.name!r} is a language-modelling task: its loss and exact match come from its objective "
            "(sparta.objectives), not from compute_metrics"
        )
    preds, labels = _array(logits_or_preds), _array(labels).reshape(-1)
    if preds.ndim == 2:
        preds = preds.argmax(-1)
    elif preds.ndim != 1 or (preds.size and not np.all(np.mod(preds, 1) == 0)):
        raise SpartaError(
            f"compute_metrics needs logits of shape (N, C) or integer predictions (N,), got shape {preds.shape}"
        )
    if preds.shape != labels.shape or preds.size == 0:
        raise SpartaError(
            f"compute_metrics got {preds.size} predictions for {labels.size} labels; need the same, non-zero number"
        )
    preds, labels = preds.astype(np.int64), labels.astype(np.int64)
    out = {m: _METRICS[m](labels, preds) for m in task.metrics}
    if loss is not None:
        out["loss"] = float(loss)
    return out


def exact_match(task: str | TaskSpec, prediction: str, reference: str) -> bool:
    """Whether a generated answer matches the reference: by final number for a task whose ``answer_parser`` is
    "gsm8k" (`sparta.tasks.gsm8k.answers_match`), else as text with surrounding whitespace stripped."""
    parser = get_task(task).answer_parser if isinstance(task, str) else getattr(task, "answer_parser", None)
    if parser == "gsm8k":
        return answers_match(prediction, reference)
    return prediction.strip() == reference.strip()
