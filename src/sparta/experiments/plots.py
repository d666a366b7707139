"""PNG plots of a grid (matplotlib, Agg backend): metric vs density, loss curves, step time and peak memory."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from sparta.experiments.recipes import Recipe
from sparta.methods import METHODS


def _pyplot():
    # imported on first use: the Agg backend must be chosen before pyplot loads, and only plotting needs it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by(records: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def _mean(values: list) -> float | None:
    xs = [v for v in values if v is not None]
    return statistics.fmean(xs) if xs else None


def _sd(values: list) -> float:
    xs = [v for v in values if v is not None]
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def uses_density(method: str | None) -> bool:
    """Whether rows of `method` are points along the density axis (the others: horizontal reference lines)."""
    return method in METHODS and METHODS[method].uses_density


def _is_reference(recipe: Recipe, row: str, method: str | None) -> bool:
    return bool(recipe.rows.get(row, {}).get("reference")) or not uses_density(method)


def plot_density(recipe: Recipe, records: list[dict], path: Path) -> Path | None:
    """Per task: the main test metric vs trainable % (log x) for SpaRTA rows, other methods as horizontal lines."""
    tasks = list(dict.fromkeys(r["task"] for r in records))
    if not any(uses_density(r["method"]) for r in records):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = [r for r in records if r["task"] == task]
        points, refs = [], []
        for (row,), rs in _by(rows, "row").items():
            y, sd = _mean([r["test_metric"] for r in rs]), _sd([r["test_metric"] for r in rs])
            if y is None:
                continue
            if _is_reference(recipe, row, rs[0]["method"]):
                refs.append((rs[0]["label"], 100 * y))
            else:
                points.append((_mean([r["trainable_percent"] for r in rs]), 100 * y, 100 * sd))
        points.sort()
        if points:
            xs, ys, es = zip(*points, strict=True)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label="SpaRTA")
            ax.set_xscale("log")
        for i, (label, y) in enumerate(refs):
            color = f"C{i + 1}"
            ax.axhline(y, linestyle="--", linewidth=1, color=color, label=label)
        ax.legend(loc="lower right", fontsize=8)
        ax.set(title=task, xlabel="trainable parameters (% of model)", ylabel=f"test {rows[0]['metric']} (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{recipe.name}: test metric vs density (mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean_curve(histories: list[list[dict]], key: str) -> tuple[list[int], list[float]]:
    by_step: dict[int, list[float]] = defaultdict(list)
    for h in histories:
        for entry in h:
            if entry.get(key) is not None:
                by_step[int(entry["step"])].append(float(entry[key]))
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[s]) for s in steps]


def plot_losses(recipe: Recipe, records: list[dict], path: Path) -> Path | None:
    """Per task: train loss (solid) and dev loss (dashed) vs step for each method, averaged over seeds."""
    tasks = list(dict.fromkeys(r["task"] for r in records))
    if not any(r.get("history") for r in records):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for rs in _by([r for r in records if r["task"] == task], "row").values():
            histories = [r.get("history") or [] for r in rs]
            steps, train = _mean_curve(histories, "train_loss")
            (line,) = ax.plot(steps, train, label=f"{rs[0]['label']} train")
            steps, dev = _mean_curve(histories, "dev_loss")
            if steps:
                ax.plot(
                    steps, dev, "--o", markersize=3, color=line.get_color(), label=f"{rs[0]['label']} dev"
                )
        ax.set(title=task, xlabel="optimizer step", ylabel="cross-entropy loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{recipe.name}: train (solid) and dev (dashed) loss; a widening gap is overfitting")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_efficiency(recipe: Recipe, records: list[dict], path: Path) -> Path | None:
    """Bars per method: seconds per optimizer step and peak memory (means over tasks and seeds)."""
    groups = _by(records, "row")
    if not groups:
        return None
    labels = [rs[0]["label"] for rs in groups.values()]
    step = [_mean([r["step_seconds"] for r in rs]) or 0.0 for rs in groups.values()]
    memory = [_mean([r["peak_memory_mb"] for r in rs]) or 0.0 for rs in groups.values()]
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(labels)), 4))
    a.bar(labels, step, color="tab:blue")
    a.set(title="time per optimizer step", ylabel="seconds")
    b.bar(labels, memory, color="tab:orange")
    b.set(title="peak memory", ylabel="MB")
    for ax in (a, b):
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{recipe.name}: cost per method")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(recipe: Recipe, records: list[dict[str, Any]], output: str | Path) -> list[Path]:
    """Write density.png, losses.png and efficiency.png under output (those that have data)."""
    output = Path(output)
    if not records:
        return []
    made = [
        plot_density(recipe, records, output / "density.png"),
        plot_losses(recipe, records, output / "losses.png"),
        plot_efficiency(recipe, records, output / "efficiency.png"),
    ]
    return [p for p in made if p is not None]
