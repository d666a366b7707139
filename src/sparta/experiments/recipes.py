"""Experiment recipes: YAML grids of `sparta train` runs (rows = methods, columns = tasks, seeds), at two scales.

A recipe file (see experiments/*.yaml at the repository root) holds:

    name, title, kind (grid | merging), tasks: [...], rows: {row: {label, method, density, targets, budget, ...}},
    scales: {cpu: {...}, paper: {...}}, paper_results: {model: {table, rows: {row: {task: {loss, accuracy|mcc}}}}}

Each scale gives `model`, `seeds`, `settings` (TrainConfig fields for every cell), `tasks` (per-task settings),
`rows` (per-row settings), optional `models` (per-model `settings`/`rows` when --model picks another model),
`tokens_per_example` (for the cost estimate) and `compare_with` (the paper model shown next to the results).
A cell's settings, lowest precedence first: TrainConfig defaults < scale settings < per-model settings < task
settings < the row's definition < scale row settings < per-model row settings < command-line overrides.
A row may give `budget` instead of `density`: trainable deltas as a fraction of the all-linear weights,
turned into a density for the row's targets from the model's shapes (same parameter count for every target set).
`index_seed_offset: K` (any settings level) samples a cell's SpaRTA indices with seed + K instead of its seed, so
adapters meant to be merged get different index sets per task. A row with `tasks: [...]` trains only for those
tasks, one with `seeds: [...]` only for those of the scale's seeds (e.g. a costly variant on one seed). A merging recipe's `merge:` says what to merge (`sparta.experiments.merges`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparta.errors import SpartaError
from sparta.train.config import TrainConfig
from sparta.train.schedule import Schedule

RECIPE_DIR = Path(__file__).resolve().parents[3] / "experiments"
SCALES = ("cpu", "paper")
KINDS = ("grid", "merging")
ROW_ONLY_KEYS = (
    "label",
    "budget",
    "reference",
    "tasks",
    "seeds",
)  # recipe-level row keys that are not TrainConfig fields
# Rough CPU costs of SmolLM2-135M in fp32 on this kind of machine (seconds per token), and per-method factors.
TRAIN_S_PER_TOKEN, EVAL_S_PER_TOKEN = 3e-3, 1e-3
METHOD_COST = {"full": 1.3, "sparta": 1.0, "lora": 1.0, "dora": 1.2, "head": 0.4}
# (train, dev, test) sizes after our dev carving (Table 2 / the shared data), for the estimate only.
TASK_SIZES = {
    "cola": (7551, 1000, 1043),
    "sst2": (66349, 1000, 872),
    "mrpc": (3668, 408, 1725),
    "rte": (2190, 300, 277),
    "qnli": (99725, 5000, 5463),
    "qqp": (100000, 5000, 40430),
    "mnli": (100000, 10000, 19647),
    "imdb": (25000, 5000, 20000),
}
DEFAULT_TOKENS = {
    "sst2": 57,
    "cola": 45,
    "mrpc": 100,
    "rte": 110,
    "qnli": 90,
    "qqp": 70,
    "mnli": 85,
    "imdb": 330,
}


@dataclass
class Cell:
    """One training run of a grid: OUTPUT/<task>/<row>/seed<k>/."""

    task: str  # the column name (a built-in task name, or a name for a custom task)
    row: str
    seed: int
    label: str
    settings: dict[str, Any]  # TrainConfig fields, output excluded
    budget: float | None = None  # resolved into settings["density"] by resolve_budgets
    reference: bool = False  # a reference line in density plots (not part of the sweep)

    @property
    def key(self) -> str:
        return f"{self.task}/{self.row}/seed{self.seed}"

    def directory(self, output: str | Path) -> Path:
        return Path(output) / self.task / self.row / f"seed{self.seed}"

    def config(self, output: str | Path) -> TrainConfig:
        return TrainConfig.from_dict(
            {**self.settings, "output": str(self.directory(output))}, source=self.key
        )


@dataclass
class Recipe:
    name: str
    title: str
    kind: str
    tasks: list[str]
    rows: dict[str, dict[str, Any]]
    scales: dict[str, dict[str, Any]]
    paper_results: dict[str, Any] = field(default_factory=dict)
    merge: dict[str, Any] = field(default_factory=dict)  # kind merging: {tasks: [...], row: ..., split: test}
    notes: str = ""
    path: Path | None = None

    def scale(self, scale: str) -> dict[str, Any]:
        if scale not in self.scales:
            raise SpartaError(f"recipe {self.name} has no {scale!r} scale; it has {', '.join(self.scales)}")
        return self.scales[scale]

    def model(self, scale: str, model: str | None = None) -> str:
        return model or self.scale(scale).get("model") or TrainConfig.model

    def label(self, row: str) -> str:
        return self.rows[row].get("label", row)


def list_recipes(directory: str | Path = RECIPE_DIR) -> list[str]:
    """Names of the recipes shipped under experiments/ (file stems)."""
    return sorted(p.stem for p in Path(directory).glob("*.yaml"))


def load_recipe(name_or_path: str | Path, directory: str | Path = RECIPE_DIR) -> Recipe:
    """Load a recipe by name (experiments/<name>.yaml) or path, checking its structure."""
    path = Path(name_or_path)
    if not path.is_file():
        path = Path(directory) / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(list_recipes(directory)) or "(none)"
        raise SpartaError(
            f"unknown experiment {str(name_or_path)!r}; choose one of {known} or give a YAML path"
        )
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpartaError(f"recipe {path} is not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise SpartaError(f"recipe {path} must be a mapping")
    missing = [k for k in ("tasks", "rows", "scales") if not doc.get(k)]
    if missing:
        raise SpartaError(f"recipe {path} lacks {', '.join(missing)}")
    kind = doc.get("kind", "grid")
    if kind not in KINDS:
        raise SpartaError(f"recipe {path}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "merging" and not (doc.get("merge") or {}).get("row"):
        raise SpartaError(f"recipe {path}: a merging recipe needs merge: {{row: ROW, tasks: [...]}}")
    rows = {str(k): dict(v or {}) for k, v in doc["rows"].items()}
    scales = {str(k): dict(v or {}) for k, v in doc["scales"].items()}
    unknown = sorted(set(scales) - set(SCALES))
    if unknown:
        raise SpartaError(f"recipe {path}: unknown scale(s) {unknown}; use {', '.join(SCALES)}")
    return Recipe(
        name=str(doc.get("name", path.stem)),
        title=str(doc.get("title", path.stem)),
        kind=kind,
        tasks=[str(t) for t in doc["tasks"]],
        rows=rows,
        scales=scales,
        paper_results=dict(doc.get("paper_results") or {}),
        merge=dict(doc.get("merge") or {}),
        notes=str(doc.get("notes", "")),
        path=path,
    )


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`key=value` strings (values parsed as YAML scalars) into TrainConfig settings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpartaError(f"--set expects key=value, got {item!r}")
        out[key.strip().replace("-", "_")] = _scalar(value)
    return out


def _scalar(text: str) -> Any:
    """int, float (1e-3 included, which YAML 1.1 reads as a string), else the YAML value (true, none, lists)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None if text.lower() == "none" else yaml.safe_load(text)


