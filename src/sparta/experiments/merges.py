"""The merges of a merging recipe (paper section 8, Table 6): `sparta merge SOURCES --output TARGET --eval` once
per seed, after the grid's cells have trained.

A recipe's ``merge: {row: ROW, tasks: [...], split: test}`` merges each seed's ROW cells of the tasks into
``OUTPUT/merged/ROW/seed<k>``. With ``variants: {NAME: {...}}`` it makes one merge per variant and seed instead,
into ``OUTPUT/merged/NAME/seed<k>``; a variant may give

* ``rows: {task: ROW}``: the cells to take for some tasks (default: ``merge.row``), e.g. adapters trained with
  one index seed;
* ``strategy``, ``top_k``, ``drop``, ``dare_then``, ``dare_seed``: the merge rule (`sparta merge --strategy ...`);
* ``tune_weights: true`` with optional ``weight_grid``, ``param_grid`` and ``max_eval_samples`` (the dev cap):
  `sparta merge --tune-weights`;
* ``seeds: [...]``: only these seeds (e.g. the expensive tuning on one seed).
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparta.errors import SpartaError
from sparta.experiments.recipes import Cell, Recipe
from sparta.fileio import read_json, write_json
from sparta.merging import Strategy, compare_with_single, merge_adapters, tune_merge
from sparta.merging.strategies import strategy_from_options
from sparta.merging.tuning import PARAM_GRIDS, WEIGHT_GRID
from sparta.runs.layout import MERGED_FILE, RESULTS_FILE

logger = logging.getLogger(__name__)
MERGED_DIR = "merged"
SINGLE_DIR = "single-metrics"  # OUTPUT/merged/single-metrics/seed<k>/<task>-<dir hash>.json: the single adapters' metrics
VARIANT_KEYS = (
    "rows",
    "strategy",
    "top_k",
    "drop",
    "dare_then",
    "dare_seed",
    "tune_weights",
    "weight_grid",
    "param_grid",
    "max_eval_samples",
    "seeds",
)


@dataclass
class MergePlan:
    """One `sparta merge SOURCES --output TARGET [--strategy ...] [--tune-weights ...] --eval` of a recipe."""

    sources: list[Path]
    target: Path
    split: str = "test"
    max_eval_samples: int | None = None
    data_dir: str | None = None
    device: str | None = None
    strategy: Strategy = Strategy()
    tune: dict[str, Any] | None = None  # {"weight_grid", "param_grid", "max_eval_samples"} for --tune-weights

    def command(self) -> str:
        """The equivalent command line, for people to read."""
        argv = ["merge", *map(str, self.sources), "--output", str(self.target), "--overwrite"]
        flags = {"top_k": "--top-k", "drop": "--drop", "then": "--dare-then", "seed": "--dare-seed"}
        rule = self.strategy.describe()
        tuned = PARAM_GRIDS.get(rule["name"], (None,))[0] if self.tune is not None else None
        if rule["name"] != "sum":
            argv += ["--strategy", rule["name"]]
            for key, value in rule.items():
                argv += [flags[key], str(value)] if key not in ("name", tuned) else []
        if self.tune is not None:
            argv += ["--tune-weights", "--weight-grid", ",".join(f"{w:g}" for w in self.tune["weight_grid"])]
            if self.tune.get("param_grid") is not None:
                argv += ["--param-grid", ",".join(f"{v:g}" for v in self.tune["param_grid"])]
        argv += ["--eval", "--split", self.split]
        for flag, value in (
            ("--max-eval-samples", self.max_eval_samples),
            ("--data-dir", self.data_dir),
            ("--device", self.device),
        ):
            argv += [flag, str(value)] if value else []
        command = "sparta " + shlex.join(argv)
        if self.tune is not None and self.tune.get("max_eval_samples") != self.max_eval_samples:
            command += f"  # tuning on {self.tune.get('max_eval_samples') or 'all'} dev examples per task"
        return command


def _variants(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{target folder name: variant}: the variants, or the one merge of `merge.row`."""
    variants = spec.get("variants")
    if variants is None:
        return {spec["row"]: {}}
    if not isinstance(variants, dict) or not variants:
        raise SpartaError("merge.variants must map variant names to their settings")
    for name, variant in variants.items():
        bad = sorted(set(variant or {}) - set(VARIANT_KEYS))
        if bad:
            raise SpartaError(
                f"merge variant {name!r}: unknown key(s) {bad}; known: {', '.join(VARIANT_KEYS)}"
            )
    return {str(name): dict(variant or {}) for name, variant in variants.items()}


