"""Is run A better than run B on a task, or only on this test sample? A paired bootstrap over their examples.

Two runs evaluated on the same examples (each run's ``examples/test.jsonl``, or what `sparta eval --output`
writes) are compared on one per-example score. The test examples are resampled with replacement, the same
resample for both runs, and the difference of the split's statistic is taken on each resample; the middle 95% of
those differences is the interval (Efron & Tibshirani's percentile bootstrap, as used for paired comparisons of
NLP systems by Koehn 2004 and Berg-Kirkpatrick et al. 2012). Pairing removes the spread that comes from which
examples are easy, which both runs share, so the interval is much narrower than two separate ones.

The statistic is the split's own: the mean of a score (accuracy from ``correct``, exact match, a preference
margin), or for token NLL the summed NLL over the summed target tokens, as the run's ``loss`` is computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparta.errors import SpartaError
from sparta.fileio import read_jsonl
from sparta.runs.layout import examples_file

DEFAULT_METRICS = ("correct", "exact_match", "nll", "loss")  # the first one both files hold, unless named
WEIGHTS = {"nll": "tokens"}  # a score summed over units: the statistic is sum(score) / sum(units)
RESAMPLE_CHUNK = 1000


@dataclass(frozen=True)
class Comparison:
    """The statistic of A and B on the same `examples`, A - B and its bootstrap interval."""

    metric: str
    examples: int
    a: float
    b: float
    difference: float
    low: float
    high: float
    confidence: float
    samples: int
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_examples(source: str | Path, split: str = "test") -> list[dict[str, Any]]:
    """Per-example scores from a .jsonl file, or from a run or `sparta eval --output` dir (examples/SPLIT.jsonl)."""
    path = Path(source)
    if path.is_dir():
        found = examples_file(path, split)
        if not found.is_file():
            raise SpartaError(
                f"{path} has no per-example scores ({found.relative_to(path)}): runs write them at the end of "
                f"training; for an older run or another split, write them with "
                f"`sparta eval {path} --split {split} --output DIR` and compare DIR"
            )
        path = found
    elif not path.is_file():
        raise SpartaError(f"{source} is neither a run dir nor a per-example scores file (.jsonl)")
    rows = read_jsonl(path, "per-example scores")
    if not rows:
        raise SpartaError(f"{path} holds no examples")
    return rows


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """Refuse two score lists that are not of the same examples in the same order."""
    if len(a) != len(b):
        raise SpartaError(
            f"the runs were scored on different examples ({len(a)} vs {len(b)}); evaluate both on the same "
            "task, split and --max-eval-samples"
        )
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.get("index") != y.get("index") or (x.get("key") and y.get("key") and x["key"] != y["key"]):
            raise SpartaError(
                f"example {i} differs between the runs (index {x.get('index')} vs {y.get('index')}, key "
                f"{x.get('key')} vs {y.get('key')}): they were not scored on the same encoded examples "
                "(another task, data file, sample or tokenizer)"
            )


def choose_metric(a: list[dict[str, Any]], b: list[dict[str, Any]], metric: str | None) -> str:
    """`metric` if both hold it, else the first of DEFAULT_METRICS that both hold."""
    common = set(a[0]) & set(b[0])
    if metric is not None:
        if metric not in common:
            scores = sorted(common - {"index", "key"})
            raise SpartaError(f"no per-example {metric!r} in both runs; they hold {', '.join(scores)}")
        return metric
    for name in DEFAULT_METRICS:
        if name in common:
            return name
    raise SpartaError(f"the runs hold no score in common among {', '.join(DEFAULT_METRICS)}; pass --metric")


def _columns(rows: list[dict[str, Any]], metric: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        values = np.array([float(r[metric]) for r in rows], dtype=np.float64)
        weight = WEIGHTS.get(metric)
        units = np.array([float(r[weight]) for r in rows]) if weight else np.ones(len(rows))
    except (KeyError, TypeError, ValueError) as err:
        raise SpartaError(
            f"per-example {metric!r} is missing or not a number in some example ({err})"
        ) from None
    return values, units


def compare(
    a: list[dict[str, Any]],
    b: list[dict[str, Any]],
    metric: str | None = None,
    samples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Comparison:
    """A - B on `metric` with its paired percentile-bootstrap interval at `confidence`."""
    if samples < 1:
        raise SpartaError(f"the bootstrap needs at least 1 resample, not {samples}")
    if not 0 < confidence < 1:
        raise SpartaError(f"confidence is a fraction between 0 and 1, not {confidence}")
    paired(a, b)
    metric = choose_metric(a, b, metric)
    (va, ua), (vb, ub) = _columns(a, metric), _columns(b, metric)
    n = len(va)
    rng = np.random.default_rng(seed)
    differences = []
    for start in range(0, samples, RESAMPLE_CHUNK):
        idx = rng.integers(0, n, size=(min(RESAMPLE_CHUNK, samples - start), n))
        differences.append(va[idx].sum(1) / ua[idx].sum(1) - vb[idx].sum(1) / ub[idx].sum(1))
    spread = np.concatenate(differences)
    tail = (1 - confidence) / 2
    low, high = np.quantile(spread, [tail, 1 - tail])
    stat_a, stat_b = va.sum() / ua.sum(), vb.sum() / ub.sum()
    return Comparison(
        metric,
        n,
        float(stat_a),
        float(stat_b),
        float(stat_a - stat_b),
        float(low),
        float(high),
        confidence,
        samples,
        seed,
    )