def task_available(task: str, settings: dict[str, Any]) -> str | None:
    """None when the task's data can be read, else a note saying what is missing."""
    from sparta.tasks import get_task, resolve_data_dir

    name = settings.get("task", task)
    if name == "custom" or str(name).endswith((".jsonl", ".json", ".csv", ".tsv", ".gz")):
        files = [settings.get("train_file") or name]
        missing = [str(f) for f in files if f and not Path(f).is_file()]
        return f"missing {', '.join(missing)}" if missing else None
    spec = get_task(name)
    root = resolve_data_dir(settings.get("data_dir"))
    if root is None:
        return None  # the Hugging Face hub
    needed = [
        root / spec.name / f"{s}.jsonl.gz" for s in (*spec.train_splits, *spec.dev_splits, *spec.test_splits)
    ]
    missing = [p.name for p in needed if not p.is_file()]
    return f"no {', '.join(missing)} under {root / spec.name}" if missing else None


def expand(
    recipe: Recipe,
    scale: str,
    *,
    model: str | None = None,
    seeds: list[int] | None = None,
    only: list[str] | None = None,
    tasks: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[list[Cell], dict[str, str]]:
    """The recipe's cells at `scale` (rows x tasks x seeds, in table order) and {task: why skipped}."""
    sc = recipe.scale(scale)
    model = recipe.model(scale, model)
    per_model = (sc.get("models") or {}).get(model, {})
    seeds = list(seeds if seeds is not None else sc.get("seeds", [0]))
    for names, known, what in ((only, recipe.rows, "row"), (tasks, recipe.tasks, "task")):
        bad = [n for n in names or [] if n not in known]
        if bad:
            raise SpartaError(
                f"recipe {recipe.name} has no {what} {', '.join(bad)}; it has {', '.join(known)}"
            )
    cells, skipped = [], {}
    for task in recipe.tasks:
        if tasks and task not in tasks:
            continue
        base = {
            "task": task,
            "model": model,
            "progress": False,
            **(sc.get("settings") or {}),
            **(per_model.get("settings") or {}),
            **((sc.get("tasks") or {}).get(task) or {}),
        }
        base.update(overrides or {})
        why = task_available(task, base)
        if why:
            skipped[task] = why
            continue
        for row, definition in recipe.rows.items():
            if (only and row not in only) or task not in definition.get("tasks", [task]):
                continue
            settings = {
                **base,
                **{k: v for k, v in definition.items() if k not in ROW_ONLY_KEYS},
                **((sc.get("rows") or {}).get(row) or {}),
                **((per_model.get("rows") or {}).get(row) or {}),
                **(overrides or {}),
            }
            budget = settings.pop("budget", definition.get("budget"))
            offset = settings.pop("index_seed_offset", None)
            for seed in seeds:
                if definition.get("seeds") is not None and int(seed) not in definition["seeds"]:
                    continue
                seeded = {**settings, "seed": int(seed)}
                if offset is not None:  # e.g. adapters to be merged: a different index set per task
                    seeded["index_seed"] = int(seed) + int(offset)
                cell = Cell(task, row, int(seed), recipe.label(row), seeded, budget)
                cell.reference = bool(definition.get("reference", False))
                TrainConfig.from_dict(cell.settings, source=f"recipe {recipe.name} cell {cell.key}")
                cells.append(cell)
    return cells, skipped


# -- parameter budgets -------------------------------------------------------------------------------------------
def target_sizes(model: str, targets_list: list[list[str]], fetch: bool = True) -> list[int]:
    """Weights SpaRTA would adapt in `model` for each target list (shapes from the config, no weights loaded).

    With fetch=False a registry model that is not on this machine yet raises instead of being converted."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from sparta import SpartaConfig
    from sparta.adapter.targets import find_targets
    from sparta.models import REGISTRY, is_cached, resolve_model

    if not fetch and model in REGISTRY and not is_cached(REGISTRY[model]):
        raise SpartaError(f"{model} is not on this machine yet; its shapes are read at run time")
    resolved = resolve_model(model)
    if not resolved.is_local:
        raise SpartaError(f"{model} is not downloaded yet ({resolved.path}); its shapes are read at run time")
    try:
        config = AutoConfig.from_pretrained(resolved.path, num_labels=2)
    except OSError as err:
        raise SpartaError(f"cannot read the config of {model}: {err}") from None
    with torch.device("meta"):
        net = AutoModelForSequenceClassification.from_config(config)
    sizes = []
    for targets in targets_list:
        spec = "all-linear" if targets == ["all-linear"] else targets
        params = find_targets(net, SpartaConfig(density=1.0, target_modules=spec))
        sizes.append(sum(math.prod(p.shape) for p in params))
    return sizes


def resolve_budgets(cells: list[Cell], fetch: bool = True) -> None:
    """Set the density of cells that give a `budget` (fraction of the all-linear weight count)."""
    cache: dict[tuple[str, tuple[str, ...]], float] = {}
    for cell in cells:
        if cell.budget is None:
            continue
        cfg = TrainConfig.from_dict(cell.settings)
        key = (cfg.model, tuple(cfg.target_modules))
        if key not in cache:
            all_linear, chosen = target_sizes(cfg.model, [["all-linear"], cfg.target_modules], fetch)
            cache[key] = all_linear / chosen
        density = float(cell.budget) * cache[key]
        if density > 1:
            raise SpartaError(
                f"{cell.key}: budget {cell.budget} needs density {density:.3g} > 1 for {key[1]}"
            )
        cell.settings["density"] = density


# -- cost estimate -----------------------------------------------------------------------------------------------
def estimate_seconds(cell: Cell, tokens_per_example: dict[str, int] | None = None) -> float:
    """A rough CPU time for one cell from the train/eval token counts (see TRAIN_S_PER_TOKEN).

    `tokens_per_example[task]` is one number or [train, eval]: tokens per sampled training example (lower when
    the length filter drops many) and per evaluated example."""
    return sum(estimate_parts(cell, tokens_per_example))


def estimate_parts(cell: Cell, tokens_per_example: dict[str, int] | None = None) -> tuple[float, float]:
    """(training, evaluation) seconds of `estimate_seconds`."""
    cfg = TrainConfig.from_dict(cell.settings)
    name = cfg.task if cfg.task in TASK_SIZES else cell.task
    n_train, n_dev, n_test = TASK_SIZES.get(name, (1000, 100, 100))
    if cfg.train_file and Path(cfg.train_file).is_file():
        from sparta.tasks.files import read_records

        n_train = len(read_records(cfg.train_file))
        n_dev = len(read_records(cfg.dev_file)) if cfg.dev_file else min(1000, n_train // 10)
        n_test = len(read_records(cfg.test_file)) if cfg.test_file else 0
    n_train = min(n_train, cfg.max_train_samples or n_train)
    if cfg.max_eval_samples:
        n_dev, n_test = min(n_dev, cfg.max_eval_samples), min(n_test, cfg.max_eval_samples)
    tokens = (tokens_per_example or {}).get(cell.task) or DEFAULT_TOKENS.get(name, 60)
    train_tokens, eval_tokens = tokens if isinstance(tokens, list | tuple) else (tokens, tokens)
    plan = Schedule.plan(cfg, n_train)  # the training loop's own step count (one process)
    n_evals = plan.evaluations if n_dev else 0
    train_examples = plan.total_steps * cfg.batch_size * cfg.grad_accum
    eval_examples = n_evals * n_dev + n_test + (n_dev + n_test if cfg.zero_shot else 0)
    factor = METHOD_COST.get(cfg.method, 1.0)
    return (
        train_tokens * train_examples * TRAIN_S_PER_TOKEN * factor,
        eval_tokens * eval_examples * EVAL_S_PER_TOKEN,
    )


def measured_speed_factor(
    done: list[tuple[Cell, float]], tokens_per_example: dict[str, int] | None = None
) -> float | None:
    """How much slower (>1) or faster this machine trained than the estimate: the measured `train_seconds` of
    finished cells over their estimated training seconds (None without any). Threads, load and the model all
    show up in it, so the estimate of the cells left can be scaled by it."""
    estimated = sum(estimate_parts(cell, tokens_per_example)[0] for cell, _ in done)
    measured = sum(seconds for _, seconds in done)
    return measured / estimated if done and estimated > 0 and measured > 0 else None


def format_seconds(seconds: float) -> str:
    minutes = seconds / 60
    return (
        f"{seconds:.0f} s"
        if minutes < 1
        else f"{minutes:.0f} min"
        if minutes < 90
        else f"{minutes / 60:.1f} h"
    )