def _strategy(name: str, variant: dict[str, Any]) -> Strategy:
    try:
        return strategy_from_options(
            variant.get("strategy", "sum"),
            variant.get("top_k"),
            variant.get("drop"),
            variant.get("dare_then"),
            variant.get("dare_seed"),
        )
    except SpartaError as err:
        raise SpartaError(f"merge variant {name!r}: {err}") from None


def merge_plans(recipe: Recipe, scale: str, output: Path, cells: list[Cell]) -> list[MergePlan]:
    """The merges of a merging recipe, per variant and seed whose cells of every merged task are in `cells`."""
    if recipe.kind != "merging":
        return []
    spec = recipe.merge
    tasks = spec.get("tasks") or recipe.tasks
    by_key = {c.key: c for c in cells}
    out = []
    for name, variant in _variants(spec).items():
        rows = {t: (variant.get("rows") or {}).get(t, spec["row"]) for t in tasks}
        unknown = sorted(set(rows.values()) - set(recipe.rows))
        if unknown:
            raise SpartaError(f"merge variant {name!r}: no row {', '.join(unknown)} in recipe {recipe.name}")
        strategy = _strategy(name, variant)
        tune = None
        if variant.get("tune_weights"):
            tune = {
                "weight_grid": [float(w) for w in variant.get("weight_grid") or WEIGHT_GRID],
                "param_grid": variant.get("param_grid"),
                "max_eval_samples": variant.get("max_eval_samples"),
            }
        for seed in sorted({c.seed for c in cells}):
            if variant.get("seeds") is not None and seed not in variant["seeds"]:
                continue
            sources = [by_key.get(f"{t}/{rows[t]}/seed{seed}") for t in tasks]
            if any(s is None for s in sources):
                continue
            cfg = sources[0].config(output)
            target = output / MERGED_DIR / name / f"seed{seed}"
            dirs = [s.directory(output) for s in sources]
            out.append(
                MergePlan(
                    dirs,
                    target,
                    spec.get("split", "test"),
                    cfg.max_eval_samples,
                    cfg.data_dir,
                    cfg.device,
                    strategy,
                    tune,
                )
            )
    return out


def merge_and_evaluate(plan: MergePlan) -> dict[str, Any]:
    """Merge the plan's adapters and compare each task's merged and single metrics (merged.json records both)."""
    if plan.tune is not None:
        doc = tune_merge(
            plan.sources,
            plan.target,
            overwrite=True,
            strategy=plan.strategy,
            weight_grid=plan.tune["weight_grid"],
            param_grid=plan.tune.get("param_grid"),
            data_dir=plan.data_dir,
            max_eval_samples=plan.tune.get("max_eval_samples"),
            device=plan.device,
        )
    else:
        doc = merge_adapters(plan.sources, plan.target, overwrite=True, strategy=plan.strategy)
    # every variant of one seed merges the same single adapters: each is evaluated once per seed
    cache = plan.target.parent.parent / SINGLE_DIR / plan.target.name
    comparison = compare_with_single(
        plan.target, plan.split, plan.data_dir, plan.max_eval_samples, 32, plan.device, cache
    )
    doc["eval"] = {"split": plan.split, "max_eval_samples": plan.max_eval_samples, "tasks": comparison}
    write_json(plan.target / MERGED_FILE, doc)
    return doc


def run_merges(recipe: Recipe, scale: str, output: Path, cells: list[Cell], summary) -> None:
    """Run the recipe's merges whose adapters finished; one that was evaluated before is skipped."""
    for plan in merge_plans(recipe, scale, output, cells):
        name = str(plan.target.relative_to(output))
        merged_json = plan.target / "merged.json"
        if merged_json.is_file() and "eval" in read_json(merged_json):
            summary.skipped.append(name)
            continue
        if not all((s / RESULTS_FILE).is_file() for s in plan.sources):
            logger.info(f"not merging into {plan.target}: some adapters did not finish")
            continue
        logger.info(plan.command())
        try:
            merge_and_evaluate(plan)
        except SpartaError as err:
            summary.failed[name] = f"merge failed: {err}"
            logger.info(f"  merge failed: {err}")
        else:
            summary.merged.append(name)
