"""Budgeted density search for SpaRTA (the paper's stated limitation: the density must be tuned per task/model).

Stages, each a set of ordinary `sparta train` runs under OUTPUT/<stage>/d<density>/seed<k>/ (finished runs are
skipped, so a search resumes):

1. coarse: a log grid of densities on a small training subset, with periodic dev evaluation and early stopping;
2. refine: geometric midpoints between the best coarse density and its neighbours (as the budget allows);
3. final: the best `finalists` densities again on a larger training subset.

The train/dev gap of a run is `last dev loss - mean train loss over the last `window` logged steps` (from the run's
history); it has *closed* when gap <= gap_tol * last dev loss (the model does not fit train much better than dev).
The recommendation is the density with the lowest best dev loss among the last stage's closed-gap runs (else the
lowest dev loss overall, flagged).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparta.errors import SpartaError
from sparta.experiments.recipes import Cell
from sparta.experiments.runner import is_done, run_cell
from sparta.fileio import write_json
from sparta.runs.layout import RESULTS_FILE
from sparta.train.config import TrainConfig
from sparta.train.schedule import Schedule

logger = logging.getLogger(__name__)
DEFAULT_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
TUNE_FILE = "tune.json"


def gap_stats(history: list[dict], window: int = 3) -> dict[str, float | None]:
    """Last train-loss window mean, last dev loss and their gap from a results.json history."""
    train = [h["train_loss"] for h in history if h.get("train_loss") is not None][-window:]
    dev = [h["dev_loss"] for h in history if h.get("dev_loss") is not None]
    train_window = sum(train) / len(train) if train else None
    last_dev = dev[-1] if dev else None
    gap = last_dev - train_window if train_window is not None and last_dev is not None else None
    return {"train_window_loss": train_window, "last_dev_loss": last_dev, "gap": gap}


def _row(stage: str, density: float, samples: int | None, results: dict, window: int, gap_tol: float) -> dict:
    dev = (results.get("metrics") or {}).get("dev") or {}
    metric = "mcc" if "mcc" in dev else "accuracy"
    stats = gap_stats(results.get("history") or [], window)
    closed = stats["gap"] is not None and stats["gap"] <= gap_tol * max(stats["last_dev_loss"], 1e-8)
    return {
        "stage": stage,
        "density": density,
        "max_train_samples": samples,
        "train_examples": (results.get("data") or {}).get("train"),
        "steps": results.get("steps"),
        "dev_loss": dev.get("loss"),
        "dev_metric": dev.get(metric),
        "metric": metric,
        **stats,
        "gap_closed": closed,
        "stopped_early": results.get("stopped_early"),
        "trainable_params": results.get("trainable_params"),
    }


def _subsample(grid: list[float], n: int) -> list[float]:
    if n >= len(grid):
        return list(grid)
    if n == 1:
        return [grid[len(grid) // 2]]
    return [grid[round(i * (len(grid) - 1) / (n - 1))] for i in range(n)]


def _midpoints(tried: list[float], best: float, n: int) -> list[float]:
    """Geometric midpoints between `best` and its nearest tried neighbours (lower first), at most n."""
    ordered = sorted(set(tried))
    i = ordered.index(best)
    out = [math.sqrt(best * ordered[j]) for j in (i - 1, i + 1) if 0 <= j < len(ordered)]
    return [float(f"{d:.3g}") for d in out[:n]]


def _eval_every(settings: dict[str, Any], samples: int | None) -> int:
    """The base run's eval_every, else about four dev evaluations per run (the gap and early stopping need them)."""
    if settings.get("eval_every"):
        return int(settings["eval_every"])
    cfg = TrainConfig.from_dict({**settings, "eval_every": None}, source="tune-density")
    return max(1, Schedule.plan(cfg, samples or 1000).total_steps // 4)


def tune_density(
    base: dict[str, Any],
    output: str | Path,
    *,
    grid: list[float] | None = None,
    budget_runs: int = 8,
    small_samples: int | None = 500,
    large_samples: int | None = 2000,
    finalists: int = 2,
    gap_tol: float = 0.15,
    window: int = 3,
    patience: int | None = 2,
    isolation: str = "subprocess",
    train_fn: Callable | None = None,
) -> dict[str, Any]:
    """Run the search for `base` (TrainConfig settings; method/density/samples are set here); writes tune.json."""
    output = Path(output)
    grid = sorted(float(d) for d in (grid or DEFAULT_GRID))
    if not grid or not all(0 < d <= 1 for d in grid):
        raise SpartaError(f"densities must be in (0, 1], got {grid}")
    do_final = (
        bool(large_samples) and finalists > 0 and (small_samples is None or large_samples > small_samples)
    )
    n_final = finalists if do_final else 0
    if budget_runs < n_final + 2:
        raise SpartaError(
            f"--budget-runs {budget_runs} is too small: give at least {n_final + 2} "
            f"(2 coarse runs + {n_final} finalists), or fewer --finalists"
        )
    settings = {k: v for k, v in base.items() if k not in ("output", "density", "max_train_samples")}
    settings.update(method="sparta", progress=False, early_stopping_patience=patience)
    seed = int(settings.get("seed", 0))
    rows: list[dict] = []

    def run(stage: str, density: float, samples: int | None) -> dict:
        extra = {"density": density, "max_train_samples": samples, "seed": seed}
        extra["eval_every"] = _eval_every(settings, samples)
        cell = Cell(stage, f"d{density:g}", seed, f"{stage} {density:g}", {**settings, **extra})
        path = cell.directory(output)
        if not is_done(path):
            logger.info(f"{stage}: density {density:g} on {samples or 'all'} training examples")
            run_cell(cell, output, isolation, train_fn)
        row = _row(stage, density, samples, json.loads((path / RESULTS_FILE).read_text()), window, gap_tol)
        if row["dev_loss"] is None:
            raise SpartaError(f"{path} has no dev metrics; the search needs a dev split (--dev-file)")
        logger.info(
            f"  dev loss {row['dev_loss']:.4f}, gap {row['gap'] if row['gap'] is None else round(row['gap'], 4)}"
            f"{' (closed)' if row['gap_closed'] else ''}"
        )
        rows.append(row)
        return row

    coarse = [run("coarse", d, small_samples) for d in _subsample(grid, budget_runs - n_final)]
    best = min(coarse, key=lambda r: r["dev_loss"])["density"]
    left = budget_runs - len(coarse) - n_final
    refine = [run("refine", d, small_samples) for d in _midpoints([r["density"] for r in coarse], best, left)]
    small = coarse + refine
    if do_final:
        ranked = sorted(small, key=lambda r: (not r["gap_closed"], r["dev_loss"]))
        final = [run("final", r["density"], large_samples) for r in ranked[:n_final]]
    else:
        final = small
    closed = [r for r in final if r["gap_closed"]]
    pick = min(closed or final, key=lambda r: r["dev_loss"])
    result = {
        "recommended_density": pick["density"],
        "reason": (
            "lowest dev loss among runs whose train/dev gap closed"
            if closed
            else "lowest dev loss; no run closed the train/dev gap, consider lower densities"
        ),
        "gap_tol": gap_tol,
        "window": window,
        "grid": grid,
        "budget_runs": budget_runs,
        "runs": rows,
        "base": settings,
    }
    write_json(output / TUNE_FILE, result)
    (output / "tune.md").write_text(evidence_table(result) + "\n")
    plot_tuning(result, output / "tune.png")
    return result


def evidence_table(result: dict[str, Any]) -> str:
    head = [
        "stage",
        "density",
        "train ex.",
        "steps",
        "best dev loss",
        "dev metric",
        "train loss (last)",
        "dev loss (last)",
        "gap",
        "closed",
        "early stop",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v: Any, digits: int = 4) -> str:
        return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    for r in result["runs"]:
        last = r["stage"] == result["runs"][-1]["stage"]
        mark = " **← recommended**" if last and r["density"] == result["recommended_density"] else ""
        lines.append(
            "| "
            + " | ".join(
                [
                    r["stage"],
                    f"{r['density']:g}",
                    f(r["train_examples"]),
                    f(r["steps"]),
                    f(r["dev_loss"]),
                    f(r["dev_metric"]),
                    f(r["train_window_loss"]),
                    f(r["last_dev_loss"]),
                    f(r["gap"]),
                    "yes" if r["gap_closed"] else "no",
                    "yes" if r["stopped_early"] else "no",
                ]
            )
            + f" |{mark}"
        )
    lines.append(f"\nrecommended density: {result['recommended_density']:g} ({result['reason']})")
    return "\n".join(lines)


def plot_tuning(result: dict[str, Any], path: Path) -> Path:
    """Best dev loss and last train-window loss vs density (log x), per stage; the recommendation starred."""
    from sparta.experiments.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, stage in enumerate(("coarse", "refine", "final")):
        rs = sorted((r for r in result["runs"] if r["stage"] == stage), key=lambda r: r["density"])
        if not rs:
            continue
        xs = [r["density"] for r in rs]
        ax.plot(xs, [r["dev_loss"] for r in rs], "o-", color=f"C{i}", label=f"{stage}: best dev loss")
        ax.plot(
            xs, [r["train_window_loss"] for r in rs], "x:", color=f"C{i}", label=f"{stage}: train loss (last)"
        )
    chosen = [r for r in result["runs"] if r["density"] == result["recommended_density"]][-1]
    ax.plot(
        [chosen["density"]],
        [chosen["dev_loss"]],
        "*",
        markersize=16,
        color="gold",
        markeredgecolor="k",
        label=f"recommended {chosen['density']:g}",
    )
    ax.set(xscale="log", xlabel="density", ylabel="loss", title="SpaRTA density search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
