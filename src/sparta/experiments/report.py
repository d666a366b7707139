"""Tables from finished cells: Markdown laid out like the paper's (mean ± sd over seeds), CSV, and docs/RESULTS.md.

Layout (paper Tables 3-5, 10, 11): one row per method (label and measured trainable %), per task two columns,
the test loss and the task's main metric in percent (accuracy; MCC for CoLA).
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from sparta.experiments import plots
from sparta.experiments.merges import MERGED_DIR
from sparta.experiments.recipes import Recipe
from sparta.runs.layout import RESULTS_FILE

CELL_COLUMNS = [
    "task",
    "row",
    "label",
    "seed",
    "method",
    "density",
    "targets",
    "trainable_params",
    "trainable_percent",
    "test_loss",
    "test_metric",
    "dev_loss",
    "dev_metric",
    "zero_shot_test_metric",
    "metric",
    "steps",
    "train_seconds",
    "step_seconds",
    "examples_per_s",
    "peak_memory_mb",
    "adapter_bytes",
    "best_step",
    "stopped_early",
    "train_examples",
]
SUMMARY_STATS = [
    "test_loss",
    "test_metric",
    "dev_loss",
    "dev_metric",
    "trainable_percent",
    "step_seconds",
    "examples_per_s",
    "peak_memory_mb",
    "adapter_bytes",
]
RESULTS_MD = Path(__file__).resolve().parents[3] / "docs" / "RESULTS.md"


def main_metric(metrics: dict[str, Any]) -> str:
    """The column the paper shows: MCC when the task reports it (CoLA), else accuracy."""
    return "mcc" if "mcc" in metrics else "accuracy"


def cell_record(results: dict[str, Any], task: str, row: str, seed: int, label: str) -> dict[str, Any]:
    """One flat row (no history) from a results.json."""
    m = results.get("metrics", {})
    test, dev = m.get("test", {}), m.get("dev", {})
    metric = main_metric(test or dev)
    cfg = results.get("config", {})
    steps = results.get("steps") or 0
    zs = (results.get("zero_shot") or {}).get("test", {})
    return {
        "task": task,
        "row": row,
        "label": label,
        "seed": seed,
        "method": results.get("method"),
        "density": cfg.get("density") if plots.uses_density(results.get("method")) else None,
        "targets": ",".join(cfg.get("targets") or []),
        "trainable_params": results.get("trainable_params"),
        "trainable_percent": results.get("trainable_percent"),
        "test_loss": test.get("loss"),
        "test_metric": test.get(metric),
        "dev_loss": dev.get("loss"),
        "dev_metric": dev.get(metric),
        "zero_shot_test_metric": zs.get(metric),
        "metric": metric,
        "steps": steps,
        "train_seconds": results.get("train_seconds"),
        "step_seconds": results["train_seconds"] / steps if steps and results.get("train_seconds") else None,
        "examples_per_s": results.get("train_examples_per_s"),
        "peak_memory_mb": results.get("peak_memory_mb"),
        "adapter_bytes": results.get("adapter_bytes"),
        "best_step": results.get("best_step"),
        "stopped_early": results.get("stopped_early"),
        "train_examples": (results.get("data") or {}).get("train"),
    }


def collect(recipe: Recipe, output: str | Path) -> list[dict[str, Any]]:
    """Records of every finished cell under output (OUTPUT/<task>/<row>/seed<k>/results.json), in table order.

    Each record also carries its loss `history` for the plots.
    """
    output = Path(output)
    found = []
    for path in output.glob(f"*/*/seed*/{RESULTS_FILE}"):
        task, row, seed_dir = path.parts[-4:-1]
        if task == MERGED_DIR or not seed_dir[4:].isdigit():
            continue
        results = json.loads(path.read_text())
        record = cell_record(
            results, task, row, int(seed_dir[4:]), recipe.label(row) if row in recipe.rows else row
        )
        record["history"] = results.get("history") or []
        found.append(record)
    task_order = {t: i for i, t in enumerate(recipe.tasks)}
    row_order = {r: i for i, r in enumerate(recipe.rows)}
    big = len(task_order) + len(row_order)
    return sorted(
        found,
        key=lambda r: (
            task_order.get(r["task"], big),
            r["task"],
            row_order.get(r["row"], big),
            r["row"],
            r["seed"],
        ),
    )


def mean_sd(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (None for a single value) of the non-missing values, and their count."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (task, row): n seeds and mean/sd of SUMMARY_STATS."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["task"], r["row"])].append(r)
    out = []
    for (task, row), rs in groups.items():
        summary = {
            "task": task,
            "row": row,
            "label": rs[0]["label"],
            "method": rs[0]["method"],
            "density": rs[0]["density"],
            "metric": rs[0]["metric"],
            "n": len(rs),
            "seeds": [r["seed"] for r in rs],
        }
        for stat in SUMMARY_STATS:
            summary[f"{stat}_mean"], summary[f"{stat}_sd"], _ = mean_sd([r[stat] for r in rs])
        out.append(summary)
    return out


def fmt(mean: float | None, sd: float | None, scale: float = 1.0, digits: int = 3) -> str:
    if mean is None:
        return "–"
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {sd * scale:.{digits}f}" if sd is not None else "")


def _percent(p: float | None) -> str:
    return "–" if p is None else f"{p:.3g}%"


def metric_name(metric: str) -> str:
    return {"accuracy": "acc.", "mcc": "mcc", "f1": "F1"}.get(metric, metric)


def results_table(summaries: list[dict[str, Any]], tasks: list[str], rows: list[str]) -> str:
    """The paper-style Markdown table: rows = methods, per task test loss and main metric (mean ± sd)."""
    by = {(s["task"], s["row"]): s for s in summaries}
    tasks = [t for t in tasks if any(k[0] == t for k in by)]
    rows = [r for r in rows if any(k[1] == r for k in by)]
    if not tasks:
        return "_no finished cells_\n"
    metric = {t: next(s["metric"] for k, s in by.items() if k[0] == t) for t in tasks}
    head = ["Adaptation", "trainable", *[f"{t} {c}" for t in tasks for c in ("loss", metric_name(metric[t]))]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        present = [by[(t, row)] for t in tasks if (t, row) in by]
        share = (
            statistics.fmean(
                s["trainable_percent_mean"] for s in present if s["trainable_percent_mean"] is not None
            )
            if any(s["trainable_percent_mean"] is not None for s in present)
            else None
        )
        n = max(s["n"] for s in present)
        cells = [f"{present[0]['label']} (n={n})", _percent(share)]
        for t in tasks:
            s = by.get((t, row))
            cells += (
                ["–", "–"]
                if s is None
                else [
                    fmt(s["test_loss_mean"], s["test_loss_sd"]),
                    fmt(s["test_metric_mean"], s["test_metric_sd"], 100, 1),
                ]
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def efficiency_table(summaries: list[dict[str, Any]]) -> str:
    """Per method and task: trainable share, step time, throughput, peak memory and adapter size (means)."""
    head = [
        "task",
        "Adaptation",
        "trainable",
        "step time (s)",
        "train examples/s",
        "peak memory (MB)",
        "adapter (KB)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        adapter = s["adapter_bytes_mean"]
        lines.append(
            "| "
            + " | ".join(
                [
                    s["task"],
                    s["label"],
                    _percent(s["trainable_percent_mean"]),
                    fmt(s["step_seconds_mean"], s["step_seconds_sd"], digits=2),
                    fmt(s["examples_per_s_mean"], None, digits=1),
                    fmt(s["peak_memory_mb_mean"], None, digits=0),
                    "–" if adapter is None else f"{adapter / 1024:,.0f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def paper_table(recipe: Recipe, model: str) -> str:
    """The paper's numbers for `model` in the same layout (loss, metric in %), or '' when the recipe has none."""
    entry = (recipe.paper_results or {}).get(model)
    if not entry:
        return ""
    rows = entry.get("rows") or {}
    tasks = [t for t in recipe.tasks if any(t in (v or {}) for v in rows.values())]
    metric = {t: next(k for v in rows.values() if t in (v or {}) for k in v[t] if k != "loss") for t in tasks}
    head = ["Adaptation", "density", *[f"{t} {c}" for t in tasks for c in ("loss", metric_name(metric[t]))]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, values in rows.items():
        label = recipe.label(row) if row in recipe.rows else row
        cells = [label, str((values or {}).get("density", "–"))]
        for t in tasks:
            v = (values or {}).get(t) or {}
            cells += [
                f"{v['loss']:.3f}" if "loss" in v else "–",
                f"{v[metric[t]]:.1f}" if metric[t] in v else "–",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return f"Paper ({entry.get('table', '')}, {model}):\n\n" + "\n".join(lines) + "\n"


# -- merging (Table 6) ---------------------------------------------------------------------------------------------
def merged_records(output: str | Path) -> list[dict[str, Any]]:
    """{row, seed, task, kind (single | merged), loss, metric, metric_name, strategy, weight} from
    OUTPUT/merged/<row or variant>/seed<k>."""
    out = []
    for path in sorted(Path(output).glob(f"{MERGED_DIR}/*/seed*/merged.json")):
        doc = json.loads(path.read_text())
        rule = doc.get("strategy") or {"name": "sum"}
        strategy = " ".join([rule["name"], *(f"{k}={v}" for k, v in rule.items() if k != "name")])
        weights = {t["name"]: t.get("weight") for t in doc.get("tasks") or []}
        for task, pair in ((doc.get("eval") or {}).get("tasks") or {}).items():
            for kind in ("single", "merged"):
                m = pair[kind]
                metric = "accuracy"  # Table 6 shows accuracy for both tasks
                out.append(
                    {
                        "row": path.parts[-3],
                        "seed": int(path.parts[-2][4:]),
                        "task": task,
                        "kind": kind,
                        "loss": m.get("loss"),
                        "metric": m.get(metric),
                        "metric_name": metric,
                        "strategy": strategy + (" (tuned)" if "tuning" in doc else ""),
                        "weight": weights.get(task),
                    }
                )
    return out


def rules_table(records: list[dict[str, Any]]) -> str:
    """One line per merge (variant): its rule, each task's merged accuracy and its change against the task's
    single adapter in points (mean ± sd over seeds), and the weights used."""
    if not records:
        return "_no merged models yet_\n"
    tasks = list(dict.fromkeys(r["task"] for r in records))
    head = [
        "Merge",
        "rule",
        "seeds",
        *[f"{t} {c}" for t in tasks for c in ("acc.", "Δ vs single")],
        "weights",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in dict.fromkeys(r["row"] for r in records):
        rs = [r for r in records if r["row"] == row]
        cells = [row, " / ".join(dict.fromkeys(r["strategy"] for r in rs)), str(len({r["seed"] for r in rs}))]
        for t in tasks:
            merged = {r["seed"]: r["metric"] for r in rs if r["task"] == t and r["kind"] == "merged"}
            single = {r["seed"]: r["metric"] for r in rs if r["task"] == t and r["kind"] == "single"}
            change = [
                merged[k] - single[k] for k in merged if k in single and None not in (merged[k], single[k])
            ]
            cells += [fmt(*mean_sd(list(merged.values()))[:2], 100, 1), fmt(*mean_sd(change)[:2], 100, 1)]
        weights = sorted(
            {
                ",".join(
                    f"{r['weight']:g}"
                    for r in rs
                    if r["seed"] == k and r["kind"] == "merged" and r["weight"] is not None
                )
                for k in {r["seed"] for r in rs}
            }
        )
        lines.append("| " + " | ".join(cells) + " | " + "; ".join(w for w in weights if w) + " |")
    return "\n".join(lines) + "\n"


def merging_table(records: list[dict[str, Any]]) -> str:
    """Table 6's layout: rows = each single-task model and the merged model; columns = per task loss, acc."""
    if not records:
        return "_no merged models yet_\n"
    tasks = list(dict.fromkeys(r["task"] for r in records))
    head = ["Model", *[f"{t} {c}" for t in tasks for c in ("loss", "acc.")]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, kind, only in [*((t, "single", t) for t in tasks), ("Merged", "merged", None)]:
        cells = [name]
        for t in tasks:
            rs = [r for r in records if r["task"] == t and r["kind"] == kind and (only is None or only == t)]
            if not rs:
                cells += ["–", "–"]
                continue
            cells += [
                fmt(*mean_sd([r["loss"] for r in rs])[:2]),
                fmt(*mean_sd([r["metric"] for r in rs])[:2], 100, 1),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- files ---------------------------------------------------------------------------------------------------------
def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def hardware() -> str:
    cuda = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores{cuda}, torch {torch.__version__}"


def setup_line(recipe: Recipe, scale: str, records: list[dict[str, Any]], model: str) -> str:
    """What was measured, honestly: model, sample sizes, seeds, steps, hardware."""
    sc = recipe.scale(scale).get("settings") or {}
    seeds = sorted({r["seed"] for r in records})
    n_train = sorted({r["train_examples"] for r in records if r["train_examples"] is not None})
    steps = sorted({r["steps"] for r in records})
    cap = sc.get("max_eval_samples")
    evals = "the whole dev and test splits" if cap is None else f"eval examples per split ≤ {cap}"
    return (
        f"Measured: model `{model}`, {scale} scale; training examples per cell {_span(n_train)} "
        f"(max_train_samples {sc.get('max_train_samples') or 'all'}, after the length filter), {evals}; "
        f"seeds {seeds}; optimizer steps {_span(steps)}; "
        f"mean ± sample sd over seeds. Hardware: {hardware()}."
    )


def _span(values: list) -> str:
    if not values:
        return "–"
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def build_report(recipe: Recipe, scale: str, output: str | Path, model: str | None = None) -> str:
    """Write OUTPUT/report.md, cells.csv, summary.csv and the plots; return the Markdown."""
    output = Path(output)
    model = recipe.model(scale, model)
    records = collect(recipe, output)
    summaries = aggregate(records)
    write_csv(output / "cells.csv", records, CELL_COLUMNS)
    stat_cols = [f"{s}_{k}" for s in SUMMARY_STATS for k in ("mean", "sd")]
    write_csv(
        output / "summary.csv",
        summaries,
        ["task", "row", "label", "method", "density", "metric", "n", *stat_cols],
    )
    figures = plots.plot_all(recipe, records, output)
    compare = recipe.scale(scale).get("compare_with") or model
    parts = [f"## {recipe.title} ({scale} scale)\n", setup_line(recipe, scale, records, model) + "\n"]
    if recipe.notes:
        parts.append(recipe.notes.strip() + "\n")
    parts += [
        "Measured test loss and metric (%):\n",
        results_table(summaries, recipe.tasks, list(recipe.rows)),
    ]
    if recipe.kind == "merging":
        merged = merged_records(output)
        columns = ["row", "seed", "task", "kind", "loss", "metric", "metric_name", "strategy", "weight"]
        write_csv(output / "merged.csv", merged, columns)
        variants = recipe.merge.get("variants")
        table6 = [r for r in merged if r["row"] == recipe.merge["row"]] if variants else merged
        parts += ["Merged vs single-task models (test split):\n", merging_table(table6)]
        if variants:
            parts += [
                "Merge rules (test accuracy %, change against each task's single adapter in points):\n",
                rules_table(merged),
            ]
    paper = paper_table(recipe, compare)
    if paper:
        parts.append(paper)
    parts += [
        "Efficiency (means over seeds; peak memory is the process max RSS on CPU, CUDA max allocated on GPU):\n",
        efficiency_table(summaries),
    ]
    if figures:
        parts.append("Plots: " + ", ".join(f"`{Path(f).name}`" for f in figures) + "\n")
    text = "\n".join(parts)
    (output / "report.md").write_text(
        f"<!-- generated by sparta reproduce on {datetime.date.today()} -->\n" + text
    )
    return text


def update_results_md(section: str, key: str, path: str | Path = RESULTS_MD) -> Path:
    """Insert or replace the section between `<!-- sparta:KEY -->` markers in docs/RESULTS.md."""
    path = Path(path)
    start, end = f"<!-- sparta:{key} start -->", f"<!-- sparta:{key} end -->"
    block = f"{start}\n{section.rstrip()}\n{end}\n"
    text = (
        path.read_text()
        if path.is_file()
        else (
            "# Reproduced results\n\nGenerated by `sparta reproduce EXPERIMENT --results-md docs/RESULTS.md`. Measured "
            "numbers come from the runs named in each section (model, data sizes, seeds and hardware as stated); the "
            "paper's numbers are copied from its tables for the same rows. Small CPU-scale runs are not expected to "
            "match the paper's absolute numbers, only its trends.\n\n"
        )
    )
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
